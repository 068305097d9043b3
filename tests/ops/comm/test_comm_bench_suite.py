"""The ``collectives`` suite of ``bench all``: a real 2-rank gloo launch on the CPU through the
runner, the case plan and target rows for machine shapes this machine does not have, and
launches that fail or hang becoming failed rows (and failed checks) within the timeout."""

from __future__ import annotations

import math
import sys
import textwrap
import time
from pathlib import Path

import pytest

from millkernels.bench import registry
from millkernels.bench.context import BenchContext
from millkernels.bench.runner import EXIT_FAILED, EXIT_OK, run_suites
from millkernels.bench.suites import collectives as bench_suite
from millkernels.bench.suites import comm as bench
from millkernels.bench.suites.collectives import Machine


def _ctx(**options) -> BenchContext:
    return BenchContext(device="cpu", quick=True, options=options, log=lambda m: None)


def _sizes(case: bench_suite.Case) -> list[int]:
    b, e, f = case.sizes
    return bench.size_list(bench.parse_size(b), bench.parse_size(e), f)


def test_registered_and_listed() -> None:
    found = registry.suites()
    assert "collectives" in found and "millkernels.bench.suites.comm" in registry.suite_modules()
    assert found["collectives"].module == "millkernels.bench.suites.collectives"
    assert not registry.broken()
    from typer.testing import CliRunner

    from millkernels.cli import app

    result = CliRunner().invoke(app, ["bench", "--list"])
    assert result.exit_code == 0 and "collectives" in result.stdout


