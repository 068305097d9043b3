"""The regression gate: noise estimates, the comparison rule, baselines and the reports.

The acceptance tests: a synthetic 10% regression against a baseline fails the comparison, and
a 1% change within the noise passes (and the same 1% change on a noiseless benchmark with a
0.5% threshold fails, so the noise is what lets it pass).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from millkernels.bench import compare as cmp
from millkernels.bench import report
from millkernels.bench.baseline import Baseline, load_baseline, sku_slug
from millkernels.bench.noise import Measurement, aggregate
from millkernels.bench.rows import Row, write_jsonl


def _row(median: float, *, op: str = "mem_copy", backend: str = "triton", spread: float = 0.01,
         device: str = "cpu", shape: str = "bytes=1048576") -> Row:  # fmt: skip
    return Row(
        op=op, shape=shape, dtype="u32", backend=backend, median_us=median,
        p20_us=median * (1 - spread), p80_us=median * (1 + spread), n=50, suite="probes",
        device=device, git_sha="abc1234def", timestamp="2026-11-25T10:00:00+00:00",
    )  # fmt: skip


def _runs(center: float, n: int, jitter: float, **kw) -> list[Row]:
    """``n`` runs of one benchmark around ``center`` with uniform relative jitter."""
    noise = (torch.rand(n, dtype=torch.float64) * 2 - 1) * jitter
    return [_row(center * (1 + float(e)), **kw) for e in noise]


def _baseline(rows: list[Row]) -> Baseline:
    return Baseline.from_rows(rows, note="synthetic")


def _steady(**kw) -> list[Row]:
    """A second benchmark that never moves (5 runs at 50 us)."""
    return [_row(50.0, op="mem_read", **kw) for _ in range(5)]


# ------------------------------------------------------------------ acceptance criteria


def test_synthetic_10pct_regression_fails() -> None:
    base = _baseline(_runs(100.0, 5, 0.01) + _steady())
    new = _runs(110.0, 3, 0.01) + [_row(50.0, op="mem_read")] * 3
    result = cmp.compare(base, new, max_regression=0.05)
    (moved,) = result.moved
    assert moved.status == cmp.REGRESSION and moved.key[1] == "mem_copy"
    assert 1.07 < moved.ratio < 1.13
    assert moved.noise < 0.07  # about 1% jitter on each side
    assert result.failed and result.exit_code() == 1
    assert [c.status for c in result.changes if c.key[1] == "mem_read"] == [cmp.UNCHANGED]


def test_synthetic_1pct_change_within_noise_passes() -> None:
    base = _baseline(_runs(100.0, 5, 0.01) + _steady())
    new = _runs(101.0, 3, 0.01) + [_row(50.0, op="mem_read")] * 3
    result = cmp.compare(base, new, max_regression=0.05)
    assert not result.failed and result.exit_code() == 0
    assert result.regressions == []


def test_noise_is_what_lets_a_1pct_change_pass() -> None:
    """Below a 0.5% threshold, 1% passes only because the runs wobble by more than that."""
    noisy_old = _baseline([_row(t) for t in (100.0, 99.0, 101.0, 100.5, 99.5)])
    noisy_new = [_row(t) for t in (101.0, 100.0, 102.0)]
    result = cmp.compare(noisy_old, noisy_new, max_regression=0.005)
    (change,) = result.changes
    assert change.status == cmp.WITHIN_NOISE and not result.failed
    assert change.change == pytest.approx(0.01)
    assert change.noise > 0.01

    steady_old = _baseline([_row(100.0, spread=0.0)] * 5)
    steady_new = [_row(101.0, spread=0.0)] * 3
    result = cmp.compare(steady_old, steady_new, max_regression=0.005)
    assert [c.status for c in result.changes] == [cmp.REGRESSION] and result.failed


def test_markdown_report_lists_what_moved() -> None:
    base = _baseline(
        [_row(100.0, spread=0.0)] * 3
        + [_row(200.0, backend="reference", spread=0.0)] * 3
        + [_row(50.0, op="mem_read", spread=0.0)] * 3
        + [_row(70.0, op="mem_write", spread=0.0)] * 3
    )
    new = (
        [_row(110.0, spread=0.0)] * 3  # +10%: regression
        + [_row(150.0, backend="reference", spread=0.0)] * 3  # -25%: improvement
        + [_row(50.2, op="mem_read", spread=0.0)] * 3  # +0.4%: unchanged
        + [_row(9.0, op="pattern_test", spread=0.0)] * 3  # new
    )  # mem_write: missing
    result = cmp.compare(base, new, max_regression=0.05)
    md = report.markdown(result)
    assert md.startswith("### :x: Benchmark comparison FAILED: 1 regressed, 1 improved")
    assert "| status | benchmark | old (us) | new (us) | ratio new/old | change | noise |" in md
    lines = md.splitlines()
    reg = next(x for x in lines if x.startswith("| **regression**"))
    assert "probes mem_copy [bytes=1048576] u32 triton" in reg
    assert "| 100.00 | 110.00 | 1.100 | +10.0% |" in reg
    imp = next(x for x in lines if x.startswith("| improvement"))
    assert "reference" in imp and "| 200.00 | 150.00 | 0.750 | -25.0% |" in imp
    assert lines.index(reg) < lines.index(imp)
    assert not any("mem_read" in x for x in lines if x.startswith("|"))  # unchanged: not listed
    assert "1 new (not in the baseline)" in md and "pattern_test" in md
    assert "1 missing (not run)" in md and "mem_write" in md
    assert "> 5.0%" in md and "noise" in md
    assert "mem_read" in report.markdown(result, show_all=True)


def test_terminal_report(capsys) -> None:
    from rich.console import Console

    base = _baseline([_row(100.0, spread=0.0)] * 3)
    result = cmp.compare(base, [_row(120.0, spread=0.0)] * 3)
    console = Console(width=200, force_terminal=False)
    report.print_report(result, console=console)
    out = capsys.readouterr().out
    assert (
        "regression" in out
        and "[bytes=1048576]" in out
        and "100.00" in out
        and "120.00" in out
        and "1.200" in out
    )
    assert "FAILED: 1 regressed" in out


# ------------------------------------------------------------------ noise and the rule


def test_spread_single_run_uses_p20_p80() -> None:
    m = Measurement(runs_us=(100.0,), p20_us=96.0, p80_us=106.0)
    assert m.center_us == 100.0 and m.spread == pytest.approx(0.05)


def test_spread_is_robust_to_one_odd_run() -> None:
    calm = Measurement(runs_us=(100.0, 101.0, 99.0, 100.0, 150.0), p20_us=0.0, p80_us=0.0)
    assert calm.center_us == 100.0
    assert calm.spread == pytest.approx(2 * 1.4826 * 1.0 / 100.0)  # MAD = 1 us
    with pytest.raises(ValueError, match="runs_us"):
        Measurement(runs_us=(), p20_us=1.0, p80_us=1.0)
    with pytest.raises(ValueError, match="runs_us"):
        Measurement(runs_us=(0.0,), p20_us=1.0, p80_us=1.0)


def test_classify_is_symmetric_and_scaled() -> None:
    old = Measurement((100.0,), 100.0, 100.0)
    assert cmp.classify(old, Measurement((94.0,), 94.0, 94.0), 0.05)[0] == cmp.IMPROVEMENT
    assert cmp.classify(old, Measurement((104.0,), 104.0, 104.0), 0.05)[0] == cmp.UNCHANGED
    noisy = Measurement((104.0,), 94.0, 114.0)  # +-10% within the run
    assert cmp.classify(old, noisy, 0.01) == (cmp.WITHIN_NOISE, pytest.approx(0.096, rel=0.01))
    assert cmp.classify(old, noisy, 0.01, noise_factor=0.0)[0] == cmp.REGRESSION


@pytest.mark.parametrize(
    ("text", "value"), [("5%", 0.05), ("0.05", 0.05), (" 12.5% ", 0.125), (0.1, 0.1), ("0", 0.0)]
)
def test_parse_threshold(text, value) -> None:
    assert cmp.parse_threshold(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["5", "abc", "-1%", "nan", "%"])
def test_parse_threshold_rejects(text) -> None:
    with pytest.raises(ValueError, match="max_regression"):
        cmp.parse_threshold(text)


def test_device_mismatch_and_nothing_in_common() -> None:
    base = _baseline([_row(100.0, device="NVIDIA H100 80GB HBM3")] * 3)
    with pytest.raises(cmp.ComparisonError, match="H100"):
        cmp.compare(base, [_row(100.0)])
    result = cmp.compare(base, [_row(100.0)], ignore_device=True)
    assert any("compared anyway" in w for w in result.warnings)
    with pytest.raises(cmp.ComparisonError, match="no benchmark"):
        cmp.compare(_baseline([_row(1.0)]), [_row(1.0, op="other")])
    with pytest.raises(cmp.ComparisonError, match="no benchmark results"):
        cmp.compare(_baseline([_row(1.0)]), [])


# ------------------------------------------------------------------ baselines


def test_baseline_round_trip(tmp_path: Path) -> None:
    rows = _runs(100.0, 4, 0.02) + _steady()
    base = Baseline.from_rows(rows, note="n", example=True)
    assert base.sku == "cpu" and base.device == "cpu"
    path = base.save(tmp_path / "b.json")
    data = json.loads(path.read_text())
    assert data["format"] == "millkernels-baseline" and data["example"] is True
    assert {b["op"] for b in data["benchmarks"]} == {"mem_copy", "mem_read"}
    back = load_baseline(path)
    assert back.entries.keys() == aggregate(rows).keys()
    for key, m in aggregate(rows).items():
        assert back.entries[key].center_us == pytest.approx(m.center_us, rel=1e-6)
        assert back.entries[key].spread == pytest.approx(m.spread, rel=1e-3, abs=1e-6)
    result = cmp.compare(back, rows)
    assert not result.failed and any("EXAMPLE" in w for w in result.warnings)


def test_baseline_from_results_file_and_errors(tmp_path: Path) -> None:
    results = tmp_path / "r.jsonl"
    write_jsonl(results, _runs(10.0, 3, 0.01))
    assert load_baseline(results).entries and load_baseline(results).device == "cpu"
    with pytest.raises(ValueError, match="one device"):
        Baseline.from_rows([_row(1.0), _row(1.0, device="gpu")])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "millkernels-baseline", "benchmarks": [{"op": "x"}]}))
    with pytest.raises(ValueError, match="malformed"):
        load_baseline(bad)


def test_sku_slug() -> None:
    assert sku_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert sku_slug("NVIDIA H200") == "nvidia-h200" and sku_slug("cpu") == "cpu"
    with pytest.raises(ValueError, match="device"):
        sku_slug(" -- ")


def test_example_baseline_is_marked() -> None:
    """The shipped example is labelled as one, and every benchmark in it is well formed."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "baselines" / "example-cpu.json"
    base = load_baseline(path)
    assert base.example and "EXAMPLE" in base.note and base.device == "cpu"
    assert base.entries and all(m.center_us > 0 for m in base.entries.values())


