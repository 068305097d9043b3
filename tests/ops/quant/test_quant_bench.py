"""The ``quant`` benchmark suite end to end on the CPU with a tiny shape (a smoke test of the
plumbing: checks before timing, rows, baselines, skips with reasons)."""

from __future__ import annotations

import pytest

from millkernels import runtime
from millkernels.bench import ceilings
from millkernels.bench.context import BenchContext
from millkernels.bench.runner import run_suites


@pytest.fixture
def tiny_ceilings(monkeypatch):
    ceilings.clear_cache()
    monkeypatch.setattr(ceilings, "copy_nbytes", lambda device, quick: 64 << 10)
    monkeypatch.setattr(ceilings, "CPU_MATMUL_SHAPES_QUICK", ((64, 64, 64),))
    yield
    ceilings.clear_cache()


def _ctx(**options):
    return BenchContext(
        device="cpu", quick=True, rep_ms=1.0, warmup_ms=0.0, options=options, log=lambda m: None
    )


def test_quant_suite_rows_on_cpu(tiny_ceilings):
    report = run_suites(
        ["quant"],
        _ctx(**{
            "quant.shapes": (("tiny", "proj", 40, 128),),
            "quant.ms": (1,),
            "quant.schemes": ("w4a16", "fp8_rowwise"),
            "quant.backends": ("triton", "reference"),
        }),
    )  # fmt: skip
    assert report.exit_code() == 0, report.failures or report.errors
    rows = {(r.op, r.dtype, r.backend, r.shape["m"]): r for r in report.rows}
    backends = ["reference"] + (["triton"] if runtime.triton_interpret() else [])
    assert rows[("quant_matmul", "bf16", "torch", 1)].baseline is None
    for scheme in ("w4a16", "fp8_rowwise"):
        for b in backends:
            r = rows[("quant_matmul", scheme, b, 1)]
            assert r.baseline == "torch" and r.ratio_to_baseline > 0
            assert r.flops == 2 * 40 * 128 and r.bytes > 40 * 128 // 2
            assert r.ceiling == "copy"
    # no torch._scaled_mm on a CPU: skipped with the reason, the GEMM row still there
    assert any("torch._scaled_mm" in s for s in report.skipped)
    if runtime.triton_interpret():
        assert ("fp8_gemm", "fp8_rowwise", "triton", 1) in rows
        legacy = rows[("quant_matmul", "w4a16", "triton_legacy", 1)]  # a VARIANT_MS row
        assert legacy.baseline == "torch" and legacy.ratio_to_baseline > 0
    assert ("quant_matmul", "w4a16", "cuda_pipe", 1) not in rows  # cuda not asked for


@pytest.mark.skipif(not runtime.triton_interpret(), reason="the CPU runs Triton interpreted")
def test_quant_suite_fp8_variant_rows(tiny_ceilings):
    """fp8_block GEMM rows per Triton kernel at the chosen (shape, M): legacy (the baseline),
    current, and no-split where the current kernel splits K; TMA skipped off Hopper."""
    report = run_suites(
        ["quant"],
        _ctx(**{
            "quant.shapes": (("tiny", "proj", 40, 1024),),
            "quant.ms": (1,),
            "quant.schemes": ("fp8_block",),
            "quant.backends": ("triton",),
            "quant.fp8_variants": (("tiny", "proj", 1),),
        }),
    )  # fmt: skip
    assert report.exit_code() == 0, report.failures or report.errors
    rows = {r.backend: r for r in report.rows if r.op == "fp8_gemm"}
    assert set(rows) == {"triton_legacy", "triton", "triton_nosplit"}
    assert rows["triton_legacy"].baseline is None
    assert rows["triton"].baseline == "triton_legacy" and rows["triton"].extra["split_k"] == 2
    assert rows["triton_nosplit"].extra["split_k"] == 1
    assert any("triton_tma" in s for s in report.skipped)


def test_quant_suite_large_m_rows_count_flops(tiny_ceilings):
    report = run_suites(
        ["quant"],
        _ctx(**{
            "quant.shapes": (("tiny", "proj", 40, 128),),
            "quant.ms": (65,),
            "quant.schemes": ("w8a16",),
            "quant.backends": ("reference",),
        }),
    )  # fmt: skip
    assert report.exit_code() == 0, report.failures or report.errors
    (row,) = [r for r in report.rows if r.dtype == "w8a16"]
    assert row.ceiling == "matmul_fp32" and row.tflops > 0


def test_quant_suite_fails_a_wrong_kernel(tiny_ceilings, monkeypatch):
    from millkernels.ops.quant import custom_ops

    real = custom_ops.quant_matmul.impl

    def wrong(*args):
        return real(*args) * 1.1

    monkeypatch.setattr(custom_ops.quant_matmul, "impl", wrong)
    options = {
        "quant.shapes": (("tiny", "proj", 40, 128),),
        "quant.ms": (1,),
        "quant.schemes": ("w8a16",),
        "quant.backends": ("reference",),
    }
    ctx = BenchContext(
        device="cpu", quick=True, rep_ms=1.0, warmup_ms=0.0, options=options, log=lambda m: None
    )
    report = run_suites(["quant"], ctx)
    assert report.exit_code() == 1
    assert any("rel err" in f for f in report.failures)
    assert not any(r.dtype == "w8a16" for r in report.rows)
