"""The harness on a real GPU: do_bench timing, NVML facts, ceilings, and the probes suite."""

from __future__ import annotations

import pytest

from millkernels.bench import ceilings, env
from millkernels.bench.context import BenchContext
from millkernels.bench.runner import run_suites

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def gpu_report():
    ceilings.clear_cache()
    ctx = BenchContext(device="cuda", quick=True)
    return ctx, run_suites(["ceilings", "probes"], ctx)


def test_gpu_ceilings(gpu_report) -> None:
    import torch

    ctx, _ = gpu_report
    found = ctx.ceilings()
    assert found["copy"].unit == "GB/s" and found["copy"].value > 50
    assert found["matmul_bf16"].unit == "TFLOP/s" and found["matmul_bf16"].value > 1
    has_fp8 = torch.cuda.get_device_capability() >= (8, 9)
    assert ("matmul_fp8" in found) == has_fp8
    assert (ceilings.fp8_reason() is None) == has_fp8


def test_gpu_probes_rows(gpu_report) -> None:
    _, report = gpu_report
    assert report.exit_code() == 0, report.failures or report.errors
    rows = [r for r in report.rows if r.suite == "probes"]
    backends = {r.backend for r in rows if r.op == "mem_copy"}
    assert {"torch", "triton", "reference"} <= backends
    for r in rows:
        assert r.timer == "do_bench"
        assert r.device != "cpu"
        assert r.gbps and r.gbps > 0 and r.pct_of_ceiling and r.ceiling == "copy"
        assert r.versions["cuda"]


def test_nvml_facts() -> None:
    pytest.importorskip("pynvml")
    facts = env.environment("cuda")
    assert facts.driver
    assert facts.power_limit_w and facts.power_limit_w > 0
    clocks = env.clocks("cuda")
    assert clocks and clocks["sm_mhz"] > 0 and clocks["mem_mhz"] > 0


@pytest.mark.native
def test_cuda_copy_keeps_up_with_torch(gpu_report) -> None:
    """Acceptance: the CUDA copy is within 10% of torch's device copy in the same run."""
    _, report = gpu_report
    (row,) = [r for r in report.rows if r.op == "mem_copy" and r.backend == "cuda"]
    assert row.ratio_to_baseline >= 0.9, row
