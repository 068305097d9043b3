"""``millkernels info`` and the runtime facts behind it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from millkernels import runtime
from millkernels.cli import app


def test_info_json_has_the_documented_keys():
    result = CliRunner().invoke(app, ["info", "--format", "json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["version"]
    assert set(info["native"]) >= {"built", "cuda_archs"}
    assert isinstance(info["gpus"], list)
    assert info["gpus"] == [] or {"name", "arch", "memory_bytes"} <= set(info["gpus"][0])
    assert info["families"]["probes"]["reference"] is None  # the reference can always run


def test_info_table_names_every_family_and_backend():
    result = CliRunner().invoke(app, ["info"])
    assert result.exit_code == 0, result.output
    for word in ("probes", "cuda", "triton", "reference", "native extension"):
        assert word in result.output


def test_usage_error_exits_2():
    result = CliRunner().invoke(app, ["info", "--format", "xml"])
    assert result.exit_code == 2


@pytest.mark.native
def test_installed_console_script_reports_the_extension():
    exe = Path(sys.executable).with_name("millkernels")  # installed beside this interpreter
    assert exe.exists(), "the millkernels console script is missing"
    out = subprocess.run([exe, "info", "--format", "json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["native"]["built"] is True
    assert "90a" in info["native"]["cuda_archs"]


@pytest.mark.native
def test_extension_imports_in_a_fresh_interpreter():
    code = "import millkernels._C as c; print(c.build_info()['cuda_archs'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "90a" in out.stdout


def test_import_does_not_touch_the_gpu():
    code = (
        "import sys, millkernels, millkernels.ops;import torch; print(torch.cuda.is_initialized())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_runtime_without_gpu_is_consistent():
    gpus = runtime.gpus()
    assert runtime.has_gpu() == bool(gpus)
    if not gpus:
        assert runtime.capability() is None
    for g in gpus:
        assert g.arch == f"sm_{g.capability[0]}{g.capability[1]}"


def test_device_sms_plans_for_an_h100_off_a_gpu_and_reads_the_gpu_on_one():
    """Grid heuristics get the GPU's SM count, or 132 (an H100/H200) off a GPU."""
    import torch

    assert runtime.device_sms(torch.device("cpu")) == runtime.DEFAULT_SMS == 132
    for i, g in enumerate(runtime.gpus()):
        assert runtime.device_sms(torch.device("cuda", i)) == g.multiprocessors


def test_triton_interpret_reads_the_environment(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert runtime.triton_interpret()
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not runtime.triton_interpret()


def test_python_dash_m_runs_the_command():
    """`python -m millkernels` (what `torchrun -m millkernels bench comm` runs) is the CLI."""
    cmd = [sys.executable, "-m", "millkernels", "info", "--format", "json"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["version"]
    bad = subprocess.run([sys.executable, "-m", "millkernels", "nope"], capture_output=True)
    assert bad.returncode == 2


def test_triton_without_gpu_or_interpreter_is_unusable_with_the_calls_reason(monkeypatch):
    """On a CPU without TRITON_INTERPRET=1 every Triton call refuses: info says so, with the
    very reason a call that names the backend raises."""
    from rich.console import Console

    from millkernels.dispatch import BackendUnavailable
    from millkernels.info_table import print_info
    from millkernels.ops import probes

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(runtime, "gpus", lambda: ())
    why = runtime.triton_unavailable_reason()
    assert why and "TRITON_INTERPRET" in why and "no CUDA GPU" in why

    result = CliRunner().invoke(app, ["info", "--format", "json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    triton = {fam: b["triton"] for fam, b in summary["families"].items() if "triton" in b}
    assert set(triton) >= {"attention", "comm", "probes", "quant"}
    assert set(triton.values()) == {why}

    console = Console(width=1000, record=True)
    print_info(summary, console)
    cells = [[c.strip() for c in line.split("│")] for line in console.export_text().splitlines()]
    usable = [row[3] for row in cells if len(row) > 4 and row[2] == "triton"]
    assert len(usable) == len(triton), cells
    assert all(u.startswith("no: no CUDA GPU is visible") for u in usable), usable

    src = torch.randint(-(2**31), 2**31 - 1, (37,), dtype=torch.int32)
    with pytest.raises(BackendUnavailable, match="cannot serve probes.mem_copy") as err:
        probes.mem_copy(torch.empty_like(src), src, backend="triton")
    assert why in str(err.value)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert runtime.triton_unavailable_reason() is None  # the interpreter runs it on the CPU


@pytest.mark.parametrize(
    ("env", "opt_in", "expected"),
    [
        ("MILLKERNELS_ATTENTION_TMA", "1", "on (training kernels"),
        ("MILLKERNELS_ATTENTION_TMA", "0", "off: MILLKERNELS_ATTENTION_TMA is not 1"),
        ("MILLKERNELS_ATTENTION_WS", "1", "on (forward calls"),
        ("MILLKERNELS_ATTENTION_WS", "0", "off: MILLKERNELS_ATTENTION_WS is not 1"),
        ("MILLKERNELS_ATTENTION_BWD", "legacy", "legacy"),
        ("MILLKERNELS_ATTENTION_BWD", "", "fused"),
    ],
)
def test_info_shows_the_attention_launch_choices(monkeypatch, env, opt_in, expected):
    """`millkernels info` says whether the attention training kernels use TMA, and whether the
    forward tries its warp-specialised kernel, here (the interpreter emulates tensor
    descriptors, so the opt-in alone decides on this machine)."""
    from rich.console import Console

    from millkernels.info_table import print_info

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv(env, opt_in)
    summary = json.loads(CliRunner().invoke(app, ["info", "--format", "json"]).output)
    (choice,) = (v for k, v in summary["choices"]["attention"].items() if f"({env})" in k)
    assert choice.startswith(expected)
    console = Console(width=1000, record=True)
    print_info(summary, console)
    lines = [ln for ln in console.export_text().splitlines() if f"({env}):" in ln]
    assert len(lines) == 1 and expected in lines[0], lines


@pytest.mark.parametrize(
    ("legacy", "expected"), [("", "current"), ("stages,splits", "previous: splits, stages")]
)
def test_info_shows_the_decode_legacy_rules(monkeypatch, legacy, expected):
    """`millkernels info` says which previous decode rules MILLKERNELS_DECODE_LEGACY selects."""
    monkeypatch.setenv("MILLKERNELS_DECODE_LEGACY", legacy)
    summary = json.loads(CliRunner().invoke(app, ["info", "--format", "json"]).output)
    key = "decode legacy rules (MILLKERNELS_DECODE_LEGACY)"
    assert summary["choices"]["attention"][key].startswith(expected)
