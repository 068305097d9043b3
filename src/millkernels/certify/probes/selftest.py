"""Probes that misbehave on purpose: the runner's crash, hang and error handling is tested
through them (the simulated node substitutes them for real probes)."""

from __future__ import annotations

import os
import time

from millkernels.certify.probes.registry import ProbeContext


def ok(ctx: ProbeContext) -> None:
    ctx.measure("selftest_value", float(ctx.params.get("value", 1.0)), "unit")


def crash(ctx: ProbeContext) -> None:
    os.abort()  # SIGABRT: what a segfaulting CUDA library looks like from outside


def hang(ctx: ProbeContext) -> None:
    while True:
        time.sleep(1)


def fail(ctx: ProbeContext) -> None:
    raise RuntimeError(ctx.params.get("message", "CUDA error: an illegal memory access"))
