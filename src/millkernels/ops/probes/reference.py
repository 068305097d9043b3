"""The reference backend of the memory probes: plain PyTorch, on any device.

Arguments arrive validated as flat int32 word views (see api.py).
"""

from __future__ import annotations

import torch

from millkernels.ops.probes.patterns import BadWord, as_int32, expected_words

# Chunk the pattern work so a large buffer does not need several int64 copies of itself.
_CHUNK_WORDS = 1 << 24


def copy(dst: torch.Tensor, src: torch.Tensor) -> None:
    dst.copy_(src)


def read(src: torch.Tensor) -> torch.Tensor:
    """Sum of the words taken as unsigned, mod 2**64, as a 0-d int64 tensor."""
    return (src.to(torch.int64) & 0xFFFFFFFF).sum()


def write(dst: torch.Tensor, value: int) -> None:
    dst.fill_(value - 2**32 if value >= 2**31 else value)


def pattern_write(buf: torch.Tensor, pattern: str, seed: int) -> None:
    for start in range(0, buf.numel(), _CHUNK_WORDS):
        n = min(_CHUNK_WORDS, buf.numel() - start)
        buf[start : start + n] = as_int32(expected_words(pattern, start, n, seed, buf.device))


def pattern_check(
    buf: torch.Tensor, pattern: str, seed: int, max_report: int
) -> tuple[int, int | None, list[BadWord]]:
    """(mismatch count, first bad index, up to ``max_report`` bad words sorted by index)."""
    mismatches, first = 0, None
    bad: list[BadWord] = []
    for start in range(0, buf.numel(), _CHUNK_WORDS):
        n = min(_CHUNK_WORDS, buf.numel() - start)
        want = expected_words(pattern, start, n, seed, buf.device)
        got = buf[start : start + n].to(torch.int64) & 0xFFFFFFFF
        wrong = torch.nonzero(want != got).flatten()
        if wrong.numel() == 0:
            continue
        mismatches += wrong.numel()
        if first is None:
            first = start + int(wrong[0])
        for j in wrong[: max(0, max_report - len(bad))].tolist():
            bad.append(BadWord(start + j, int(want[j]), int(got[j])))
    return mismatches, first, bad
