"""The probes suite end to end on the CPU (tiny buffers), and its checks."""

from __future__ import annotations

import pytest

from millkernels import runtime
from millkernels.bench.context import BenchContext
from millkernels.bench.runner import run_suites
from millkernels.ops import probes as ops


def _run(**options):
    ctx = BenchContext(device="cpu", quick=True, options=options, log=lambda m: None)
    return run_suites(["probes"], ctx)


def test_probes_rows_on_cpu(tiny) -> None:
    report = _run()
    assert report.exit_code() == 0, report.failures or report.errors
    by = {(r.op, r.backend, r.shape.get("pattern")): r for r in report.rows}
    expected_backends = ["torch", "reference"] + (["triton"] if runtime.triton_interpret() else [])
    for op in ("mem_copy", "mem_read", "mem_write"):
        for backend in expected_backends:
            assert (op, backend, None) in by, (op, backend)
    for pattern in ops.PATTERNS:
        assert ("pattern_test", "reference", pattern) in by
    # cuda needs a GPU; triton has no pattern kernel: both skipped with a reason
    assert any("mem_copy cuda" in s for s in report.skipped)
    assert any("pattern_test triton" in s for s in report.skipped)

    nbytes = 64 << 10
    copy = by[("mem_copy", "reference", None)]
    assert copy.shape == {"bytes": nbytes}
    assert copy.bytes == 2 * nbytes  # read + written
    assert by[("mem_read", "reference", None)].bytes == nbytes
    assert by[("pattern_test", "reference", "random")].bytes == 2 * nbytes
    for r in report.rows:
        assert r.device == "cpu" and r.suite == "probes" and r.dtype == "u32"
        assert r.command == "millkernels bench probes"
        assert 0 < r.p20_us <= r.median_us <= r.p80_us and r.n >= 1
        assert r.gbps and r.gbps > 0
        assert r.ceiling == "copy" and r.pct_of_ceiling and r.pct_of_ceiling > 0
        assert r.versions["torch"] and r.git_sha and r.timestamp
        if r.backend == "torch" or r.op == "pattern_test":
            assert r.baseline is None and r.ratio_to_baseline is None
        else:
            base = by[(r.op, "torch", None)]
            assert r.baseline == "torch"
            assert r.ratio_to_baseline == pytest.approx(base.median_us / r.median_us)


def test_backend_subset_option(tiny) -> None:
    report = _run(**{"probes.backends": ("reference",), "probes.nbytes": 4096})
    assert {r.backend for r in report.rows} == {"torch", "reference"}
    assert all(r.shape["bytes"] == 4096 for r in report.rows)


def test_wrong_copy_is_a_failed_check_and_not_timed(tiny, monkeypatch) -> None:
    real = ops.mem_copy

    def lazy_copy(dst, src, *, backend="auto"):
        real(dst, src, backend=backend)
        if backend == "reference":
            dst[-1] += 1  # one wrong word

    monkeypatch.setattr(ops, "mem_copy", lazy_copy)
    report = _run(**{"probes.backends": ("reference",)})
    assert report.exit_code() == 1
    assert any("mem_copy reference" in f for f in report.failures)
    assert ("mem_copy", "reference") not in {(r.op, r.backend) for r in report.rows}
    assert ("mem_read", "reference") in {(r.op, r.backend) for r in report.rows}


def test_pattern_check_that_misses_a_flip_fails(tiny, monkeypatch) -> None:
    real = ops.pattern_check

    def blind(buf, pattern, **kw):
        report = real(buf, pattern, **kw)
        return type(report)(report.pattern, report.seed, report.words, 0, None, [])

    monkeypatch.setattr(ops, "pattern_check", blind)
    report = _run(**{"probes.backends": ("reference",)})
    assert report.exit_code() == 1
    assert any("flipped bit" in f for f in report.failures)
    assert "pattern_test" not in {r.op for r in report.rows}
