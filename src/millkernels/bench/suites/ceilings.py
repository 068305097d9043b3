"""Suite ``ceilings``: the device's measured ceilings as rows (copy bandwidth, matmul peaks)."""

from __future__ import annotations

from collections.abc import Iterator

from millkernels.bench.context import BenchContext
from millkernels.bench.registry import suite
from millkernels.bench.rows import Row


@suite("ceilings", order=0, description="device copy bandwidth and matmul peaks (torch/cuBLAS)")
def ceilings(ctx: BenchContext) -> Iterator[Row]:
    """One row per ceiling; other suites' rows state their percentage of these."""
    for c in ctx.ceilings().values():
        is_rate = c.unit == "TFLOP/s"
        yield ctx.row(
            op=f"ceiling.{c.name}",
            shape=c.shape,
            dtype=c.dtype,
            backend="torch",
            timing=c.timing,
            flops=c.work if is_rate else None,
            bytes=None if is_rate else int(c.work),
            ceiling=c.name,
            notes=c.op,
            extra={"candidates": c.candidates} if c.candidates else None,
        )