# ------------------------------------------------------------------ python -m ...compare


def test_compare_main(tmp_path: Path, capsys) -> None:
    base = tmp_path / "base.json"
    _baseline([_row(100.0, spread=0.0)] * 3).save(base)
    slow, same = tmp_path / "slow.jsonl", tmp_path / "same.jsonl"
    write_jsonl(slow, [_row(112.0, spread=0.0)] * 3)
    write_jsonl(same, [_row(100.5, spread=0.0)] * 3)
    md = tmp_path / "out" / "report.md"
    assert cmp.main([str(base), str(slow), "--max-regression", "5%", "--report-md", str(md)]) == 1
    assert "**regression**" in md.read_text() and "1.120" in md.read_text()
    assert cmp.main([str(base), str(same), "--report-md", str(md)]) == 0
    assert "PASSED" in md.read_text()
    assert cmp.main([str(base), str(slow), "--max-regression", "15%"]) == 0
    assert cmp.main([str(base), str(slow), "--max-regression", "5"]) == 2
    assert cmp.main([str(tmp_path / "none.json"), str(slow), "--report-md", str(md)]) == 3
    assert "not made" in md.read_text()
    capsys.readouterr()


def test_terminal_report_shortens_long_lists(capsys) -> None:
    from rich.console import Console

    base = _baseline([_row(10.0 + i, op=f"op{i}", spread=0.0) for i in range(8)])
    result = cmp.compare(base, [_row(10.0, op="op0", spread=0.0)])
    report.print_report(result, console=Console(width=200))
    out = capsys.readouterr().out
    assert out.count("missing (not run): probes op") == report.MAX_LISTED
    assert "... and 2 more missing" in out
    report.print_report(result, console=Console(width=200), show_all=True)
    assert capsys.readouterr().out.count("missing (not run): probes op") == 7
