"""``millkernels analyze`` shows progress: piped, one line per kernel variant as it finishes
(no table wrapped to 80 columns); with --format json, stdout is only the JSON and the lines go
to stderr. The analysis itself is a stand-in that finishes reports through ``on_report``."""

from __future__ import annotations

import json
import re

import pytest
import triton
import triton.language as tl
from typer.testing import CliRunner

from millkernels.analyze import cli as analyze_cli
from millkernels.analyze import core
from millkernels.analyze.registry import TritonVariant, use_registry
from millkernels.analyze.report import KernelReport, parse_arch
from millkernels.cli import app

LINE = (
    r"^(ok|spills|waived|smem_overflow|skipped|error) +(triton|cuda) +\S.* regs=(\d+|-) "
    r"spill_B=(\d+|-) smem_KiB=\S+ tc=\S+( TMA)?( hot)?( -- .*)?$"
)


def _reports() -> list[KernelReport]:
    arch = parse_arch("sm_90").name
    return [
        KernelReport(
            kernel="attn.fwd",
            backend="triton",
            arch=arch,
            variant="BLOCK_M=128, num_warps=8",
            registers=168,
            spill_bytes=0,
            shared_bytes=96 * 1024 + 512,
            tensor_core_counts={"wgmma": 24},
            hot=True,
        ),
        KernelReport(
            kernel="w4a16_small_m_kernel",
            backend="cuda",
            arch=arch,
            status="error",
            reason="nvcc failed:\nsecond line",
            hot=True,
        ),
        KernelReport(
            kernel="probe.copy",
            backend="triton",
            arch=arch,
            variant="BLOCK=1024",
            status="skipped",
            reason="variant needs sm_100 or newer",
        ),
    ]


@pytest.fixture
def finished(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """analyze_kernels replaced: it finishes the reports one by one through on_report, and
    records what had been printed to stdout by the time each one finished."""
    seen: list[str] = []

    def fake(arch, *, hot_only=False, on_report=None, **kw):
        analysis = core.Analysis(parse_arch(arch) if isinstance(arch, str) else arch)
        for report in _reports():
            analysis.reports.append(report)
            on_report(report)
            seen.append(report.kernel)
        return analysis

    monkeypatch.setattr(core, "analyze_kernels", fake)
    return seen


def test_report_line_format():
    ok, error, skipped = (analyze_cli.report_line(r) for r in _reports())
    assert ok == (
        "ok            triton attn.fwd [BLOCK_M=128, num_warps=8] regs=168 spill_B=0 "
        "smem_KiB=96.5 tc=wgmmax24 hot"
    )
    assert error == (
        "error         cuda   w4a16_small_m_kernel regs=- spill_B=- smem_KiB=- tc=- hot "
        "-- nvcc failed:"
    )
    assert skipped.endswith("-- variant needs sm_100 or newer")


def test_piped_table_is_one_line_per_variant(finished):
    result = CliRunner().invoke(app, ["analyze", "--arch", "sm_90"])  # stdout: not a TTY
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("millkernels analyze sm_90")
    body = lines[1:4]
    assert [line.split()[2] for line in body] == ["attn.fwd", "w4a16_small_m_kernel", "probe.copy"]
    for line in body:
        assert re.match(LINE, line), line
    assert not any(ch in result.stdout for ch in "┃│┏━"), "no table when piped"
    assert "3 kernel variants: 1 error, 1 ok, 1 skipped." in result.stdout
    assert "nvcc failed:" in result.stdout  # the problems, after the lines


def test_json_stays_pure_json_and_progress_goes_to_stderr(finished):
    result = CliRunner().invoke(app, ["analyze", "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["kernel"] for r in rows] == ["attn.fwd", "w4a16_small_m_kernel", "probe.copy"]
    progress = result.stderr.splitlines()
    assert len(progress) == 3
    assert all(re.match(LINE, line) for line in progress), progress


def test_each_line_is_printed_as_its_variant_finishes(monkeypatch):
    """A line goes out from on_report itself, before the next variant finishes."""
    printed: list[str] = []
    monkeypatch.setattr(analyze_cli.typer, "echo", lambda text, err=False: printed.append(text))
    with analyze_cli._progress(to_stdout=True) as on_report:
        for i, report in enumerate(_reports()):
            on_report(report)
            assert len(printed) == i + 1
            assert report.kernel in printed[-1]


@triton.jit
def _fill(x_ptr, BLOCK: tl.constexpr):
    tl.store(x_ptr + tl.arange(0, BLOCK), 1.0)


def test_analyze_kernels_hands_over_every_report_once(monkeypatch, tmp_path):
    """Compiled (from the worker, as each result arrives), skipped and failed reports all
    reach on_report, each exactly once, and they are the reports of the result."""
    monkeypatch.setenv("MILLKERNELS_CSRC", str(tmp_path))  # no CUDA sources: Triton only
    variants = [
        TritonVariant({"x_ptr": "*fp32"}, {"BLOCK": 32}),
        TritonVariant({"x_ptr": "*fp32"}, {"BLOCK": 64}),
        TritonVariant({"x_ptr": "*fp32"}, {"BLOCK": 32}, min_arch=90),
        TritonVariant({"x_ptr": "*fp32"}, {"BLOCK": 33}),  # not a power of two: an error
    ]
    seen: list[KernelReport] = []
    with use_registry() as reg:
        reg.register_triton("t.fill", _fill, variants)
        result = core.analyze_kernels("sm_80", on_report=seen.append)
    assert sorted(map(id, seen)) == sorted(map(id, result.reports))
    assert [r.status for r in result.reports] == ["ok", "ok", "skipped", "error"]
