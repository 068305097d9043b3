"""``millkernels bench`` through typer's CliRunner, on the CPU with tiny sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from millkernels.bench.rows import read_jsonl


@pytest.fixture(scope="module")
def app():
    from millkernels.cli import app

    return app


def _invoke(app, *args: str):
    return CliRunner().invoke(app, ["bench", *args])


def test_list(app) -> None:
    for args in ((), ("--list",)):
        result = _invoke(app, *args)
        assert result.exit_code == 0, result.output
        assert "probes" in result.stdout and "ceilings" in result.stdout
    result = _invoke(app, "--list", "--format", "json")
    names = [s["name"] for s in json.loads(result.stdout)["suites"]]
    assert names[:2] == ["ceilings", "probes"]


def test_usage_errors(app) -> None:
    assert _invoke(app, "no-such-suite").exit_code == 2
    assert _invoke(app, "probes", "--format", "yaml").exit_code == 2
    assert _invoke(app, "probes", "--device", "tpu").exit_code == 2


def test_probes_json_and_out(app, tiny, tmp_path: Path) -> None:
    out = tmp_path / "results" / "r.jsonl"
    args = ("probes", "--quick", "--out", str(out), "--format", "json", "--device", "cpu")
    result = _invoke(app, *args)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    stored = read_jsonl(out)
    assert len(printed) == len(stored) > 0
    assert [r["op"] for r in printed] == [r.op for r in stored]
    assert all(r.command == "millkernels bench probes --quick --device cpu" for r in stored)
    assert all(r.device == "cpu" and r.suite == "probes" for r in stored)
    # --out appends
    assert _invoke(app, *args).exit_code == 0
    assert len(read_jsonl(out)) == 2 * len(stored)


def test_all_table(app, tiny) -> None:
    result = _invoke(app, "all", "--quick")
    assert result.exit_code == 0, result.output
    assert "ceiling.copy" in result.stdout and "mem_copy" in result.stdout


def test_failed_check_exits_1(app, tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    from millkernels.ops import probes as ops

    monkeypatch.setattr(ops, "mem_write", lambda dst, value=0, *, backend="auto": None)
    result = _invoke(app, "probes", "--quick", "--format", "json")
    assert result.exit_code == 1
    assert "FAILED" in result.stderr and "mem_write" in result.stderr


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the no-GPU refusal")
def test_cuda_without_gpu_exits_3(app) -> None:
    assert _invoke(app, "probes", "--device", "cuda").exit_code == 3
