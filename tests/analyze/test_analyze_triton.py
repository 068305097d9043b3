"""Offline analysis of Triton kernels: tensor cores, spills, shared memory, compile errors.

The kernels below are compiled for sm_90 and sm_80 without a GPU. Under the test-suite's
``TRITON_INTERPRET=1`` they are interpreter objects in this process; the analysis compiles them
in a worker process that imports this module again without the interpreter. They are
registered in a private registry, never in the package's.
"""

from __future__ import annotations

import json
import sys

import pytest
import triton
import triton.language as tl

from millkernels.analyze.core import analyze_kernels
from millkernels.analyze.registry import Registry, TritonVariant, use_registry


@triton.jit
def _matmul(a_ptr, b_ptr, c_ptr, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """One BM x BN tile of a row-major (BM x K) @ (K x BN) product, pipelined over K."""
    rm = tl.arange(0, BM)
    rn = tl.arange(0, BN)
    rk = tl.arange(0, BK)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in range(0, K, BK):
        a = tl.load(a_ptr + rm[:, None] * K + (k + rk)[None, :])
        b = tl.load(b_ptr + (k + rk)[:, None] * BN + rn[None, :])
        acc += tl.dot(a, b)
    tl.store(c_ptr + rm[:, None] * BN + rn[None, :], acc)


@triton.jit
def _hungry(x_ptr, y_ptr, R: tl.constexpr, C: tl.constexpr):
    """Keeps a whole R x C fp32 tile live across a row reduction: R*C/32 values per thread
    at one warp, more than the 255 registers a thread may have."""
    offs = tl.arange(0, R)[:, None] * C + tl.arange(0, C)[None, :]
    x = tl.load(x_ptr + offs)
    s = tl.sum(x, axis=1)
    tl.store(y_ptr + offs, x - s[:, None])


@triton.jit
def _broken(x_ptr, B: tl.constexpr):
    v = tl.load(x_ptr + tl.arange(0, B))
    tl.store(x_ptr + tl.arange(0, B), tl.dot(v, v))  # tl.dot needs 2-D operands


_MM_SIG = {"a_ptr": "*bf16", "b_ptr": "*bf16", "c_ptr": "*fp32", "K": "i32"}
#: fits: (64x32 + 32x64) bf16 x 3 stages = 24 KiB
_MM_SMALL = TritonVariant(_MM_SIG, {"BM": 64, "BN": 64, "BK": 32}, 4, 3, label="small")
#: (128x128 + 128x128) bf16 = 64 KiB per stage, 8 stages asked for: Triton keeps at least 4
#: (seen: 256 KiB on sm_90, 192 KiB on sm_80), over both architectures' 227 / 163 KiB.
_MM_HUGE = TritonVariant(
    _MM_SIG,
    {"BM": 128, "BN": 128, "BK": 128},
    num_warps=4,
    num_stages=8,
    label="huge",
    divisible_by_16=("a_ptr", "b_ptr", "c_ptr", "K"),
)
#: 32 x 256 fp32 at one warp: 256 values per thread; ptxas spills (seen: 40 B on sm_90)
_HUNGRY = TritonVariant({"x_ptr": "*fp32", "y_ptr": "*fp32"}, {"R": 32, "C": 256}, 1, 1)


def _registry() -> Registry:
    reg = Registry()
    reg.register_triton("test.matmul", _matmul, [_MM_SMALL, _MM_HUGE], hot=True)
    reg.register_triton(
        "test.matmul_hopper",
        _matmul,
        [TritonVariant(_MM_SIG, {"BM": 64, "BN": 64, "BK": 32}, 4, 3, min_arch=90)],
    )
    reg.register_triton("test.hungry", _hungry, [_HUNGRY], hot=True)
    reg.register_triton("test.broken", _broken, [TritonVariant({"x_ptr": "*fp32"}, {"B": 16})])
    return reg


@pytest.fixture(scope="module")
def sm90():
    return analyze_kernels("sm_90", registry=_registry(), include_cuda=False)


@pytest.fixture(scope="module")
def sm80():
    return analyze_kernels("sm_80", registry=_registry(), include_cuda=False)


def _one(analysis, kernel, variant=None):
    rows = [
        r
        for r in analysis.reports
        if r.kernel == kernel and (variant is None or r.variant == variant)
    ]
    assert len(rows) == 1, [(r.kernel, r.variant) for r in analysis.reports]
    return rows[0]


def test_bf16_dot_uses_wgmma_on_sm90(sm90):
    r = _one(sm90, "test.matmul", "small")
    assert r.status == "ok", r.reason
    assert r.backend == "triton" and r.arch == "sm_90" and r.hot
    assert "HGMMA" in r.tensor_core_ops, r.tensor_core_counts
    assert r.registers and r.registers > 0
    assert r.spill_bytes == 0
    assert 0 < r.shared_bytes <= 232448
    assert r.symbol == "_matmul"
    assert r.source.endswith(":_matmul")


def test_bf16_dot_uses_mma_on_sm80(sm80):
    r = _one(sm80, "test.matmul", "small")
    assert r.status == "ok", r.reason
    assert "HMMA" in r.tensor_core_ops and "HGMMA" not in r.tensor_core_ops
    assert not r.tma


def test_register_hungry_kernel_spills(sm90, sm80):
    for analysis in (sm90, sm80):
        r = _one(analysis, "test.hungry")
        assert r.status == "spills", r.reason
        assert r.spill_bytes > 0 and r.spill_bytes == r.spill_stores + r.spill_loads
        assert r.registers == 255
        assert r.failed  # hot
    assert any(r.kernel == "test.hungry" for r in sm90.failures)


def test_too_much_shared_memory_is_reported_not_raised(sm90, sm80):
    for analysis, limit in ((sm90, 232448), (sm80, 166912)):
        r = _one(analysis, "test.matmul", "huge")
        assert r.status in ("smem_overflow", "error"), (r.status, r.reason)
        if r.status == "smem_overflow":
            assert r.shared_bytes > limit
            assert str(limit) in r.reason


def test_min_arch_variant_is_skipped_on_older_arch(sm90, sm80):
    assert _one(sm90, "test.matmul_hopper").status == "ok"
    r80 = _one(sm80, "test.matmul_hopper")
    assert r80.status == "skipped" and "sm_90" in r80.reason
    assert r80.registers is None


def test_compile_error_is_a_row(sm90):
    r = _one(sm90, "test.broken")
    assert r.status == "error"
    assert r.reason
    assert not r.failed  # not hot: reported, but does not fail --check
    assert sm90.exit_code(check=False) == 0
    assert sm90.exit_code(check=True) == 1  # test.hungry (hot) spills


def test_check_through_the_cli_exits_1_for_a_hot_spilling_kernel(tmp_path):
    from typer.testing import CliRunner

    from millkernels.cli import app

    with use_registry() as reg:
        reg.register_triton("test.hungry", _hungry, [_HUNGRY], hot=True)
        reg.register_triton(
            "test.cold", _hungry, [TritonVariant(_HUNGRY.signature, {"R": 1, "C": 64})]
        )
        result = CliRunner().invoke(
            app,
            ["analyze", "--arch", "sm_80", "--format", "json", "--check", "--hot-only"],
            env={"MILLKERNELS_CSRC": str(tmp_path)},  # no CUDA sources: Triton only
        )
    assert result.exit_code == 1, result.output
    rows = json.loads(result.stdout)
    assert isinstance(rows, list)
    for row in rows:
        for key in (
            "kernel",
            "backend",
            "arch",
            "registers",
            "spill_bytes",
            "shared_bytes",
            "tensor_core_ops",
        ):
            assert key in row
    names = {r["kernel"] for r in rows}
    assert "test.hungry" in names and "test.cold" not in names  # --hot-only
    hungry = next(r for r in rows if r["kernel"] == "test.hungry")
    assert hungry["arch"] == "sm_80" and hungry["status"] == "spills" and hungry["spill_bytes"] > 0
    # the package's registry was not touched
    from millkernels.analyze.registry import current_registry

    assert "test.hungry" not in current_registry().triton


_TINY_MODULE = """
import triton
import triton.language as tl


@triton.jit
def tiny(x_ptr, B: tl.constexpr):
    tl.store(x_ptr + tl.arange(0, B), 1.0)
"""


def test_worker_survives_a_crash(tmp_path, monkeypatch):
    """A kernel whose compile kills the worker is one error row; the kernels after it are
    still compiled, in a restarted worker."""
    from millkernels.analyze import triton_compile
    from millkernels.analyze.triton_compile import TritonJob, make_job, run_jobs

    (tmp_path / "mk_t_crash.py").write_text("import os\nos._exit(7)\n")
    (tmp_path / "mk_t_tiny.py").write_text(_TINY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(triton_compile.JOBS_ENV, "1")  # one worker, restarted after the crash
    import mk_t_tiny

    variant = TritonVariant({"x_ptr": "*fp32", "B": "constexpr"}, {"B": 16})
    jobs = [
        TritonJob(0, "mk_t_crash", "k", str(tmp_path / "mk_t_crash.py"), 1, variant),
        make_job(1, mk_t_tiny.tiny, variant),
        TritonJob(2, "mk_t_tiny", "nothing", str(tmp_path / "mk_t_tiny.py"), 1, variant),
    ]
    try:
        results = run_jobs(jobs, 80)
    finally:
        sys.modules.pop("mk_t_tiny", None)
    assert "died (exit 7)" in results[0]["error"]
    assert results[1].get("registers"), results[1]
    assert "no kernel nothing" in results[2]["error"]


def test_worker_that_hangs_is_stopped(tmp_path, monkeypatch):
    from millkernels.analyze import triton_compile
    from millkernels.analyze.triton_compile import TritonJob, run_jobs

    (tmp_path / "mk_t_hang.py").write_text("import time\ntime.sleep(600)\n")
    monkeypatch.setenv(triton_compile.TIMEOUT_ENV, "1")  # counted from the job's start
    variant = TritonVariant({"x_ptr": "*fp32", "B": "constexpr"}, {"B": 16})
    job = TritonJob(0, "mk_t_hang", "k", str(tmp_path / "mk_t_hang.py"), 1, variant)
    assert "longer than 1 s" in run_jobs([job], 90)[0]["error"]


def test_spill_allowance_waives_a_known_spill_but_not_growth(tmp_path):
    """A documented allowance turns a known spill into ``waived`` (shown, not failed); the same
    kernel with a smaller allowance than its spill still fails ``--check``."""
    import dataclasses

    from millkernels.analyze.core import analyze_kernels

    with pytest.raises(ValueError, match="allowance_reason"):
        dataclasses.replace(_HUNGRY, spill_allowance={80: 1})
    with use_registry() as reg:
        big = dataclasses.replace(_HUNGRY, spill_allowance={80: 1 << 20}, allowance_reason="t")
        small = dataclasses.replace(_HUNGRY, spill_allowance={80: 1}, allowance_reason="t")
        reg.register_triton("test.known", _hungry, [big], hot=True)
        reg.register_triton("test.grown", _hungry, [small], hot=True)
        analysis = analyze_kernels("sm_80", registry=reg, include_cuda=False)
    rows = {r.kernel: r for r in analysis.reports}
    assert rows["test.known"].status == "waived" and not rows["test.known"].failed
    assert "within its allowance" in rows["test.known"].reason
    assert rows["test.grown"].status == "spills" and rows["test.grown"].failed
