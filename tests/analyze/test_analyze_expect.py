"""Expect evidence: ``dup_warp_dots`` from TTGIR, judging Expects, and ``--check`` failing on one
that does not hold (tiny kernels compiled offline for sm_90)."""

from __future__ import annotations

import json

import pytest
import triton
import triton.language as tl
from typer.testing import CliRunner

from millkernels.analyze.core import analyze_kernels
from millkernels.analyze.expect import describe, evaluate, known_metric
from millkernels.analyze.registry import Registry, TritonVariant, use_registry
from millkernels.analyze.ttgir import dup_warp_dots, total_warps
from millkernels.cli import app
from millkernels.ops.analysis_spec import Expect

_V2 = (
    "#ttg.nvidia_mma<{versionMajor = 2, versionMinor = 0, warpsPerCTA = [%s], "
    "instrShape = [16, 8]}>"
)
_V3 = (
    "#ttg.nvidia_mma<{versionMajor = 3, versionMinor = 0, warpsPerCTA = [%s], "
    "instrShape = [16, %d, 16]}>"
)


def _ttgir(layout: str, shape: str, op: str = "tt.dot") -> str:
    return (
        f"#mma = {layout}\n"
        'module attributes {"ttg.num-warps" = 8 : i32} {\n'
        f"  %d = {op} %a, %b, %c : tensor<{shape}xbf16, #ttg.dot_op<{{opIdx = 0, parent = #mma}}>>"
        f" * tensor<32x8xbf16, #blocked> -> tensor<{shape}xf32, #mma> loc(#loc1)\n"
        f"  %w = ttng.warp_group_dot_wait %d {{pendings = 0 : i32}} : tensor<{shape}xf32, #mma>\n"
        "}\n"
    )


@pytest.mark.parametrize(
    ("layout", "shape", "dups"),
    [
        (_V2 % "8, 1", "64x8", 1),  # 8 warps x 16 rows = 128 > 64 rows
        (_V2 % "4, 1", "64x8", 0),
        (_V2 % "2, 4", "32x32", 0),
        (_V2 % "1, 4", "16x16", 1),  # 4 warps x 8 columns = 32 > 16 columns
        (_V3 % ("4, 2", 8), "64x8", 1),  # two warpgroups on the same 8 columns
        (_V3 % ("4, 2", 32), "64x64", 0),
        (_V3 % ("8, 1", 16), "128x16", 0),
        (_V3 % ("8, 1", 64), "64x64", 1),  # two warpgroups on the same 64 rows
        (_V3 % ("1, 8, 1", 64), "2x64x64", 1),  # batched: the last two dimensions
    ],
)
def test_dup_warp_dots_on_hand_written_ttgir(layout, shape, dups):
    assert dup_warp_dots(_ttgir(layout, shape)) == dups
    assert dup_warp_dots(_ttgir(layout, shape, "ttng.warp_group_dot")) == dups


def test_inline_layout_and_warps():
    inline = _V2 % "8, 1"
    text = (
        'module attributes {"ttg.num-warps" = 4 : i32, "ttg.total-num-warps" = 12 : i32} {\n'
        f"  %d = tt.dot %a, %b, %c : tensor<64x32xbf16> * tensor<32x8xbf16> "
        f"-> tensor<64x8xf32, {inline}>\n}}"
    )
    assert dup_warp_dots(text) == 1
    assert total_warps(text) == 12
    assert total_warps(_ttgir(_V2 % "4, 1", "64x8")) == 8


def test_evaluate_holds_fails_skips_and_unknown():
    metrics = {"registers": 90.0, "loops": 1.0, "loop.mma": 4.0, "loop.instructions": 50.0}
    expects = [
        Expect("registers", "<=", 128, "fits two CTAs"),
        Expect("loop.mma", ">=", 8, "two wgmma per k-step"),
        Expect("loop.mma", "==", 4, "3.6 only", triton="3.6"),
        Expect("loop.op.MUFU", "==", 0, "no exp in the loop"),
        Expect("kernel.op.I2F", "==", 0, "no conversion"),
        Expect("loop.wgmma", ">=", 1, "a typo"),
        Expect("dup_warp_dots", "==", 0, "not measured here"),
    ]
    rows = evaluate(expects, metrics, "3.9.0")
    assert [r["holds"] for r in rows] == [True, False, False, True, True, False, False]
    assert [r["skipped"] for r in rows] == [False, False, True, False, False, False, False]
    assert rows[1]["actual"] == 4.0
    assert "unknown metric" in rows[5]["note"]
    assert "Triton" in rows[6]["note"]
    assert describe(rows[1]) == "loop.mma >= 8 (actual 4): two wgmma per k-step"
    rows36 = evaluate(expects[2:3], metrics, "3.6.0")
    assert rows36[0]["holds"] and not rows36[0]["skipped"]
    no_loop = evaluate(expects[1:2], {"loops": 0.0}, "3.9.0")[0]
    assert not no_loop["holds"] and "no loop" in no_loop["note"]


