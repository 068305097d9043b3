"""Quantised formats: packing, quantisation quality (SQNR), serialisation, GPTQ/AWQ import,
bad input. Reference-only (no kernels), on the CPU."""

from __future__ import annotations

import math
import re

import pytest
import torch
from quant_checkpoints import make_gptq, pack_cols, pack_rows, v2_to_v1

from millkernels import quant
from millkernels.ops.quant import formats
from millkernels.testing import sqnr_db

# ------------------------------------------------------------------ packing


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("k", [1, 7, 64, 131])
def test_pack_layout_and_round_trip(bits, k):
    per = 32 // bits
    q = torch.randint(0, 1 << bits, (k, 5), dtype=torch.int32)
    words = formats.pack(q, bits)
    assert words.dtype == torch.int32 and tuple(words.shape) == (math.ceil(k / per), 5)
    # independent read of the layout: feature k sits in bits (k % per) * bits of word k // per
    u = words.to(torch.int64) & 0xFFFFFFFF
    for kk in (0, k // 2, k - 1):
        got = (u[kk // per] >> ((kk % per) * bits)) & ((1 << bits) - 1)
        assert torch.equal(got.to(torch.int32), q[kk])
    assert torch.equal(formats.unpack(words, bits, k), q)


# ------------------------------------------------------------------ quantisation quality

SQNR_FLOORS = {  # required SQNR, dB, on standard-normal 4096x4096 weights
    ("w4a16", False): 19.5,
    ("w8a16", False): 43.0,
    ("fp8_tensor", False): 30.0,
    ("fp8_rowwise", False): 30.0,
    ("fp8_block", False): 30.0,
}


@pytest.fixture(scope="module")
def big_weight() -> torch.Tensor:
    return torch.randn(4096, 4096)


@pytest.mark.parametrize("scheme", list(formats.SCHEMES))
def test_sqnr_floor(scheme, big_weight):
    qw = quant.quantize(big_weight, scheme, group_size=128)
    db = sqnr_db(big_weight, qw.dequantize())
    floor = SQNR_FLOORS[(scheme, False)]
    print(f"SQNR {scheme} g128: {db:.2f} dB (floor {floor})")
    assert db >= floor, f"{scheme}: SQNR {db:.2f} dB < {floor} dB"


@pytest.mark.parametrize("scheme", ["w4a16", "w8a16"])
@pytest.mark.parametrize("group_size", [32, 64, 128, -1])
@pytest.mark.parametrize("symmetric", [False, True])
def test_quantize_is_round_to_nearest(scheme, group_size, symmetric):
    n, k = 24, 256
    w = torch.randn(n, k) * 0.05
    qw = quant.quantize(w, scheme, group_size=group_size, symmetric=symmetric)
    g = k if group_size == -1 else group_size
    assert qw.group_size == g and tuple(qw.scales.shape) == (k // g, n)
    assert (qw.zeros is None) == symmetric
    deq = qw.dequantize()
    # each value is within half a step of its group's scale (nothing clipped: min-max ranges)
    step = qw.scales.float().repeat_interleave(g, 0).t()
    assert ((deq - w).abs() <= 0.5 * step * (1 + 1e-5) + 1e-7).all()


def test_quantize_bf16_and_tiny_scales():
    w = torch.randn(8, 64, dtype=torch.bfloat16)
    assert quant.quantize(w, "w4a16", group_size=32).scales.dtype == torch.bfloat16
    tiny = torch.randn(8, 64) * 1e-7  # scales below fp16's normal range go to bf16
    qw = quant.quantize(tiny, "w8a16", group_size=32)
    assert qw.scales.dtype == torch.bfloat16
    assert sqnr_db(tiny, qw.dequantize()) > 40
    zeros = torch.zeros(4, 32)
    assert torch.equal(quant.quantize(zeros, "w4a16", group_size=32).dequantize(), zeros)
    assert torch.equal(quant.quantize(zeros, "fp8_block").dequantize(), zeros)


@pytest.mark.parametrize("scheme", list(formats.FP8_SCHEMES))
def test_fp8_layout(scheme):
    n, k = 130, 200  # partial 128-blocks
    w = torch.randn(n, k)
    w[3] *= 40  # one loud row: rowwise/block scales must follow it
    qw = quant.quantize(w, scheme)
    assert qw.qweight.dtype == torch.float8_e4m3fn and tuple(qw.qweight.shape) == (n, k)
    want = {"fp8_tensor": (1,), "fp8_rowwise": (n,), "fp8_block": (2, 2)}[scheme]
    assert tuple(qw.scales.shape) == want and qw.scales.dtype == torch.float32
    assert qw.qweight.float().abs().max() <= 448
    assert sqnr_db(w, qw.dequantize()) > 28


# ------------------------------------------------------------------ serialisation


@pytest.mark.parametrize(
    "scheme,kw",
    [
        ("w4a16", {"group_size": 64}),
        ("w8a16", {"group_size": -1, "symmetric": True}),
        ("fp8_block", {}),
        ("fp8_rowwise", {}),
    ],
)
def test_state_dict_safetensors_round_trip(tmp_path, scheme, kw):
    from safetensors.torch import load_file, save_file

    qw = quant.quantize(torch.randn(40, 192), scheme, **kw)
    path = tmp_path / "w.safetensors"
    save_file(qw.state_dict(), str(path))
    back = quant.QuantizedWeight.from_state_dict(load_file(str(path)))
    assert (back.scheme, back.shape, back.group_size, back.symmetric) == (
        qw.scheme,
        qw.shape,
        qw.group_size,
        qw.symmetric,
    )
    for name, t in qw.tensors().items():
        assert torch.equal(back.tensors()[name].view(torch.uint8), t.view(torch.uint8)), name
    assert torch.equal(back.dequantize(), qw.dequantize())


def test_act_order_state_dict_round_trip(tmp_path):
    from safetensors.torch import load_file, save_file

    ckpt = make_gptq(bits=4, k=128, n=16, gsz=32, act_order=True, v2=True)
    qw = quant.from_gptq(*ckpt["args"], bits=4, group_size=32, checkpoint_format="gptq_v2")
    save_file(qw.state_dict(), str(tmp_path / "a.safetensors"))
    back = quant.QuantizedWeight.from_state_dict(load_file(str(tmp_path / "a.safetensors")))
    assert back.perm is not None and torch.equal(back.dequantize(), ckpt["w"])


def test_from_state_dict_rejects_garbage():
    qw = quant.quantize(torch.randn(8, 64), "w4a16", group_size=32)
    sd = qw.state_dict()
    with pytest.raises(ValueError, match="missing"):
        quant.QuantizedWeight.from_state_dict({"qweight": sd["qweight"]})
    sd["scales"] = sd["scales"][:1]
    with pytest.raises(ValueError, match="scales"):
        quant.QuantizedWeight.from_state_dict(sd)


def test_to_device_keeps_metadata():
    qw = quant.quantize(torch.randn(8, 64), "w8a16", group_size=32)
    moved = qw.to("cpu")
    assert moved.scheme == qw.scheme and torch.equal(moved.dequantize(), qw.dequantize())


# ------------------------------------------------------------------ GPTQ / AWQ import
# The test packs its own checkpoints, bit by bit, from a known integer matrix.


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("v2", [False, True], ids=["gptq", "gptq_v2"])
@pytest.mark.parametrize("act_order", [False, True], ids=["sorted", "act_order"])
def test_from_gptq(bits, v2, act_order):
    k, n, gsz = 256, 48, 64
    ckpt = make_gptq(bits, k, n, gsz, act_order, v2)
    qw = quant.from_gptq(
        *ckpt["args"],
        bits=bits,
        group_size=gsz,
        checkpoint_format="gptq_v2" if v2 else "gptq",
    )
    assert qw.scheme == f"w{bits}a16" and qw.shape == (n, k)
    assert (qw.perm is not None) == act_order
    assert torch.equal(qw.dequantize(), ckpt["w"])


def test_from_gptq_v1_zero_point_zero_borrows():
    """GPTQModel writes v1 qzeros as ``v2 - 0x11111111`` per 32-bit word: a zero point 0
    borrows from the next field. Read per field (+1 each) the neighbours came back wrong
    ([16, 4, 3, 15, 7, 16, 8, 1] for these); read per word they are the zero points again."""
    z = torch.tensor([[0, 5, 3, 15, 7, 0, 9, 1]], dtype=torch.int32)
    v1 = v2_to_v1(pack_cols(z, 4, list(range(8))), 4)
    q = torch.randint(0, 16, (32, 8), dtype=torch.int32)
    qw = quant.from_gptq(pack_rows(q, 4), v1, torch.ones(1, 8, dtype=torch.float16), group_size=-1)
    assert qw.zero_points().tolist() == z.tolist()


@pytest.mark.parametrize("bits", [4, 8])
def test_from_gptq_v1_and_v2_dequantise_identically(bits):
    """Random zero points, 0 and 2**bits - 1 at every field position of a word (so borrows
    start, chain and wrap past the top field): v1 and v2 layers give the same weight."""
    per, k, gsz = 32 // bits, 128, 32
    groups, n = k // gsz, 4 * per
    z = torch.randint(0, 1 << bits, (groups, n), dtype=torch.int32)
    z[0, :per] = 0  # every field of a word 0: the borrow runs through the whole word
    z[1, :per] = (1 << bits) - 1
    for pos in range(per):  # a 0 and a max at each position, random neighbours
        z[2, per + pos] = 0
        z[3, 2 * per + pos] = (1 << bits) - 1
    q = torch.randint(0, 1 << bits, (k, n), dtype=torch.int32)
    scales = (torch.rand(groups, n) * 0.02 + 0.001).to(torch.float16)
    qweight, v2 = pack_rows(q, bits), pack_cols(z, bits, list(range(per)))
    kw = dict(bits=bits, group_size=gsz)
    a = quant.from_gptq(qweight, v2, scales, **kw, checkpoint_format="gptq_v2")
    b = quant.from_gptq(qweight, v2_to_v1(v2, bits), scales, **kw, checkpoint_format="gptq")
    assert torch.equal(a.zero_points(), z) and torch.equal(b.zero_points(), z)
    assert torch.equal(a.dequantize(), b.dequantize())


def test_from_gptq_no_g_idx_matches_sorted_g_idx():
    ckpt = make_gptq(4, 128, 16, 32, act_order=False, v2=False)
    qweight, qzeros, scales, _ = ckpt["args"]
    qw = quant.from_gptq(qweight, qzeros, scales, None, bits=4, group_size=32)
    assert qw.perm is None and torch.equal(qw.dequantize(), ckpt["w"])


def test_from_awq():
    k, n, gsz = 128, 64, 32
    groups = k // gsz
    q = torch.randint(0, 16, (k, n), dtype=torch.int32)
    z = torch.randint(0, 16, (groups, n), dtype=torch.int32)
    scales = (torch.rand(groups, n) * 0.02 + 0.001).to(torch.float16)
    order = [0, 2, 4, 6, 1, 3, 5, 7]
    qw = quant.from_awq(pack_cols(q, 4, order), pack_cols(z, 4, order), scales, group_size=gsz)
    g = torch.arange(k) // gsz
    want = ((q - z[g]).float() * scales.float()[g]).t()
    assert qw.scheme == "w4a16" and qw.shape == (n, k)
    assert torch.equal(qw.dequantize(), want)
    # the nibble order matters: plain order gives a different matrix
    plain = quant.from_awq(
        pack_cols(q, 4, list(range(8))), pack_cols(z, 4, order), scales, group_size=gsz
    )
    assert not torch.equal(plain.dequantize(), want)


# ------------------------------------------------------------------ bad input


def test_quantize_bad_input():
    w = torch.randn(8, 64)
    with pytest.raises(ValueError, match="scheme"):
        quant.quantize(w, "w3a16")
    with pytest.raises(TypeError, match="scheme"):
        quant.quantize(w, 4)
    with pytest.raises(TypeError, match="weight"):
        quant.quantize(w.numpy(), "w4a16")
    with pytest.raises(TypeError, match="weight"):
        quant.quantize(w.to(torch.int32), "w4a16")
    with pytest.raises(ValueError, match="weight"):
        quant.quantize(torch.randn(64), "w4a16")
    with pytest.raises(ValueError, match="group_size"):
        quant.quantize(w, "w4a16", group_size=48)
    with pytest.raises(ValueError, match="group_size"):
        quant.quantize(w, "w8a16", group_size=0)
    with pytest.raises(TypeError, match="group_size"):
        quant.quantize(w, "w8a16", group_size=32.0)


@pytest.mark.parametrize("scheme", list(formats.SCHEMES))
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_quantize_names_the_nonfinite_row(scheme, bad):
    w = torch.randn(8, 64)
    w[5, 17] = bad
    with pytest.raises(ValueError, match=r"weight: NaN or Inf in row\(s\) \[5\]"):
        quant.quantize(w, scheme, group_size=32)


@pytest.mark.parametrize(
    "scheme, symmetric",
    [("w4a16", False), ("w4a16", True), ("w8a16", False), ("w8a16", True)],
)
def test_quantize_refuses_scales_that_overflow_float16(scheme, symmetric):
    """Finite float32 weights x 1e7 need scales above float16's 65504 (x 1e6 already at 4
    bits): a ValueError with the largest |weight|, not inf scales (dequantised: inf and NaN)."""
    w = torch.randn(8, 64) * 1e7
    amax = re.escape(f"{float(w.abs().max()):.4g}")
    with pytest.raises(
        ValueError, match=rf"weight: max \|weight\| = {amax} .* float16's largest 65504"
    ):
        quant.quantize(w, scheme, group_size=32, symmetric=symmetric)
    # as bfloat16 the same weight gets bfloat16 scales, which hold them
    qw = quant.quantize(w.bfloat16(), scheme, group_size=32, symmetric=symmetric)
    assert qw.scales.dtype == torch.bfloat16 and torch.isfinite(qw.dequantize()).all()


@pytest.mark.parametrize("scheme", list(formats.SCHEMES))
def test_quantize_refuses_float64_weights_beyond_float32(scheme):
    """Scales are float32 (fp8) or computed in float32: a finite float64 weight of 1e300 has
    none; refused with its magnitude."""
    w = torch.randn(8, 64, dtype=torch.float64)
    w[3, 5] = 1e300
    with pytest.raises(ValueError, match=r"weight: max \|weight\| = 1e\+300"):
        quant.quantize(w, scheme, group_size=32)


def test_from_gptq_bad_input():
    ckpt = make_gptq(4, 128, 16, 32, act_order=False, v2=False)
    qweight, qzeros, scales, g_idx = ckpt["args"]
    with pytest.raises(ValueError, match="bits"):
        quant.from_gptq(qweight, qzeros, scales, bits=3, group_size=32)
    with pytest.raises(ValueError, match="qzeros"):  # 8-bit reading of 4-bit zeros
        quant.from_gptq(qweight, qzeros, scales, bits=8, group_size=32)
    with pytest.raises(ValueError, match="qzeros"):
        quant.from_gptq(qweight, qzeros[:2], scales, group_size=32)
    with pytest.raises(ValueError, match="scales"):
        quant.from_gptq(qweight, qzeros, scales[:, :8], group_size=32)
    with pytest.raises(TypeError, match="qweight"):
        quant.from_gptq(qweight.float(), qzeros, scales, group_size=32)
    with pytest.raises(ValueError, match="group_size"):
        quant.from_gptq(qweight, qzeros, scales, group_size=48)
    with pytest.raises(ValueError, match="g_idx"):
        quant.from_gptq(qweight, qzeros, scales, g_idx[:-1], group_size=32)
    lopsided = g_idx.clone()
    lopsided[0] = 1  # group 0 now holds 31 features, group 1 holds 33
    with pytest.raises(ValueError, match="g_idx"):
        quant.from_gptq(qweight, qzeros, scales, lopsided, group_size=32)
    with pytest.raises(ValueError, match="checkpoint_format"):
        quant.from_gptq(qweight, qzeros, scales, group_size=32, checkpoint_format="exl2")
    nan_scales = scales.clone()
    nan_scales[0, 0] = float("nan")
    with pytest.raises(ValueError, match="scales"):
        quant.from_gptq(qweight, qzeros, nan_scales, group_size=32)


def test_from_awq_bad_input():
    qweight = torch.zeros((64, 4), dtype=torch.int32)
    qzeros = torch.zeros((2, 4), dtype=torch.int32)
    scales = torch.ones((2, 32), dtype=torch.float16)
    assert quant.from_awq(qweight, qzeros, scales, group_size=32).shape == (32, 64)
    with pytest.raises(ValueError, match="qzeros"):
        quant.from_awq(qweight, qzeros[:1], scales, group_size=32)
    with pytest.raises(ValueError, match="scales"):
        quant.from_awq(qweight, qzeros, scales[:, :16], group_size=32)
    with pytest.raises(ValueError, match="group_size"):
        quant.from_awq(qweight, qzeros, scales, group_size=24)
    with pytest.raises(TypeError, match="qzeros"):
        quant.from_awq(qweight, qzeros.to(torch.int64), scales, group_size=32)
