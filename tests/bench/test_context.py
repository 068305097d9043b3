"""Row building: rates, % of ceiling, ratio to baseline and the environment fields."""

from __future__ import annotations

import pytest

from millkernels.bench import ceilings
from millkernels.bench.ceilings import Ceiling
from millkernels.bench.context import BenchContext
from millkernels.bench.timing import Timing

FAKE = {
    "copy": Ceiling("copy", 3000.0, "GB/s", "copy_", {"bytes": 1}, "u32", Timing(1, 1, 1, 1), 2),
    "matmul_bf16": Ceiling(
        "matmul_bf16", 800.0, "TFLOP/s", "matmul", {}, "bf16", Timing(1, 1, 1, 1), 2
    ),
}


@pytest.fixture
def ctx(monkeypatch: pytest.MonkeyPatch) -> BenchContext:
    c = BenchContext(device="cpu", command="millkernels bench x", suite="x", log=lambda m: None)
    monkeypatch.setattr(BenchContext, "ceilings", lambda self: FAKE)
    return c


def test_bandwidth_row(ctx: BenchContext) -> None:
    # 2.7e9 bytes in 1000 us = 2700 GB/s = 90% of a 3000 GB/s copy ceiling;
    # the baseline took 1100 us, so the ratio is 1.1
    row = ctx.row(
        op="mem_copy", shape={"bytes": 1}, dtype="u32", backend="cuda",
        timing=Timing(1000.0, 990.0, 1010.0, 30, "fake"), bytes=2_700_000_000,
        baseline="torch", baseline_timing=Timing(1100.0, 1000.0, 1200.0, 30, "fake"),
    )  # fmt: skip
    assert row.gbps == pytest.approx(2700.0)
    assert row.tflops is None
    assert (row.ceiling, row.ceiling_value) == ("copy", 3000.0)
    assert row.pct_of_ceiling == pytest.approx(90.0)
    assert row.baseline == "torch"
    assert row.baseline_us == 1100.0
    assert row.ratio_to_baseline == pytest.approx(1.1)
    assert (row.n, row.timer, row.suite, row.command) == (30, "fake", "x", "millkernels bench x")


def test_flop_row_picks_the_dtype_matmul_ceiling(ctx: BenchContext) -> None:
    # 4e11 FLOP in 1000 us = 400 TFLOP/s = 50% of 800
    row = ctx.row(
        op="mm", shape="MxNxK", dtype="bf16", backend="triton",
        timing=Timing(1000.0, 1000.0, 1000.0, 5), flops=4e11, bytes=10**9,
    )  # fmt: skip
    assert row.tflops == pytest.approx(400.0)
    assert row.gbps == pytest.approx(1000.0)
    assert row.ceiling == "matmul_bf16"
    assert row.pct_of_ceiling == pytest.approx(50.0)
    assert row.ratio_to_baseline is None


def test_explicit_or_missing_ceiling(ctx: BenchContext) -> None:
    t = Timing(1000.0, 1000.0, 1000.0, 5)
    row = ctx.row(op="mm", shape="s", dtype="bf16", backend="b", timing=t, flops=4e11,
                  bytes=3 * 10**9, ceiling="copy")  # fmt: skip
    assert (row.ceiling, row.pct_of_ceiling) == ("copy", pytest.approx(100.0))
    row = ctx.row(op="mm", shape="s", dtype="fp4", backend="b", timing=t, flops=4e11)
    assert row.ceiling is None and row.pct_of_ceiling is None
    row = ctx.row(op="mm", shape="s", dtype="bf16", backend="b", timing=t, flops=4e11,
                  ceiling=False)  # fmt: skip
    assert row.ceiling is None


def test_environment_fields_on_cpu(ctx: BenchContext) -> None:
    row = ctx.row(op="o", shape="s", dtype="u32", backend="b", timing=Timing(1, 1, 1, 1))
    assert row.device == "cpu"
    assert row.clocks is None and row.power_limit_w is None and row.driver is None
    assert {"torch", "triton", "cuda", "millkernels"} <= set(row.versions)
    assert row.git_sha
    assert row.timestamp.endswith("+00:00")
    assert row.notes and "CPU" in row.notes


def test_check_and_skip_record(ctx: BenchContext) -> None:
    assert ctx.check(True, "fine")
    assert not ctx.check(False, "dst != src")
    ctx.skip("mem_copy cuda", "no GPU")
    assert ctx.failures == ["x: check failed: dst != src"]
    assert ctx.skipped == ["x: skipped mem_copy cuda: no GPU"]


def test_cpu_ceilings_are_measured_once(tiny) -> None:
    ctx = BenchContext(device="cpu", quick=True, log=lambda m: None)
    first = ctx.ceilings()
    assert set(first) == {"copy", "matmul_fp32"}
    assert first["copy"].unit == "GB/s" and first["copy"].value > 0
    assert first["matmul_fp32"].unit == "TFLOP/s" and first["matmul_fp32"].value > 0
    assert ctx.ceilings() is first
    assert ceilings.measure_ceilings("cpu", ctx.measure, quick=True) is first


def test_autotune_config() -> None:
    import triton

    from millkernels.bench import autotune_config

    class Tuned:
        best_config = triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=3)

    cfg = autotune_config(Tuned())
    assert cfg is not None
    assert cfg["BLOCK_M"] == 128 and cfg["BLOCK_N"] == 64
    assert cfg["num_warps"] == 8 and cfg["num_stages"] == 3
    assert autotune_config(object()) is None
