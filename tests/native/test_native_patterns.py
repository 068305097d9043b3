"""The C++ pattern generator (the one the kernels use) equals an independent Python one."""

from __future__ import annotations

import pytest

from millkernels import _native
from millkernels.ops.probes import patterns

pytestmark = pytest.mark.native

M32 = 0xFFFFFFFF


def mix32(x: int) -> int:
    x ^= x >> 16
    x = (x * 0x7FEB352D) & M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & M32
    return x ^ (x >> 16)


def expected(pattern_id: int, i: int, seed: int) -> int:
    """The patterns as CONTEXT.md defines them, in plain Python integers."""
    lo, hi = i & M32, i >> 32
    if pattern_id == 0:
        return 1 << ((i + seed) % 32)
    if pattern_id == 1:
        return lo ^ hi ^ seed
    return mix32(lo ^ mix32(((hi ^ seed) + 0x9E3779B9) & M32))


STARTS = [0, 29, 2**32 - 5, 2**32, 2**33 + 3, 2**40 - 2, 2**62]
SEEDS = [0, 1, 31, 0x9E3779B9, 2**32 - 1]


@pytest.mark.parametrize("pattern_id", [0, 1, 2])
@pytest.mark.parametrize("seed", SEEDS)
def test_pattern_values_match_python(pattern_id: int, seed: int) -> None:
    c = _native.require_native()
    for start in STARTS:
        got = c.pattern_values(pattern_id, start, 9, seed)
        want = [expected(pattern_id, start + k, seed) for k in range(9)]
        assert got == want, (pattern_id, seed, start)


@pytest.mark.parametrize("name", sorted(patterns.PATTERNS))
def test_pattern_values_match_package_reference(name: str) -> None:
    c, pid = _native.require_native(), patterns.PATTERNS[name]
    for start in (0, 2**32 - 7):
        for seed in (0, 12345):
            ref = patterns.expected_words(name, start, 64, seed).tolist()
            assert c.pattern_values(pid, start, 64, seed) == ref, (name, start, seed)


def test_patterns_are_what_they_claim() -> None:
    c = _native.require_native()
    ones = c.pattern_values(0, 0, 64, 3)
    assert all(bin(w).count("1") == 1 for w in ones) and ones[0] == 1 << 3 and ones[29] == 1
    assert c.pattern_values(1, 2**32 + 5, 1, 0) == [5 ^ 1]
    rand = c.pattern_values(2, 0, 4096, 0)
    assert len(set(rand)) == len(rand)  # no repeats in a small window
    assert c.pattern_values(2, 0, 8, 1) != c.pattern_values(2, 0, 8, 2)


def test_pattern_values_validates() -> None:
    c = _native.require_native()
    with pytest.raises(ValueError, match="pattern_values: pattern_id: expected 0 <= pattern_id"):
        c.pattern_values(3, 0, 1, 0)
    with pytest.raises(ValueError, match="pattern_values: count"):
        c.pattern_values(0, 0, -1, 0)
    with pytest.raises(ValueError, match="pattern_values: start"):
        c.pattern_values(0, -5, 1, 0)
    with pytest.raises(ValueError, match="pattern_values: seed"):
        c.pattern_values(0, 0, 1, 2**32)
    assert c.pattern_values(2, 7, 0, 0) == []
