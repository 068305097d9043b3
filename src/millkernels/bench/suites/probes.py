"""Suite ``probes``: memory bandwidth of ``mem_copy`` / ``mem_read`` / ``mem_write`` for each
backend of the probes family against torch (``copy_``, ``sum``, ``fill_``) measured in the
same run, and the throughput of the pattern test (write then check) for each pattern.

GB/s counts bytes read plus bytes written. Every case is checked for a right result before
it is timed; a wrong result is a failed check (exit 1) and the case is not timed.
Options: ``probes.nbytes`` (buffer size), ``probes.backends`` (a subset of backends).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from millkernels.bench.context import BenchContext
from millkernels.bench.registry import suite
from millkernels.bench.rows import Row

WRITE_VALUE = 0xA5C3_5A3C  # not zero: zeros hide unwritten words
POISON = 0x7E57_BAD0
PATTERN_SEED = 0x1234_5678


def buffer_bytes(gpu: bool, quick: bool) -> int:
    """1 GiB on a GPU (256 MiB quick); 4 MiB on a CPU (1 MiB quick). Also the
    pytest-benchmark suite's size."""
    if gpu:
        return (256 if quick else 1024) << 20
    return (1 if quick else 4) << 20


def default_nbytes(ctx: BenchContext) -> int:
    return buffer_bytes(ctx.gpu, ctx.quick)


def _signed(word: int) -> int:
    return word - 2**32 if word >= 2**31 else word


@dataclass(frozen=True)
class _Case:
    """One bandwidth op: bytes moved per call, the torch baseline, the op, its check."""

    op: str
    work: int
    baseline: Callable[[], Any]
    run: Callable[[str], Any]
    verify: Callable[[str], bool]


def _unsigned_sum(words: Any) -> int:
    """Sum of int32 words taken as unsigned, as a Python int (chunked to bound memory)."""
    import torch

    total, step = 0, 1 << 26
    for start in range(0, words.numel(), step):
        chunk = words[start : start + step].to(torch.int64) & 0xFFFFFFFF
        total += int(chunk.sum())
    return total


@suite("probes", order=10, description="memory probes: copy/read/write GB/s and pattern tests")
def probes(ctx: BenchContext) -> Iterator[Row]:
    import torch

    from millkernels.ops import probes as ops
    from millkernels.ops import tables
    from millkernels.ops.probes.capabilities import call_facts

    table = tables()["probes"]
    nbytes = int(ctx.option("probes.nbytes", default_nbytes(ctx))) // 16 * 16
    wanted = ctx.option("probes.backends", table.names())
    words = nbytes // 4
    src = torch.randint(-(2**31), 2**31 - 1, (words,), dtype=torch.int32, device=ctx.device)
    dst = torch.empty_like(src)
    shape = {"bytes": nbytes}

    def usable(op: str, backend: str) -> bool:
        reason = table.reason(backend, call_facts(op, src))
        if reason:
            ctx.skip(f"{op} {backend}", reason)
        return reason is None

    def verify_copy(backend: str) -> bool:
        dst.fill_(_signed(POISON))
        ops.mem_copy(dst, src, backend=backend)
        return ctx.check(bool(torch.equal(dst, src)), f"mem_copy {backend}: dst != src")

    expected_sum = _unsigned_sum(src) % 2**64

    def verify_read(backend: str) -> bool:
        got = int(ops.mem_read(src, backend=backend)) % 2**64
        return ctx.check(got == expected_sum, f"mem_read {backend}: {got} != {expected_sum}")

    def verify_write(backend: str) -> bool:
        dst.fill_(_signed(POISON))
        ops.mem_write(dst, WRITE_VALUE, backend=backend)
        ok = bool((dst == _signed(WRITE_VALUE)).all())
        return ctx.check(ok, f"mem_write {backend}: a word is not {WRITE_VALUE:#x}")

    cases = [
        _Case(
            "mem_copy",
            2 * nbytes,
            baseline=lambda: dst.copy_(src),
            run=lambda b: ops.mem_copy(dst, src, backend=b),
            verify=verify_copy,
        ),
        _Case(
            "mem_read",
            nbytes,
            baseline=lambda: src.sum(),
            run=lambda b: ops.mem_read(src, backend=b),
            verify=verify_read,
        ),
        _Case(
            "mem_write",
            nbytes,
            baseline=lambda: dst.fill_(_signed(WRITE_VALUE)),
            run=lambda b: ops.mem_write(dst, WRITE_VALUE, backend=b),
            verify=verify_write,
        ),
    ]
    for c in cases:
        base_t = ctx.measure(c.baseline)
        yield ctx.row(
            op=c.op, shape=shape, dtype="u32", backend="torch", timing=base_t, bytes=c.work
        )
        for backend in table.names():
            if backend not in wanted or not usable(c.op, backend):
                continue
            try:
                ok = c.verify(backend)
            except Exception as exc:
                ok = ctx.check(False, f"{c.op} {backend} raised {type(exc).__name__}: {exc}")
            if not ok:
                continue
            t = ctx.measure(functools.partial(c.run, backend))
            yield ctx.row(
                op=c.op,
                shape=shape,
                dtype="u32",
                backend=backend,
                timing=t,
                bytes=c.work,
                baseline="torch",
                baseline_timing=base_t,
            )
    yield from _pattern_rows(ctx, table, dst, nbytes, wanted)


def _pattern_rows(ctx: BenchContext, table: Any, buf: Any, nbytes: int, wanted) -> Iterator[Row]:
    """Pattern test (write + check: bytes written plus read) per pattern and backend, after
    checking that a clean pass reports nothing and one flipped bit is found."""
    from millkernels.ops import probes as ops
    from millkernels.ops.probes.capabilities import call_facts

    for backend in table.names():
        if backend not in wanted:
            continue
        reasons = [
            table.reason(backend, call_facts(op, buf)) for op in ("pattern_write", "pattern_check")
        ]
        reason = next((r for r in reasons if r), None)
        if reason:
            ctx.skip(f"pattern_test {backend}", reason)
            continue
        for pattern in ops.PATTERNS:
            try:
                ok = _verify_pattern(ctx, ops, buf, pattern, backend)
            except Exception as exc:
                ok = ctx.check(False, f"pattern_test {pattern} {backend} raised {exc!r}")
            if not ok:
                continue
            t = ctx.measure(
                functools.partial(
                    ops.pattern_test, buf, pattern, seed=PATTERN_SEED, backend=backend
                )
            )
            yield ctx.row(
                op="pattern_test",
                shape={"bytes": nbytes, "pattern": pattern},
                dtype="u32",
                backend=backend,
                timing=t,
                bytes=2 * nbytes,
            )


def _verify_pattern(ctx: BenchContext, ops: Any, buf: Any, pattern: str, backend: str) -> bool:
    what = f"pattern_test {pattern} {backend}"
    buf.fill_(_signed(POISON))
    clean = ops.pattern_test(buf, pattern, seed=PATTERN_SEED, backend=backend)
    if not ctx.check(
        clean.mismatches == 0, f"{what}: {clean.mismatches} mismatches on a clean pass"
    ):
        return False
    index = (buf.numel() * 2) // 3
    buf[index] ^= 1 << 7  # one flipped bit between the write and the check
    dirty = ops.pattern_check(buf, pattern, seed=PATTERN_SEED, backend=backend)
    found = dirty.mismatches == 1 and dirty.first_bad_index == index
    return ctx.check(found, f"{what}: a flipped bit at word {index} was not reported ({dirty})")
