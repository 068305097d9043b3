"""The card's ceilings, measured once per run: what "% of ceiling" in a row is relative to.

GPU: ``copy`` (a large device-to-device ``copy_``, bytes read plus written), ``matmul_bf16``
(``torch.matmul``, i.e. cuBLAS, best of a few large shapes) and ``matmul_fp8``
(``torch._scaled_mm`` with per-tensor scales, where compute capability >= 8.9).
CPU: ``copy`` and ``matmul_fp32``, measured the same way on small sizes.
Inputs are random, never zeros (zeros can run faster than real data).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from millkernels.bench import counts
from millkernels.bench.timing import Timing

MeasureFn = Callable[[Callable[[], Any]], Timing]


@dataclass(frozen=True)
class Ceiling:
    """One measured ceiling: its value, unit, and how it was obtained."""

    name: str
    value: float
    unit: str  # "GB/s" or "TFLOP/s"
    op: str
    shape: dict[str, Any]
    dtype: str
    timing: Timing
    work: float  # bytes or FLOPs per call
    candidates: list[dict[str, Any]] = field(default_factory=list)


#: (M, N, K) tried for the matmul ceilings; the best rate wins.
MatmulShapes = tuple[tuple[int, int, int], ...]
GPU_MATMUL_SHAPES: MatmulShapes = (
    (8192, 8192, 8192),
    (8192, 8192, 16384),
    (16384, 8192, 8192),
)
GPU_MATMUL_SHAPES_QUICK: MatmulShapes = ((8192, 8192, 8192),)
CPU_MATMUL_SHAPES: MatmulShapes = ((512, 512, 512), (1024, 256, 512))
CPU_MATMUL_SHAPES_QUICK: MatmulShapes = ((256, 256, 256),)

_CACHE: dict[tuple[str, bool], dict[str, Ceiling]] = {}


def copy_nbytes(device: str, quick: bool) -> int:
    """Buffer size for the copy ceiling: 1 GiB on a GPU (256 MiB quick), 64/8 MiB on a CPU."""
    if device == "cpu":
        return (8 if quick else 64) << 20
    return (256 if quick else 1024) << 20


def measure_ceilings(device: str, measure: MeasureFn, *, quick: bool = False) -> dict[str, Ceiling]:
    """Measure every ceiling for ``device``; cached per (device, quick) for the process.

    Ceilings that cannot be measured here (fp8 without hardware support) are left out.
    """
    key = (device, quick)
    if key not in _CACHE:
        found = [_copy(device, measure, quick)]
        if device == "cpu":
            shapes = CPU_MATMUL_SHAPES_QUICK if quick else CPU_MATMUL_SHAPES
            found.append(_matmul(device, measure, shapes, "fp32"))
        else:
            shapes = GPU_MATMUL_SHAPES_QUICK if quick else GPU_MATMUL_SHAPES
            found.append(_matmul(device, measure, shapes, "bf16"))
            if fp8_reason() is None:
                found.append(_matmul(device, measure, shapes, "fp8"))
        _CACHE[key] = {c.name: c for c in found}
    return _CACHE[key]


def clear_cache() -> None:
    """Forget measured ceilings (tests; a new run on the same process)."""
    _CACHE.clear()


def fp8_reason() -> str | None:
    """Why the fp8 ceiling cannot be measured on the current GPU (None: it can)."""
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU"
    if torch.cuda.get_device_capability() < (8, 9):
        return "fp8 matrix units need compute capability >= 8.9"
    if not hasattr(torch, "_scaled_mm") or not hasattr(torch, "float8_e4m3fn"):
        return "this torch has no torch._scaled_mm / float8_e4m3fn"
    return None


def _copy(device: str, measure: MeasureFn, quick: bool) -> Ceiling:
    import torch

    nbytes = copy_nbytes(device, quick)
    src = torch.randint(-(2**31), 2**31 - 1, (nbytes // 4,), dtype=torch.int32, device=device)
    dst = torch.empty_like(src)
    timing = measure(lambda: dst.copy_(src))
    work = counts.copy_bytes(nbytes)
    return Ceiling(
        "copy", counts.gbps(work, timing.median_us), "GB/s", "torch.Tensor.copy_",
        {"bytes": nbytes}, "u32", timing, work,
    )  # fmt: skip


def _matmul(device: str, measure: MeasureFn, shapes: MatmulShapes, dtype: str) -> Ceiling:
    """Best TFLOP/s over ``shapes`` for ``dtype`` ("bf16", "fp8" or "fp32")."""
    best: Ceiling | None = None
    tried = []
    for m, n, k in shapes:
        fn, op = _matmul_fn(device, dtype, m, n, k)
        timing = measure(fn)
        flops = counts.matmul_flops(m, n, k)
        rate = counts.tflops(flops, timing.median_us)
        shape = {"M": m, "N": n, "K": k}
        tried.append({**shape, "tflops": rate, "median_us": timing.median_us})
        if best is None or rate > best.value:
            best = Ceiling(f"matmul_{dtype}", rate, "TFLOP/s", op, shape, dtype, timing, flops)
        del fn
    assert best is not None
    return Ceiling(**{**best.__dict__, "candidates": tried})


def _operands(device: str, dtype: str, m: int, n: int, k: int):
    """Random A (M x K, row-major) and B (K x N; column-major for fp8, as _scaled_mm wants)."""
    import torch

    if dtype == "fp8":
        a = torch.randn(m, k, device=device).to(torch.float8_e4m3fn)
        b = torch.randn(n, k, device=device).to(torch.float8_e4m3fn).t()
        return a, b
    tdtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    return (
        torch.randn(m, k, device=device, dtype=tdtype),
        torch.randn(k, n, device=device, dtype=tdtype),
    )


def _matmul_fn(device: str, dtype: str, m: int, n: int, k: int):
    """The timed product for one shape, and the name of what it calls."""
    import torch

    a, b = _operands(device, dtype, m, n, k)
    if dtype == "fp8":
        one = torch.ones((), device=device, dtype=torch.float32)

        def fp8() -> Any:
            return torch._scaled_mm(a, b, one, one, out_dtype=torch.bfloat16, use_fast_accum=True)

        return fp8, "torch._scaled_mm(use_fast_accum=True)"
    out = torch.empty(m, n, device=device, dtype=a.dtype)
    return (lambda: torch.matmul(a, b, out=out)), "torch.matmul"
