"""quant.matmul on every backend that can run here, against dequantise-then-fp32 matmul.

Bound (stated per element): ``|out - ref| <= ulp(dtype) / 2 * |ref| + 2**-12 * (|x| @ |W|^T)
+ 1e-6``: one rounding of the output to fp16/bf16 (to nearest, under the interpreter too:
``triton_common.cast``), plus float32 accumulation error, with slack for Hopper's fp8 tensor
cores, which keep fewer accumulator bits (DeepSeek-V3 reports ~14). ``ref`` for fp8 schemes
uses the activations quantised exactly as the kernels quantise them.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from quant_checkpoints import make_gptq

from millkernels import quant, runtime
from millkernels.analyze.core import triton_toolchain_missing
from millkernels.analyze.triton_compile import inexact_f32_ops, ptx_of
from millkernels.dispatch import BackendUnavailable
from millkernels.ops.quant import (
    api,
    capabilities,
    formats,
    reference,
    triton_fp8,
    triton_weight_only,
)
from millkernels.testing import poison

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
HALF_ULP = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}  # relative, at most


def _facts(scheme, dtype=torch.float16, group_size=128, k=256):
    return capabilities.quant_call(torch.device(DEVICE), dtype, scheme, group_size, k, 1)


def _backends(scheme):
    params = []
    for name in quant.TABLE.names():
        why = quant.TABLE.reason(name, _facts(scheme))
        params.append(pytest.param(name, marks=[pytest.mark.skip(reason=why)] if why else []))
    return params


def _skip_unless_served(backend, x, qw):
    """Skip (on the table's facts) a backend that cannot serve this particular call."""
    why = quant.TABLE.reason(backend, api.call_facts(x, qw.scheme, qw.group_size, qw.in_features))
    if why:
        pytest.skip(why)


def assert_matmul_close(out, x, qw, bias=None):
    """Check ``out`` against the float32 reference with the bound in the module docstring."""
    x2 = x.reshape(-1, qw.in_features)
    w = qw.dequantize().to(x.device)
    if qw.is_fp8:
        mode = reference.ACT_MODE[qw.scheme]
        xf = reference.act_dequant(*reference.act_quant(x2, mode), mode)
    else:
        xf = x2.float()
    ref = xf @ w.t()
    if bias is not None:
        ref = ref + bias.float()
    mag = xf.abs() @ w.abs().t()
    o = out.reshape(ref.shape).float()
    assert out.dtype == x.dtype and out.shape == (*x.shape[:-1], qw.out_features)
    assert torch.isfinite(o).all(), "non-finite values (unwritten output?)"
    bound = HALF_ULP[x.dtype] * ref.abs() + 2.0**-12 * mag + 1e-6
    err = (o - ref).abs()
    worst = (err - bound).argmax()
    assert (err <= bound).all(), (
        f"max err {err.max():.3g}; at the worst element err {err.flatten()[worst]:.3g} > "
        f"bound {bound.flatten()[worst]:.3g}"
    )


@pytest.fixture
def poisoned(monkeypatch):
    """Every output/workspace the Triton launchers allocate starts as NaN."""

    def empty(*a, **kw):
        return poison(torch.empty(*a, **kw))

    monkeypatch.setattr(triton_weight_only, "_empty", empty)
    monkeypatch.setattr(triton_fp8, "_empty", empty)


# K, N: not multiples of 128 where the group size allows (K must be a multiple of it)
INT_SHAPES = {32: (224, 72), 64: (320, 40), 128: (384, 136), -1: (200, 72)}


@pytest.mark.parametrize("backend", _backends("w4a16"))
@pytest.mark.parametrize("scheme", ["w4a16", "w8a16"])
@pytest.mark.parametrize("group_size", [32, 64, 128, -1])
@pytest.mark.parametrize("m", [1, 3, 17])
def test_weight_only(backend, scheme, group_size, m, poisoned):
    k, n = INT_SHAPES[group_size]
    dtype = torch.bfloat16 if m == 3 else torch.float16
    symmetric = group_size == 64
    qw = quant.quantize(torch.randn(n, k), scheme, group_size=group_size, symmetric=symmetric)
    qw = qw.to(DEVICE)
    x = torch.randn(m, k, device=DEVICE).to(dtype)
    _skip_unless_served(backend, x, qw)
    bias = torch.randn(n, device=DEVICE).to(dtype) if m == 17 else None
    out = quant.matmul(x, qw, bias, backend=backend)
    assert_matmul_close(out, x, qw, bias)


@pytest.mark.parametrize("split", [1, 2, 3])
@pytest.mark.parametrize("cfg", [0, 1])
def test_weight_only_split_k_and_configs(split, cfg, poisoned):
    """The Triton launcher with forced split-K and tile configs (the autotuner's space)."""
    if quant.TABLE.reason("triton", _facts("w4a16")):
        pytest.skip(quant.TABLE.reason("triton", _facts("w4a16")))
    k, n, m = 512, 80, 5
    qw = quant.quantize(torch.randn(n, k), "w4a16", group_size=64).to(DEVICE)
    x = torch.randn(m, k, device=DEVICE).to(torch.float16)
    config = [
        {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 64, "num_warps": 4, "num_stages": 2},
        {"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 32, "num_warps": 4, "num_stages": 2},
    ][cfg]
    bias = torch.randn(n, device=DEVICE).to(torch.float16)
    out = triton_weight_only.matmul(
        x,
        qw.qweight,
        qw.scales,
        qw.zeros,
        bias,
        bits=4,
        group_size=64,
        n=n,
        split=split,
        config=config,
    )
    assert_matmul_close(out, x, qw, bias)


def test_split_heuristic():
    dev = torch.device("cpu")
    assert triton_weight_only.choose_split(1, 4096, 4096, dev) > 1
    assert triton_weight_only.choose_split(4096, 4096, 4096, dev) == 1
    assert triton_weight_only.choose_split(1, 64, 128, dev) == 1  # K too short to split
    assert [triton_weight_only.m_bucket(m) for m in (1, 2, 3, 17, 4096)] == [1, 2, 4, 32, 256]


FP8_SHAPES = [(1, 136, 200), (3, 72, 256), (17, 130, 197)]  # (m, n, k): partial 128-blocks


@pytest.mark.parametrize("backend", _backends("fp8_block"))
@pytest.mark.parametrize("scheme", list(quant.FP8_SCHEMES))
@pytest.mark.parametrize("shape", FP8_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_fp8(backend, scheme, shape, poisoned):
    m, n, k = shape
    dtype = torch.float16 if m == 3 else torch.bfloat16
    qw = quant.quantize(torch.randn(n, k), scheme).to(DEVICE)
    x = (torch.randn(m, k, device=DEVICE) * 2).to(dtype)
    _skip_unless_served(backend, x, qw)
    x[0, :7] *= 30  # an outlier token slice: per-token/group scales must follow it
    bias = torch.randn(n, device=DEVICE).to(dtype) if m == 17 else None
    out = quant.matmul(x, qw, bias, backend=backend)
    assert_matmul_close(out, x, qw, bias)


@pytest.mark.parametrize("scheme", ["w4a16", "w8a16", "fp8_rowwise"])
def test_bf16_output_rounds_to_nearest(scheme, poisoned):
    """The kernels' float32 -> bf16 output store rounds to nearest, as on a GPU (the Triton
    interpreter's own cast truncates): almost every element equals the float64 product rounded
    to bf16; float32 accumulation moves only values within ~1e-5 of a rounding boundary.
    M = 67 runs without split-K, so the kernel's own store writes the output."""
    m, n, k = 67, 72, 256
    qw = quant.quantize(torch.randn(n, k), scheme, group_size=64).to(DEVICE)
    x = torch.randn(m, k, device=DEVICE).to(torch.bfloat16)
    _skip_unless_served("triton", x, qw)
    out = quant.matmul(x, qw, backend="triton")
    if qw.is_fp8:
        mode = reference.ACT_MODE[scheme]
        xf = reference.act_dequant(*reference.act_quant(x, mode), mode)
    else:
        xf = x.float()
    exact = xf.double() @ qw.dequantize(torch.float64).to(DEVICE).t()
    same = (out == exact.to(torch.bfloat16)).double().mean().item()
    assert same > 0.97, f"only {same:.1%} of the outputs are the exact product rounded to bf16"


@pytest.mark.parametrize("k", [300, 1100])
@pytest.mark.parametrize("mode", ["tensor", "token", "group"])
def test_act_quant_matches_reference_bit_for_bit(mode, k, triton_device):
    """Fused fp8 activation quantisation: the same scales and codes as the reference, also for
    -0.0, values that round to -0.0, ties, and an all-zero token (scale 1). K = 1100: nine
    128-groups, two programs of eight groups, the last group partial."""
    if quant.TABLE.reason("triton", _facts("fp8_rowwise")):
        pytest.skip(quant.TABLE.reason("triton", _facts("fp8_rowwise")))
    x = torch.randn(6, k) * torch.exp(torch.randn(6, k).clamp(-3, 3) * 2)
    x[0, :4] = torch.tensor([-0.0, -1e-9, 1e-9, 0.0])
    x[1] = 0.0
    x = x.to(device=triton_device, dtype=torch.bfloat16)
    q, s = triton_fp8.act_quant(x, mode)
    rq, rs = reference.act_quant(x, mode)
    assert torch.equal(s.view(torch.int32), rs.view(torch.int32)), "scales differ"
    assert torch.equal(q.view(torch.uint8), rq.view(torch.uint8)), "codes differ"


@pytest.mark.skipif(triton_toolchain_missing() is not None, reason="no Triton toolchain")
def test_act_quant_compiles_to_ieee_division_on_sm90():
    """The bit-for-bit match must hold on a GPU: sm_90 PTX divides with ``div.rn.f32``, never
    the approximate forms a plain ``/`` gives (``div.full`` / ``div.approx`` / ``rcp.approx``)."""
    for kernel in ("quant.fp8_act_quant", "quant.fp8_act_quant_groups"):
        for label, ptx in ptx_of(kernel, 90).items():
            assert "div.rn.f32" in ptx, label
            assert not inexact_f32_ops(ptx), f"[{label}]: {inexact_f32_ops(ptx)} in the PTX"


def test_batched_leading_dims_and_act_order():
    """(..., K) inputs; an act-order GPTQ weight (perm) on every usable backend."""
    ckpt = make_gptq(4, 128, 24, 32, act_order=True, v2=True)
    qw = quant.from_gptq(*ckpt["args"], bits=4, group_size=32, checkpoint_format="gptq_v2")
    qw = qw.to(DEVICE)
    x = torch.randn(2, 3, 128, device=DEVICE).to(torch.float16)
    want = x.float() @ ckpt["w"].to(DEVICE).t()
    for backend in quant.TABLE.names():
        if quant.TABLE.reason(backend, api.call_facts(x, "w4a16", 32, 128)):
            continue
        out = quant.matmul(x, qw, backend=backend)
        assert out.shape == (2, 3, 24)
        err = (out.float() - want).abs().max().item()
        assert err <= 2.0**-10 * want.abs().max().item() + 1e-3, (backend, err)


def test_zero_rows():
    qw = quant.quantize(torch.randn(16, 64), "w4a16", group_size=32).to(DEVICE)
    x = torch.empty(0, 64, device=DEVICE, dtype=torch.float16)
    assert quant.matmul(x, qw).shape == (0, 16)


# ------------------------------------------------------------------ fp8 GEMM kernels

FP8_MODES = {"fp8_tensor": 0, "fp8_rowwise": 1, "fp8_block": 2}
#: (kernels, config): the interpreter-sized tiles of each kernel; HALVES=2 is the two-half
#: column tile (128x256 on a GPU), each half with its own B block scale (halves128: two
#: 128-column blocks per tile, the last tile's second half past N)
FP8_KERNEL_CASES = {
    "current": dict(triton_fp8.INTERPRET_CONFIG),
    "current-halves": {**triton_fp8.INTERPRET_CONFIG, "HALVES": 2},
    "current-halves128": {**triton_fp8.INTERPRET_CONFIG, "BLOCK_N": 128, "HALVES": 2},
    "legacy": dict(triton_fp8.INTERPRET_CONFIG),
    "tma": dict(triton_fp8.INTERPRET_TMA_CONFIG),
}


def _fp8_case(scheme, m, n, k, bias=False):
    """(x, qw, xq, xs, bias) for the fp8 GEMM launcher, on the Triton device."""
    qw = quant.quantize(torch.randn(n, k), scheme).to(DEVICE)
    x = (torch.randn(m, k, device=DEVICE) * 2).to(torch.bfloat16)
    x[0, :5] *= 40  # an outlier slice: row and block scales must follow it
    xq, xs = triton_fp8.act_quant(x, reference.ACT_MODE[scheme])
    b = torch.randn(n, device=DEVICE).to(torch.bfloat16) if bias else None
    return x, qw, xq, xs, b


def _skip_unless_fp8_triton(kernels="current"):
    why = quant.TABLE.reason("triton", _facts("fp8_block"))
    if why:
        pytest.skip(why)
    if kernels == "tma" and DEVICE == "cuda" and torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("the TMA kernel needs sm_90")


def _gemm(case, scheme, kernels, config, split=None):
    _, qw, xq, xs, b = case
    return triton_fp8.gemm(
        xq, xs, qw.qweight, qw.scales, b, torch.bfloat16, FP8_MODES[scheme], config,
        kernels=kernels.split("-")[0], split=split,
    )  # fmt: skip


@pytest.mark.parametrize("scheme", list(FP8_MODES))
@pytest.mark.parametrize("kernels", list(FP8_KERNEL_CASES))
@pytest.mark.parametrize(
    "shape", [(1, 136, 208), (17, 130, 384), (6, 300, 256)], ids=lambda s: "x".join(map(str, s))
)
def test_fp8_gemm_kernels(scheme, kernels, shape, poisoned):
    """Every fp8 GEMM (current, its two-half tiles, legacy, persistent TMA) on odd M/N, M = 1,
    K not a multiple of 128 (208: TMA needs K a multiple of 16), with and without bias."""
    _skip_unless_fp8_triton(kernels)
    m, n, k = shape
    case = _fp8_case(scheme, m, n, k, bias=m == 17)
    out = _gemm(case, scheme, kernels, FP8_KERNEL_CASES[kernels], split=1)
    assert_matmul_close(out, case[0], case[1], case[4])


@pytest.mark.parametrize("scheme", list(FP8_MODES))
@pytest.mark.parametrize("split", [2, 3, 4])
def test_fp8_split_k(scheme, split, poisoned):
    """Split K (K = 5 blocks of 128 plus 72: uneven splits, and an empty one at split 4): the
    bound holds, equals no split within float32 accumulation error, and two runs are bitwise
    equal (the partials are summed in split order). Bias is added once."""
    _skip_unless_fp8_triton()
    m, n, k = 3, 72, 712
    case = _fp8_case(scheme, m, n, k, bias=True)
    cfg = FP8_KERNEL_CASES["current"]
    one = _gemm(case, scheme, "current", cfg, split=1)
    out = _gemm(case, scheme, "current", cfg, split=split)
    assert_matmul_close(out, case[0], case[1], case[4])
    assert torch.equal(out, _gemm(case, scheme, "current", cfg, split=split)), "not deterministic"
    tol = 2.0**-7 * one.float().abs() + 1e-3  # one bf16 rounding apart at most, plus fp32 noise
    assert ((out.float() - one.float()).abs() <= tol).all()


def test_fp8_legacy_equals_current(poisoned):
    """The legacy and current block-scale GEMMs agree (both float32 accumulation; they differ
    in how the scales are multiplied, so within one bf16 rounding)."""
    _skip_unless_fp8_triton()
    case = _fp8_case("fp8_block", 9, 200, 300)
    cfg = FP8_KERNEL_CASES["current"]
    cur = _gemm(case, "fp8_block", "current", cfg, split=1)
    old = _gemm(case, "fp8_block", "legacy", cfg)
    tol = 2.0**-7 * old.float().abs() + 1e-3
    assert ((cur.float() - old.float()).abs() <= tol).all()


def test_fp8_choose_split():
    """The stated rule: M > 64 never splits; else fill the SMs once with 64 x 128 output tiles,
    at least four 128-wide K blocks per split, a power of two, at most 16."""
    split = triton_fp8.choose_split
    assert split(65, 4096, 4096, 132) == 1
    assert split(1, 4096, 4096, 132) == 4  # 32 tiles: 132 // 32 = 4
    assert split(1, 6144, 4096, 132) == 2  # 48 tiles
    assert split(1, 28672, 4096, 132) == 1  # 224 tiles fill the SMs already
    assert split(16, 1024, 8192, 132) == 16  # 8 tiles: 16 capped by 64 K blocks // 4 and 16
    assert split(1, 1024, 512, 132) == 1  # 4 K blocks: one split's worth
    assert split(1, 128, 1024, 132) == 2  # 8 K blocks // 4


@pytest.mark.parametrize("kernels", ["legacy", "tma"])
def test_fp8_kernel_switch(kernels, monkeypatch, poisoned):
    """MILLKERNELS_FP8_KERNELS selects the GEMM for quant.matmul; info shows the choice."""
    _skip_unless_fp8_triton(kernels)
    monkeypatch.setenv(capabilities.FP8_KERNELS_ENV, kernels)
    assert capabilities.fp8_kernels() == kernels
    name = f"fp8 GEMM kernels ({capabilities.FP8_KERNELS_ENV})"
    assert quant.TABLE.choices()[name].startswith(kernels)
    qw = quant.quantize(torch.randn(40, 256), "fp8_block").to(DEVICE)
    x = torch.randn(5, 256, device=DEVICE).to(torch.bfloat16)
    assert_matmul_close(quant.matmul(x, qw, backend="triton"), x, qw)


def test_fp8_kernel_switch_bad_values(monkeypatch):
    monkeypatch.setenv(capabilities.FP8_KERNELS_ENV, "fast")
    with pytest.raises(ValueError, match="MILLKERNELS_FP8_KERNELS: expected one of current"):
        capabilities.fp8_kernels()
    assert "expected one of" in quant.TABLE.choices()["fp8 GEMM kernels (MILLKERNELS_FP8_KERNELS)"]
    monkeypatch.delenv(capabilities.FP8_KERNELS_ENV)
    assert capabilities.fp8_kernels() == "current"
    _skip_unless_fp8_triton()
    case = _fp8_case("fp8_rowwise", 2, 16, 200)  # K = 200: rows not 16-byte aligned
    with pytest.raises(ValueError, match="x: the TMA fp8 kernel needs 16-byte aligned"):
        _gemm(case, "fp8_rowwise", "tma", None)
    with pytest.raises(ValueError, match="split: expected 1..16"):
        _gemm(case, "fp8_rowwise", "current", None, split=17)


# ------------------------------------------------------------------ bad input


def test_matmul_bad_input():
    qw = quant.quantize(torch.randn(16, 64), "w4a16", group_size=32).to(DEVICE)
    x = torch.randn(2, 64, device=DEVICE)
    with pytest.raises(TypeError, match="x: expected float16 or bfloat16"):
        quant.matmul(x, qw)
    with pytest.raises(ValueError, match="x: expected"):
        quant.matmul(torch.randn(2, 63, device=DEVICE).half(), qw)
    with pytest.raises(TypeError, match="qweight"):
        quant.matmul(x.half(), torch.randn(16, 64))
    with pytest.raises(TypeError, match="x"):
        quant.matmul(x.half().tolist(), qw)
    with pytest.raises(ValueError, match="bias"):
        quant.matmul(x.half(), qw, torch.randn(15, device=DEVICE))
    with pytest.raises(ValueError, match="backend"):
        quant.matmul(x.half(), qw, backend="cutlass")
    with pytest.raises(BackendUnavailable, match="cuda"):
        quant.matmul(x.half(), qw, backend="cuda")


def _repack_8bit(qw):
    return formats.pack(formats.unpack(qw.qweight, 4, qw.in_features), 8)


TAMPER = [  # (scheme, field, new value from the weight, error, message)
    ("w4a16", "scales", lambda qw: qw.scales[:, :-1].contiguous(), ValueError, "scales: exp"),
    ("w4a16", "scales", lambda qw: qw.scales.double(), ValueError, "scales: expected a float"),
    ("w4a16", "scales", lambda qw: qw.scales.t().contiguous().t(), ValueError, "contiguous"),
    ("w4a16", "scales", lambda qw: qw.scales.tolist(), TypeError, "scales: expected a torch"),
    (
        "w4a16",
        "qweight",
        _repack_8bit,
        ValueError,
        r"qweight: expected int32 \(8, 24\), got torch.int32 \(16",
    ),
    ("w4a16", "qweight", lambda qw: qw.qweight.long(), ValueError, "qweight: expected int32"),
    ("w4a16", "zeros", lambda qw: qw.zeros[:1].contiguous(), ValueError, "zeros: expected"),
    ("w4a16", "zeros", lambda qw: qw.zeros.float(), ValueError, "zeros: expected uint8"),
    ("w4a16", "perm", lambda qw: torch.arange(63), ValueError, r"perm: expected int64 \(64,\)"),
    ("w4a16", "group_size", lambda qw: 48, ValueError, "group_size"),
    ("fp8_rowwise", "scales", lambda qw: qw.scales[:-1].contiguous(), ValueError, "scales: exp"),
    ("fp8_block", "scales", lambda qw: qw.scales.half(), ValueError, "scales: expected float32"),
    ("fp8_tensor", "qweight", lambda qw: qw.qweight.half(), ValueError, "qweight: expected fl"),
]


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize(
    "scheme, field, value, exc, match",
    TAMPER,
    ids=[f"{t[0]}-{t[1]}-{i}" for i, t in enumerate(TAMPER)],
)
def test_matmul_refuses_a_tampered_weight(backend, scheme, field, value, exc, match):
    """A field reassigned after the weight was built (wrong shape, dtype, packing, layout) is
    refused by every matmul, naming the field, before any kernel reads it."""
    qw = quant.quantize(torch.randn(24, 64), scheme, group_size=32).to(DEVICE)
    x = torch.randn(3, 64, device=DEVICE).to(torch.float16)
    _skip_unless_served(backend, x, qw)
    setattr(qw, field, value(qw))
    with pytest.raises(exc, match=match):
        quant.matmul(x, qw, backend=backend)


def _fields(qw, **change):
    return {**{k: getattr(qw, k) for k in ("scheme", "shape", "group_size", "symmetric")},
            **qw.tensors(), **change}  # fmt: skip


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("scheme", ["w4a16", "fp8_block"])
def test_nonfinite_scales_are_refused_when_a_weight_is_built_or_loaded(bad, scheme):
    """Scales are checked for NaN/Inf once, where a weight is made: the constructor, .to(),
    from_state_dict and QuantLinear.load_state_dict (not per matmul: no GPU sync there)."""
    qw = quant.quantize(torch.randn(24, 256), scheme, group_size=32)
    scales = qw.scales.clone()
    scales.view(-1)[-1] = bad
    with pytest.raises(ValueError, match="scales: NaN or Inf"):
        quant.QuantizedWeight(**_fields(qw, scales=scales))
    sd = {**qw.state_dict(), "scales": scales}
    with pytest.raises(ValueError, match="scales: NaN or Inf"):
        quant.QuantizedWeight.from_state_dict(sd)
    layer = quant.QuantLinear(qw)
    with pytest.raises(ValueError, match="scales: NaN or Inf"):
        layer.load_state_dict(sd)
    qw.scales = scales  # reassigned after the checks: caught by the next one (a device move)
    with pytest.raises(ValueError, match="scales: NaN or Inf"):
        qw.to(DEVICE)


def test_zero_points_and_perm_values_are_checked():
    """Zero points outside [0, 2**bits) and a perm that is no permutation: refused when built."""
    ckpt = make_gptq(4, 128, 24, 32, act_order=True, v2=True)
    qw = quant.from_gptq(*ckpt["args"], bits=4, group_size=32, checkpoint_format="gptq_v2")
    zeros = qw.zeros.clone()
    zeros[1, 2] = 16
    with pytest.raises(ValueError, match=r"zeros: zero points must lie in \[0, 16\)"):
        quant.QuantizedWeight(**_fields(qw, zeros=zeros))
    perm = qw.perm.clone()
    perm[3] = perm[4]
    with pytest.raises(ValueError, match="perm: expected a permutation of 0..127"):
        quant.QuantizedWeight(**_fields(qw, perm=perm))
    assert quant.QuantizedWeight(**_fields(qw)).shape == qw.shape  # the untouched fields pass


def test_fp8_refused_below_sm89(monkeypatch):
    """An fp8 scheme on a GPU below compute capability 8.9: a ValueError naming qweight (the
    capability is faked: the check runs on the facts, before any launch)."""
    from millkernels.ops.quant import api

    on_sm80 = {"device": "cuda", "capability": (8, 0)}
    facts = dataclasses.replace(_facts("fp8_rowwise"), **on_sm80)
    for backend in quant.TABLE.names():
        assert "8.9" in quant.TABLE.spec(backend).serves(facts)
    assert quant.TABLE.reason("reference", dataclasses.replace(facts, scheme="w4a16")) is None
    real = api.quant_call
    monkeypatch.setattr(api, "quant_call", lambda *a: dataclasses.replace(real(*a), **on_sm80))
    qw = quant.quantize(torch.randn(16, 64), "fp8_rowwise")
    with pytest.raises(ValueError, match=r"qweight: fp8_rowwise needs fp8 \(compute capability"):
        quant.matmul(torch.randn(2, 64).half(), qw)
    assert capabilities.FP8_MIN_CAPABILITY == (8, 9)


# ------------------------------------------------------------------ GPU-only


@pytest.mark.gpu
@pytest.mark.parametrize("scheme", ["w4a16", "w8a16"])
@pytest.mark.parametrize("m", [1, 16, 64, 300])
def test_weight_only_gpu_autotuned(scheme, m):
    """The autotuned path at LLM-like sizes on a GPU."""
    qw = quant.quantize(torch.randn(1024, 2048, device="cuda"), scheme, group_size=128)
    x = torch.randn(m, 2048, device="cuda", dtype=torch.bfloat16)
    assert_matmul_close(quant.matmul(x, qw, backend="triton"), x, qw)


@pytest.mark.sm90
@pytest.mark.parametrize("scheme", list(quant.FP8_SCHEMES))
@pytest.mark.parametrize("m", [1, 64, 1000])
def test_fp8_hopper(scheme, m):
    """Autotuned fp8 GEMMs on Hopper; activation quantisation bit-equal to the reference."""
    qw = quant.quantize(torch.randn(1024, 1536, device="cuda"), scheme)
    x = torch.randn(m, 1536, device="cuda", dtype=torch.bfloat16)
    mode = reference.ACT_MODE[scheme]
    q, s = triton_fp8.act_quant(x, mode)
    rq, rs = reference.act_quant(x, mode)
    assert torch.equal(s, rs) and torch.equal(q.view(torch.uint8), rq.view(torch.uint8))
    assert_matmul_close(quant.matmul(x, qw, backend="triton"), x, qw)


@pytest.mark.sm90
@pytest.mark.parametrize("kernels", ["legacy", "tma"])
@pytest.mark.parametrize("m", [1, 1000])
def test_fp8_block_hopper_kernels(kernels, m, monkeypatch):
    """The legacy and TMA block-scale GEMMs, autotuned on Hopper (MILLKERNELS_FP8_KERNELS)."""
    monkeypatch.setenv(capabilities.FP8_KERNELS_ENV, kernels)
    qw = quant.quantize(torch.randn(1024, 1536, device="cuda"), "fp8_block")
    x = torch.randn(m, 1536, device="cuda", dtype=torch.bfloat16)
    assert_matmul_close(quant.matmul(x, qw, backend="triton"), x, qw)


@pytest.mark.sm90
@pytest.mark.parametrize("scheme", list(FP8_MODES))
def test_fp8_split_k_hopper(scheme):
    """Autotuned split K at M = 2 on Hopper: the bound, bitwise repeatable, near no split."""
    m, n, k = 2, 1024, 4096
    case = _fp8_case(scheme, m, n, k, bias=True)
    out = _gemm(case, scheme, "current", None)  # choose_split: 132 SMs // 8 tiles -> 8
    assert triton_fp8.choose_split(m, n, k, runtime.device_sms(out.device)) > 1
    assert_matmul_close(out, case[0], case[1], case[4])
    assert torch.equal(out, _gemm(case, scheme, "current", None))
    one = _gemm(case, scheme, "current", None, split=1)
    assert ((out.float() - one.float()).abs() <= 2.0**-7 * one.float().abs() + 1e-3).all()
