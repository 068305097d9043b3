"""``millkernels analyze``: options, exit codes, and the package's own kernels."""

from __future__ import annotations

import json

import pytest
import triton
import triton.language as tl
from typer.testing import CliRunner

from millkernels.analyze import core, cuda_compile, tools
from millkernels.analyze.registry import TritonVariant, use_registry
from millkernels.cli import app

JSON_KEYS = (
    "kernel",
    "backend",
    "arch",
    "registers",
    "spill_bytes",
    "shared_bytes",
    "tensor_core_ops",
)


@triton.jit
def _noop(x_ptr, BLOCK: tl.constexpr):
    tl.store(x_ptr + tl.arange(0, BLOCK), 0.0)


def _invoke(*args: str):
    return CliRunner().invoke(app, ["analyze", *args])


@pytest.mark.parametrize(
    "args",
    [["--arch", "sm_70"], ["--arch", "gfx942"], ["--format", "xml"], ["--no-such-option"]],
)
def test_usage_errors_exit_2(args):
    result = _invoke(*args)
    assert result.exit_code == 2, result.output


def test_missing_toolchain_exits_3(monkeypatch):
    monkeypatch.setattr(core, "triton_toolchain_missing", lambda: "Triton is not installed")
    monkeypatch.setattr(tools, "find_nvcc", lambda: None)
    monkeypatch.setattr(cuda_compile, "analyze_built_extension", lambda *a, **k: None)
    with use_registry() as reg:
        reg.register_triton("t.noop", _noop, [TritonVariant({"x_ptr": "*fp32"}, {"BLOCK": 32})])
        result = _invoke("--format", "json", "--check")
    assert result.exit_code == 3, result.output
    rows = json.loads(result.stdout)
    noop = next(r for r in rows if r["kernel"] == "t.noop")
    assert noop["status"] == "skipped" and "Triton" in noop["reason"]


def test_table_output(monkeypatch, tmp_path):
    monkeypatch.setenv("MILLKERNELS_CSRC", str(tmp_path))  # no CUDA sources: fast
    with use_registry() as reg:
        reg.register_triton(
            "t.noop", _noop, [TritonVariant({"x_ptr": "*fp32"}, {"BLOCK": 32}, min_arch=90)]
        )
        result = _invoke("--arch", "sm_80", "--check")
    assert result.exit_code == 0, result.output
    assert "t.noop" in result.stdout and "skipped" in result.stdout
    assert "sm_80" in result.stdout


@pytest.mark.slow
@pytest.mark.timeout(1800)  # every kernel of the package: ~100 s of CPU on 2 cores, cold
def test_every_package_kernel_is_listed():
    """The acceptance check: `millkernels analyze --arch sm_90 --format json` without a GPU
    lists every kernel, and every one of them compiles. (Whether the hot ones pass is what
    `millkernels analyze --check` in CI decides; here the exit code must agree with the rows.)
    """
    from millkernels.analyze.cuda_compile import cuda_sources, find_csrc
    from millkernels.analyze.registry import triton_kernels

    result = _invoke("--arch", "sm_90", "--format", "json", "--check")
    rows = json.loads(result.stdout)
    failing = [r for r in rows if r["hot"] and r["status"] in ("spills", "smem_overflow", "error")]
    assert result.exit_code == (1 if failing else 0), result.output[-2000:]
    for row in rows:
        assert all(k in row for k in JSON_KEYS)
        assert row["arch"] == "sm_90"
    errors = [(r["kernel"], r["variant"], r["reason"]) for r in rows if r["status"] == "error"]
    assert not errors
    listed = {r["kernel"] for r in rows if r["backend"] == "triton"}
    assert set(triton_kernels().triton) <= listed
    csrc = find_csrc()
    if tools.find_nvcc() is not None and csrc is not None and cuda_sources(csrc):
        assert any(r["backend"] == "cuda" and r["registers"] for r in rows)