def test_cpu_launch_end_to_end(tmp_path: Path) -> None:
    """`millkernels bench collectives --quick --device cpu --out F`: 2 gloo ranks under
    torchrun; rows per case and size with the benchmark's columns, ratios to gloo at the
    same size, target rows marked not applicable, exit 0."""
    from typer.testing import CliRunner

    from millkernels.bench.rows import read_jsonl
    from millkernels.cli import app

    out = tmp_path / "rows.jsonl"
    args = ["bench", "collectives", "--quick", "--device", "cpu", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == EXIT_OK, result.output
    assert "FAILED" not in result.stderr
    rows = read_jsonl(out)
    measured = [r for r in rows if r.op == "all_reduce"]
    by = {(r.backend, r.shape["bytes"]): r for r in measured}
    sizes = [1024, 65536]
    for backend in ("gloo", "gloo:one_shot", "gloo:two_shot"):
        assert [b for (k, b) in by if k == backend] == sizes
    assert [b for (k, b) in by if k.startswith("quant:")] == [65536, 65536]
    for r in measured:
        assert r.suite == "collectives" and r.dtype == "bf16" and r.shape["ranks"] == 2
        assert r.command == "millkernels bench collectives --quick --device cpu"
        assert math.isfinite(r.median_us) and r.median_us > 0 and r.n == 3
        x = r.extra
        assert x["wrong"] == 0 and x["inplace_wrong"] == 0 and x["world"] == 2
        # algbw = S / t (1e9 B/s); busbw = algbw x 2(n-1)/n = algbw at n = 2; gbps = algbw
        assert x["algbw"] == pytest.approx(r.shape["bytes"] / (r.median_us * 1e-6) / 1e9)
        assert x["busbw"] == pytest.approx(x["algbw"]) and r.gbps == pytest.approx(x["algbw"])
        assert x["inplace_time_us"] > 0 and "torchrun" in x["reproduce"]
        if r.backend == "gloo":
            assert r.baseline is None and r.ratio_to_baseline is None
        else:
            base = by[("gloo", r.shape["bytes"])]
            assert r.baseline == "gloo" and r.baseline_us == base.median_us
            assert r.ratio_to_baseline == pytest.approx(base.median_us / r.median_us)
    targets = [r for r in rows if r.op == "all_reduce_target"]
    assert [r.shape["target"] for r in targets] == ["one_shot_8us", "quant_int8_1.6x",
                                                     "quant_fp8_1.6x"]  # fmt: skip
    one = targets[0]
    assert one.extra["status"].startswith("not applicable on this machine: 0 GPUs")
    assert one.median_us == max(by[("gloo:one_shot", b)].median_us for b in sizes)
    for t in targets[1:]:
        assert t.extra["met"] is None and "across nodes" in t.extra["status"]
        assert t.extra["ratio"] == pytest.approx(t.ratio_to_baseline)


def test_a_failing_case_fails_and_stops_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    """A case the benchmark refuses (exit 2 on every rank) is a failed row and check; the
    ranks stop there, so the case after it is a failed row too; the one before keeps its
    rows."""
    real = bench_suite.plan

    def plan(ctx, m):
        base, one = real(ctx, m)[:2]
        bad = bench_suite.Case("bad", "gloo:bad", "no_such_algo", base.sizes)
        return [base, bad, one]

    monkeypatch.setattr(bench_suite, "plan", plan)
    ctx = _ctx()
    report = run_suites(["collectives"], ctx, explicit=False)
    assert report.exit_code() == EXIT_FAILED
    good = [r for r in report.rows if r.backend == "gloo"]
    assert len(good) == 2 and all(r.extra["wrong"] == 0 for r in good)
    failed = {r.backend: r for r in report.rows if r.extra.get("status") == "failed"}
    assert set(failed) == {"gloo:bad", "gloo:one_shot"}
    assert "exit code 2" in failed["gloo:bad"].extra["error"]
    assert "no_such_algo" in failed["gloo:bad"].extra["error"]
    assert "last case with results: baseline" in failed["gloo:one_shot"].extra["error"]
    for r in failed.values():
        assert math.isnan(r.median_us) and r.n == 0 and r.notes.startswith("FAILED")
    assert len(report.failures) == 2


def test_launch_that_exits_becomes_failed_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    script = "import sys; print('boom: no workers'); sys.exit(3)"
    monkeypatch.setattr(
        bench_suite, "launch_argv", lambda world, spec: [sys.executable, "-c", script, str(spec)]
    )
    report = run_suites(["collectives"], _ctx(), explicit=False)
    assert report.exit_code() == EXIT_FAILED
    cases = bench_suite.plan(_ctx(), bench_suite.machine(_ctx()))
    assert len(report.rows) == len(cases) == len(report.failures) == 5
    for r in report.rows:
        assert r.extra["status"] == "failed" and math.isnan(r.median_us)
        assert "torchrun exited with 3" in r.extra["error"] and "boom" in r.extra["error"]


#: A torchrun worker that ignores SIGTERM and sleeps; it writes its pid beside the spec (where
#: the suite looks) and into the folder ``pids`` (where the test looks).
_HANG = """
import os, pathlib, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
spec = pathlib.Path(sys.argv[-1])
for folder in (spec.parent, pathlib.Path({pids!r})):
    (folder / ("pid." + os.environ["RANK"])).write_text(str(os.getpid()))
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_hanging_launch_is_stopped_within_the_timeout(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Real torchrun, workers that ignore SIGTERM and sleep: the suite gives up at its
    timeout, stops torchrun and kills the workers by pid, and every case is a failed row."""
    hang = _HANG.format(pids=str(tmp_path))
    monkeypatch.setattr(
        bench_suite, "worker_target", lambda: ["--no-python", sys.executable, "-c", hang]
    )
    monkeypatch.setattr(bench_suite, "STOP_GRACE_S", 2.0)
    timeout = 12.0
    ctx = _ctx(**{"comm.timeout_s": timeout})
    t0 = time.monotonic()
    report = run_suites(["collectives"], ctx, explicit=False)
    took = time.monotonic() - t0
    assert took < timeout + bench_suite.STOP_GRACE_S + 30  # bounded: it did not hang
    assert report.exit_code() == EXIT_FAILED and len(report.rows) == 5
    for r in report.rows:
        assert r.extra["status"] == "failed"
        assert f"timed out after {timeout:.0f} s" in r.extra["error"]
    pids = [int(p.read_text()) for p in tmp_path.glob("pid.*")]
    assert len(pids) == 2, "the workers did not start within the timeout"
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in pids)


