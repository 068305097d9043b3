"""``millkernels bench ... --compare BASELINE --max-regression 5%`` on the CPU, tiny sizes.

The baselines are made from a real run of the suite with every time scaled: by 1/100 (this run
is then 100x slower: a regression whatever the machine's noise) or by 100 (faster)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from millkernels.bench.baseline import Baseline
from millkernels.bench.rows import read_jsonl

ARGS = ("probes", "--quick", "--device", "cpu")


@pytest.fixture(scope="module")
def app():
    from millkernels.cli import app

    return app


def _invoke(app, *args: str):
    return CliRunner().invoke(app, ["bench", *args])


def _scaled_baseline(rows, factor: float, path: Path, device: str = "cpu") -> Path:
    scaled = [
        dataclasses.replace(
            r,
            median_us=r.median_us * factor,
            p20_us=r.p20_us * factor,
            p80_us=r.p80_us * factor,
            device=device,
        )
        for r in rows
    ]
    return Baseline.from_rows(scaled).save(path)


@pytest.fixture
def first_run(app, tiny, tmp_path: Path):
    out = tmp_path / "first.jsonl"
    result = _invoke(app, *ARGS, "--out", str(out))
    assert result.exit_code == 0, result.output
    return read_jsonl(out)


def test_compare_regression_fails(app, tiny, first_run, tmp_path: Path) -> None:
    base = _scaled_baseline(first_run, 0.01, tmp_path / "fast.json")
    md = tmp_path / "report.md"
    args = (*ARGS, "--compare", str(base), "--max-regression", "5%", "--report-md", str(md))
    result = _invoke(app, *args)
    assert result.exit_code == 1, result.output
    text = md.read_text()
    assert "FAILED" in text and "**regression**" in text
    regressed = [x for x in text.splitlines() if x.startswith("| **regression**")]
    assert len(regressed) == len({r.key() for r in first_run})
    ratios = [float(x.split("|")[5]) for x in regressed]  # | status | name | old | new | ratio
    assert all(r > 10 for r in ratios), ratios
    assert "FAILED" in result.output


def test_compare_faster_passes_with_repeat(app, tiny, first_run, tmp_path: Path) -> None:
    base = _scaled_baseline(first_run, 100.0, tmp_path / "slow.json")
    out, md = tmp_path / "r.jsonl", tmp_path / "report.md"
    args = (*ARGS, "--repeat", "2", "--out", str(out), "--format", "json")
    result = _invoke(app, *args, "--compare", str(base), "--max-regression", "0.05",
                     "--report-md", str(md))  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = read_jsonl(out)
    assert len(rows) == 2 * len(first_run)  # two runs of every case
    assert "PASSED" in md.read_text() and "improvement" in md.read_text()
    assert "cpu, 2 run(s)" in md.read_text()
    printed = json.loads(result.stdout)  # the report went to stderr: stdout stays JSON
    assert len(printed) == len(rows)


def test_compare_usage_and_could_not_run(app, tiny, first_run, tmp_path: Path) -> None:
    base = _scaled_baseline(first_run, 1.0, tmp_path / "b.json")
    assert _invoke(app, *ARGS, "--compare", str(base), "--max-regression", "5").exit_code == 2
    assert _invoke(app, *ARGS, "--compare", str(tmp_path / "none.json")).exit_code == 2
    assert _invoke(app, *ARGS, "--repeat", "0").exit_code == 2
    other = _scaled_baseline(first_run, 1.0, tmp_path / "h100.json", device="NVIDIA H100")
    md = tmp_path / "r.md"
    result = _invoke(app, *ARGS, "--compare", str(other), "--report-md", str(md))
    assert result.exit_code == 3, result.output
    assert "NVIDIA H100" in result.output and "not made" in md.read_text()
