"""Memory test patterns: their definitions (in torch) and the report of a check.

Word ``i`` of a buffer (its 32-bit words, ``lo = i mod 2**32``, ``hi = i >> 32``, all
arithmetic mod 2**32, ``0 <= seed < 2**32``) holds:

- ``walking_ones``: ``1 << ((i + seed) mod 32)``: every bit line toggles in turn;
- ``address``: ``lo ^ hi ^ seed``: each word holds its own address, so a write that lands at
  the wrong address (a stuck or shorted address line) is caught;
- ``random``: ``mix32(lo ^ mix32((hi ^ seed) + 0x9E3779B9))``: data-dependent faults.

The CUDA kernels (csrc/probes/pattern.cu) implement the same formulas; tests compare them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

PATTERNS: dict[str, int] = {"walking_ones": 0, "address": 1, "random": 2}

_MASK = 0xFFFFFFFF


@dataclass(frozen=True)
class BadWord:
    """One word that read back wrong."""

    index: int
    expected: int
    actual: int


@dataclass(frozen=True)
class PatternReport:
    """The result of checking a buffer against a pattern."""

    pattern: str
    seed: int
    words: int
    mismatches: int
    first_bad_index: int | None
    bad: list[BadWord] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.mismatches == 0


def pattern_id(pattern: str) -> int:
    """The numeric id of ``pattern``; ValueError naming the choices otherwise."""
    if pattern not in PATTERNS:
        raise ValueError(f"pattern: expected one of {sorted(PATTERNS)}, got {pattern!r}")
    return PATTERNS[pattern]


def check_seed(seed: int) -> int:
    """Validate a pattern seed (a 32-bit unsigned integer)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
    if not 0 <= seed <= _MASK:
        raise ValueError(f"seed: expected 0 <= seed < 2**32, got {seed}")
    return seed


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``x * c mod 2**32`` for int64 tensors holding values below 2**32, without overflow."""
    lo = x * (c & 0xFFFF)
    hi = ((x * (c >> 16)) & 0xFFFF) << 16
    return (lo + hi) & _MASK


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash with good avalanche (xorshift-multiply), on int64 tensors."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def expected_words(pattern: str, start: int, count: int, seed: int, device="cpu") -> torch.Tensor:
    """Words ``start .. start+count-1`` of ``pattern`` as int64 values in [0, 2**32)."""
    pid = pattern_id(pattern)
    check_seed(seed)
    i = torch.arange(start, start + count, dtype=torch.int64, device=device)
    lo, hi = i & _MASK, i >> 32
    if pid == 0:
        return torch.ones_like(i) << ((i + seed) % 32)
    if pid == 1:
        return lo ^ hi ^ seed
    return mix32(lo ^ mix32(((hi ^ seed) + 0x9E3779B9) & _MASK))


def as_int32(words: torch.Tensor) -> torch.Tensor:
    """int64 values in [0, 2**32) reinterpreted as int32 bit patterns."""
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
