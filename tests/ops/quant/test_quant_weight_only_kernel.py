"""The Triton weight-only kernel's parts: the magic-number dequantisation (exact for every code
and zero point), the split-K reduction inside the kernel (deterministic, counters left 0), and
the ``legacy`` variant kept for comparison. Results against the dequantise-then-fp32 reference
(``test_quant_matmul.assert_matmul_close``), into poisoned outputs and workspaces."""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl
from test_quant_matmul import assert_matmul_close

from millkernels import quant
from millkernels.ops.quant import capabilities, triton_weight_only
from millkernels.ops.quant.triton_weight_only import _dequant
from millkernels.testing import poison

DTYPES = [torch.float16, torch.bfloat16]


@pytest.fixture
def poisoned(monkeypatch):
    """Every output and workspace the launcher allocates starts as NaN."""

    def empty(*a, **kw):
        return poison(torch.empty(*a, **kw))

    monkeypatch.setattr(triton_weight_only, "_empty", empty)


@triton.jit
def _dequant_kernel(q_ptr, z_ptr, out_ptr, BITS: tl.constexpr, LEGACY: tl.constexpr):
    """out[i, j] = q[i] - z[j] through the kernel's dequantisation, for every code pair."""
    R: tl.constexpr = 1 << BITS
    q = tl.load(q_ptr + tl.arange(0, R))[:, None] + tl.zeros((R, R), tl.int32)
    z = tl.load(z_ptr + tl.arange(0, R))
    w = _dequant(q, z, BITS, out_ptr.dtype.element_ty, LEGACY)
    offs = tl.arange(0, R)[:, None] * R + tl.arange(0, R)[None, :]
    tl.store(out_ptr + offs, w)


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("dtype", DTYPES)
def test_dequant_is_exact_for_every_code_and_zero_point(triton_device, dtype, bits, legacy):
    r = 1 << bits
    codes = torch.arange(r, dtype=torch.int32, device=triton_device)
    out = poison(torch.empty((r, r), dtype=dtype, device=triton_device))
    _dequant_kernel[(1,)](codes, codes, out, BITS=bits, LEGACY=legacy)
    want = (codes[:, None] - codes[None, :]).to(dtype)  # |q - z| <= 255: exact in both dtypes
    assert torch.equal(want.float(), (codes[:, None] - codes[None, :]).float())
    assert torch.equal(out, want)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("dtype", DTYPES)
def test_magic_numbers_in_the_dtype_arithmetic(dtype, bits):
    """The compiled kernel's arithmetic, in torch (IEEE subtraction, rounded to nearest like
    the GPU's): 2**m + v built from the bits, minus 2**m + zero, is exactly v - zero. Under the
    interpreter bf16 subtraction goes through float32 (``triton_common.sub``), so this is the
    check of what the GPU computes in bf16."""
    r = 1 << bits
    q = torch.arange(r, dtype=torch.int32)
    if dtype == torch.float16:
        magic, fdt, idt = 0x6400, torch.float16, torch.int16
    elif bits == 4:
        magic, fdt, idt = 0x4300, torch.bfloat16, torch.int16
    else:  # bf16 at 8 bits: float32 2**23, then a cast
        magic, fdt, idt = 0x4B000000, torch.float32, torch.int32
    v = (q | magic).to(idt).view(fdt)
    assert torch.equal(v.double(), (q + v[0].double()).double())  # v[0] is 2**m
    got = (v[:, None] - v[None, :]).to(dtype)
    assert torch.equal(got.double(), (q[:, None] - q[None, :]).double())


def _launch(x, qw, bias, **kw):
    return triton_weight_only.matmul(
        x, qw.qweight, qw.scales, qw.zeros, bias, bits=qw.bits, group_size=qw.group_size,
        n=qw.out_features, **kw,
    )  # fmt: skip


# (K, N): neither a multiple of the 64/128 tiles; group sizes from 32 to per-channel
CASES = [("w4a16", 32, 224, 72), ("w4a16", -1, 200, 40), ("w8a16", 64, 320, 56)]


@pytest.mark.parametrize("variant", capabilities.TRITON_VARIANTS)
@pytest.mark.parametrize("scheme,group_size,k,n", CASES)
@pytest.mark.parametrize("m,split,with_bias", [(1, 2, True), (5, 3, False), (1, 1, False)])
def test_variants_odd_shapes(
    triton_device, poisoned, variant, scheme, group_size, k, n, m, split, with_bias
):
    for dtype in DTYPES:
        qw = quant.quantize(torch.randn(n, k), scheme, group_size=group_size).to(triton_device)
        x = torch.randn(m, k, device=triton_device).to(dtype)
        bias = torch.randn(n, device=triton_device).to(dtype) if with_bias else None
        out = _launch(x, qw, bias, split=split, variant=variant)
        assert_matmul_close(out, x, qw, bias)


@pytest.mark.parametrize("dtype", DTYPES)
def test_split_k_is_deterministic_and_leaves_counters_zero(
    triton_device, poisoned, monkeypatch, dtype
):
    """Two runs bit-equal; within the tolerance of no split and of the legacy sum in torch;
    the arrival counters (here one tensor shared by both runs) are 0 after each launch."""
    k, n, m = 512, 80, 3
    qw = quant.quantize(torch.randn(n, k), "w4a16", group_size=128).to(triton_device)
    x = torch.randn(m, k, device=triton_device).to(dtype)
    bias = torch.randn(n, device=triton_device).to(dtype)
    counters = torch.zeros(64, dtype=torch.int32, device=triton_device)
    monkeypatch.setattr(triton_weight_only, "split_counters", lambda tiles, device: counters)
    runs = [_launch(x, qw, bias, split=4) for _ in range(2)]
    assert torch.equal(counters, torch.zeros_like(counters))
    assert torch.equal(runs[0], runs[1])
    whole = _launch(x, qw, bias, split=1)
    legacy = _launch(x, qw, bias, split=4, variant="legacy")
    for out in (runs[0], whole, legacy):
        assert_matmul_close(out, x, qw, bias)
    tol = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    scale = whole.float().abs().max()
    assert (runs[0].float() - whole.float()).abs().max() <= tol * scale
    assert (runs[0].float() - legacy.float()).abs().max() <= tol * scale


def test_variant_choice_and_errors(triton_device, monkeypatch):
    qw = quant.quantize(torch.randn(40, 64), "w4a16", group_size=32).to(triton_device)
    x = torch.randn(1, 64, device=triton_device).to(torch.float16)
    with pytest.raises(ValueError, match="variant"):
        _launch(x, qw, None, variant="fast")
    monkeypatch.setenv(capabilities.TRITON_VARIANT_ENV, "legacy")
    assert capabilities.triton_variant() == "legacy"
    assert_matmul_close(_launch(x, qw, None), x, qw)
    monkeypatch.setenv(capabilities.TRITON_VARIANT_ENV, "nope")
    with pytest.raises(ValueError, match=capabilities.TRITON_VARIANT_ENV):
        _launch(x, qw, None)
    monkeypatch.delenv(capabilities.TRITON_VARIANT_ENV)
    assert capabilities.triton_variant() == "fused"


def test_counters_are_cached_per_stream_only_on_a_gpu():
    a = triton_weight_only.split_counters(8, torch.device("cpu"))
    b = triton_weight_only.split_counters(8, torch.device("cpu"))
    assert a is not b and a.dtype == torch.int32 and not a.any()