def test_sigterm_to_the_suite_stops_the_launch(tmp_path: Path) -> None:
    """`timeout` (as gpu_campaign.sh uses it) sends SIGTERM to `bench all`: the launch (in
    a session of its own) is stopped on the way out rather than left running."""
    import signal
    import subprocess

    hang = _HANG.format(pids=str(tmp_path))
    script = textwrap.dedent(
        f"""
        import sys
        from millkernels.bench.context import BenchContext
        from millkernels.bench.runner import run_suites
        from millkernels.bench.suites import collectives as bench_suite
        bench_suite.STOP_GRACE_S = 2.0
        bench_suite.worker_target = lambda: ["--no-python", sys.executable, "-c", {hang!r}]
        ctx = BenchContext(device="cpu", quick=True, options={{"comm.timeout_s": 300}})
        run_suites(["collectives"], ctx, explicit=False)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while len(list(tmp_path.glob("pid.*"))) < 2 and time.monotonic() < deadline:
            assert proc.poll() is None, "the suite ended before its workers started"
            time.sleep(0.2)
        pids = [int(p.read_text()) for p in tmp_path.glob("pid.*")]
        assert len(pids) == 2, "the workers did not start"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in pids)


# ------------------------------------------------------------ machines this one is not


@pytest.fixture
def native_ok(monkeypatch: pytest.MonkeyPatch) -> None:
    import millkernels._native as native

    monkeypatch.setattr(native, "cuda_unavailable_reason", lambda: None)


H100 = "NVIDIA H100 80GB HBM3"


@pytest.mark.parametrize("quick", [True, False])
def test_plan_shapes(native_ok, quick: bool) -> None:
    ctx = BenchContext(device="cpu", quick=quick, log=lambda m: None)
    eight = bench_suite.plan(ctx, Machine("cuda", "nccl", 8, 8, H100, (9, 0)))
    assert [c.name for c in eight] == [
        "baseline", "one_shot", "two_shot", "int8", "fp8", "baseline_graph", "one_shot_graph",
    ]  # fmt: skip
    assert eight[0].backend == "nccl" and eight[1].backend == "ipc:one_shot"
    named = {c.name: c for c in eight}
    for c in eight:  # every ratio has its baseline at the same sizes
        if c.baseline:
            assert set(_sizes(c)) <= set(_sizes(named[c.baseline])), c.name
    assert 64 * 1024 in _sizes(named["one_shot_graph"])
    from millkernels.bench.suites.comm_cli import build_parser

    for c in eight:  # the benchmark's own parser takes every case's flags
        a = build_parser().parse_args([*c.argv(10, 2), "--device", "cuda", "--backend", "nccl"])
        assert (a.algo, a.quant, a.graph, a.iters) == (c.algo, c.quant or "none", c.graph, 10)
    assert max(_sizes(named["int8"])) >= bench_suite.QUANT_TARGET_BYTES
    assert ctx.skipped == []

    one = bench_suite.plan(ctx, Machine("cuda", "gloo", 2, 1, H100, (9, 0)))
    assert [c.name for c in one] == ["baseline", "one_shot", "two_shot", "one_shot_graph"]
    assert one[0].backend == "gloo" and one[-1].baseline is None
    assert any("quant:int8" in s and "Duplicate GPU detected" in s for s in ctx.skipped)

    a100 = bench_suite.plan(ctx, Machine("cuda", "nccl", 4, 4, "NVIDIA A100", (8, 0)))
    assert "fp8" not in [c.name for c in a100] and "int8" in [c.name for c in a100]
    many = bench_suite.plan(ctx, Machine("cuda", "nccl", 16, 16, H100, (9, 0)))
    assert [c.name for c in many] == ["baseline", "int8", "fp8", "baseline_graph"]

    cpu = bench_suite.plan(ctx, Machine("cpu", "gloo", 2, 0))
    named = {c.name: c for c in cpu}
    assert list(named) == ["baseline", "one_shot", "two_shot", "int8", "fp8"]
    for c in cpu[1:]:
        assert set(_sizes(c)) <= set(_sizes(named["baseline"]))


def test_plan_without_a_known_capability_skips_fp8_with_the_reason(native_ok) -> None:
    ctx = BenchContext(device="cpu", quick=True, log=lambda m: None)
    cases = bench_suite.plan(ctx, Machine("cuda", "nccl", 2, 2, H100))
    assert "fp8" not in [c.name for c in cases] and "int8" in [c.name for c in cases]
    assert any("quant:fp8" in s and "unknown compute capability" in s for s in ctx.skipped)


def _measured(times_us: dict[int, float]) -> dict[int, dict]:
    return {b: {"bytes": b, "time_us": t} for b, t in times_us.items()}


@pytest.mark.parametrize(
    ("m", "times", "status"),
    [
        (Machine("cuda", "nccl", 8, 8, H100, (9, 0)), {1024: 5.0, 65536: 7.9, 262144: 20.0},
         "pass"),
        (Machine("cuda", "nccl", 8, 8, H100, (9, 0)), {1024: 5.0, 65536: 8.5}, "fail"),
        (Machine("cuda", "nccl", 4, 4, H100, (9, 0)), {65536: 50.0},
         "not applicable on this machine: 4 GPUs"),
        (Machine("cuda", "gloo", 2, 1, H100, (9, 0)), {65536: 900.0},
         "not applicable on this machine: 1 GPU (2 ranks share it)"),
        (Machine("cuda", "nccl", 8, 8, "NVIDIA A100", (8, 0)), {65536: 6.0},
         "not applicable on this machine: 8 GPUs"),
    ],
)  # fmt: skip
def test_one_shot_target(native_ok, m: Machine, times: dict, status: str) -> None:
    ctx = _ctx()
    cases = {c.name: c for c in bench_suite.plan(ctx, m)}
    rows = list(
        bench_suite._one_shot_target(ctx, m, cases, {"one_shot_graph": _measured(times)}, 10, 2)
    )
    assert len(rows) == 1
    r = rows[0]
    worst = max(t for b, t in times.items() if b <= 65536)
    assert r.median_us == worst and r.backend == "ipc:one_shot+graph"
    assert r.extra["status"].startswith(status), r.extra["status"]
    assert r.extra["met"] == {"pass": True, "fail": False}.get(status)
    assert len(ctx.failures) == (1 if status == "fail" else 0)


def test_quant_target_uses_sizes_from_8_mb(native_ok) -> None:
    m = Machine("cuda", "nccl", 8, 8, H100, (9, 0))
    ctx = _ctx()
    cases = {c.name: c for c in bench_suite.plan(ctx, m)}
    base = _measured({2**20: 100.0, 8 * 2**20: 400.0, 32 * 2**20: 1200.0})
    int8 = _measured({2**20: 200.0, 8 * 2**20: 200.0, 32 * 2**20: 1000.0})
    rows = list(bench_suite._quant_targets(ctx, m, cases, {"baseline": base, "int8": int8}, 10, 2))
    assert len(rows) == 1  # no fp8 rows measured: no fp8 target row
    r = rows[0]
    assert r.shape["bytes"] == 32 * 2**20  # the worst ratio at >= 8 MB (1.2x), not 1 MB's 0.5x
    assert r.extra["ratio"] == pytest.approx(1.2) and r.extra["met"] is None
    assert "not applicable on this machine: one node (8 ranks on 8 GPUs)" in r.extra["status"]
    assert ctx.failures == []


def test_worker_rejects_bad_usage(capsys: pytest.CaptureFixture) -> None:
    assert bench_suite._worker_main([]) == 2
    assert "SPEC.json" in capsys.readouterr().err