def test_known_metrics():
    for name in ("registers", "loop.mma_ratio", "kernel.op.HGMMA", "loop.op.LDGSTS", "tma"):
        assert known_metric(name), name
    for name in ("loop.wgmma", "kernel.op.", "loop.op.hgmma", "regs"):
        assert not known_metric(name), name


@triton.jit
def _dot(a_ptr, b_ptr, c_ptr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    rm = tl.arange(0, BM)
    rn = tl.arange(0, BN)
    rk = tl.arange(0, BK)
    a = tl.load(a_ptr + rm[:, None] * BK + rk[None, :])
    b = tl.load(b_ptr + rk[:, None] * BN + rn[None, :])
    tl.store(c_ptr + rm[:, None] * BN + rn[None, :], tl.dot(a, b))


@triton.jit
def _scale(x_ptr, n, BLOCK: tl.constexpr):
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        tl.store(x_ptr + offs, tl.load(x_ptr + offs, mask=offs < n) * 2.0, mask=offs < n)


_DOT_SIG = {"a_ptr": "*bf16", "b_ptr": "*bf16", "c_ptr": "*fp32"}


def test_real_compile_duplicating_and_not():
    """A 64-row, 8-column dot at 8 warps duplicates warps (Triton 3.6: along M, 3.9: along N);
    64 x 64 at 8 warps does not."""
    no_dup = Expect("dup_warp_dots", "==", 0, "no two warps compute the same products")
    reg = Registry()
    reg.register_triton(
        "t.dot",
        _dot,
        [
            TritonVariant(_DOT_SIG, {"BM": 64, "BN": 8, "BK": 32}, 8, label="dup", expect=[no_dup]),
            TritonVariant(_DOT_SIG, {"BM": 64, "BN": 64, "BK": 32}, 8, label="ok", expect=[no_dup]),
        ],
    )
    result = analyze_kernels("sm_90", registry=reg, include_cuda=False)
    by = {r.variant: r for r in result.reports}
    assert by["dup"].metrics["dup_warp_dots"] == 1 and by["dup"].expect_failures
    assert by["ok"].metrics["dup_warp_dots"] == 0 and not by["ok"].expect_failures
    assert by["ok"].metrics["num_warps"] == 8 and by["ok"].metrics["kernel.op.HGMMA"] >= 1
    assert by["dup"].failed and not by["ok"].failed
    assert by["ok"].triton_version == triton.__version__
    assert result.exit_code(check=True) == 1


def test_cli_check_fails_on_an_expect(monkeypatch, tmp_path):
    monkeypatch.setenv("MILLKERNELS_CSRC", str(tmp_path))  # no CUDA sources: fast
    loop = [
        Expect("loops", "==", 1, "one loop over the blocks"),
        Expect("loop.mufu", ">=", 1, "wrongly expects an exp in the loop"),
        Expect("loop.global_loads", ">=", 1, "loads in the loop"),
    ]
    with use_registry() as reg:
        reg.register_triton(
            "t.scale",
            _scale,
            [TritonVariant({"x_ptr": "*fp32", "n": "i32"}, {"BLOCK": 128}, 4, 1, expect=loop)],
        )
        other = TritonVariant(_DOT_SIG, {"BM": 16, "BN": 16, "BK": 16})
        reg.register_triton("t.other", _dot, [other])
        table = CliRunner().invoke(app, ["analyze", "--check", "--kernel", "scale"])
        as_json = CliRunner().invoke(app, ["analyze", "--format", "json", "--kernel", "t.sc"])
    assert table.exit_code == 1, table.output
    assert "loop.mufu >= 1 (actual 0): wrongly expects an exp in the loop" in table.output
    assert "t.other" not in table.output
    assert as_json.exit_code == 0, as_json.output
    (row,) = json.loads(as_json.stdout)
    assert [e["holds"] for e in row["expect"]] == [True, False, True]
    assert row["metrics"]["loops"] == 1 and row["triton_version"] == triton.__version__
