"""The tensor-descriptor (TMA) backward: dK/dV and dQ kernels that load q, k, v, dO through
descriptors (zero fill past each sequence's end and past head_dim replaces the masks) and
store the gradients with clipped descriptor stores. Checked against the fp32 reference (the
flash-attention rule) and against the pointer kernels' gradients, for GQA, causal with
seqlen_q != seqlen_k, a padded head_dim, varlen with a length-1 sequence and tokens past
cu_seqlens, determinism, and the fallback where TMA cannot address a tensor.

On a CPU this runs the same kernels under the interpreter (which emulates descriptors); on a
GPU it runs them on sm_90+.
"""

from __future__ import annotations

import pytest
import torch
from _attention_cases import check_backward, dense_inputs, spy_tma

from millkernels.ops.attention import attention, capabilities
from millkernels.ops.attention import triton_bwd as B
from millkernels.ops.attention import triton_fwd as F

F16, BF16 = torch.float16, torch.bfloat16
TOL = {F16: 4 * 2.0**-10, BF16: 4 * 2.0**-7}  # four units of each dtype's precision


@pytest.fixture(autouse=True)
def _needs_sm90(triton_device):
    if triton_device == "cuda" and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("tensor descriptors need sm_90")


def _fold(causal, window):
    left, right = window
    return (left, 0 if right < 0 else min(right, 0)) if causal else window  # as the API does


def _grads(
    q, k, v, dout, tma, *, causal=False, window=(-1, -1), softcap=0.0, varlen=None, mode="fused"
):
    """(dq, dk, dv) from the pointer forward and the backward with ``tma`` in ``mode``."""
    scale = q.shape[-1] ** -0.5
    win = _fold(causal, window)
    lens = (None, None, q.shape[1], k.shape[1]) if varlen is None else varlen
    out, lse = F.forward(q, k, v, *lens, scale, win, softcap, False)
    return B.backward(dout, None, q, k, v, out, lse, *lens, scale, win, softcap, tma, mode=mode)


def _close(a, b, dtype, name):
    """The same arithmetic up to summation order: a last-bit difference in a score can flip
    the rounding of p or dS to 16 bits, so gradients agree to a few units of the dtype."""
    scale = max(1.0, b.float().abs().max().item())
    tol = TOL[dtype] * scale
    torch.testing.assert_close(a, b, atol=tol, rtol=TOL[dtype], msg=lambda m: f"{name}: {m}")


# (batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim, dtype, causal, window, softcap)
CASES = [
    pytest.param(2, 17, 37, 4, 2, 64, BF16, True, (-1, -1), 0.0, id="gqa-causal-q<k"),
    pytest.param(1, 45, 19, 2, 1, 64, F16, True, (-1, -1), 0.0, id="mqa-causal-q>k"),
    pytest.param(1, 33, 50, 2, 2, 80, BF16, False, (9, 4), 5.0, id="d80-window-softcap"),
    pytest.param(1, 21, 21, 2, 2, 128, F16, True, (-1, -1), 0.0, id="causal-d128"),
]


@pytest.mark.parametrize("b, sq, sk, hq, hkv, d, dtype, causal, window, softcap", CASES)
def test_tma_backward_matches_reference_and_pointer_kernels(
    triton_device, b, sq, sk, hq, hkv, d, dtype, causal, window, softcap
):
    q, k, v = dense_inputs(b, sq, sk, hq, hkv, d, dtype, triton_device)
    dout = torch.randn_like(q)
    kw = dict(causal=causal, window=window, softcap=softcap)
    grads = _grads(q, k, v, dout, True, **kw)
    assert B.chosen_configs(True)["TMA"] is True
    check_backward([g.cpu() for g in grads], q.cpu(), k.cpu(), v.cpu(), dout.cpu(), kw)
    ref = _grads(q, k, v, dout, False, **kw)
    for name, g, r in zip(("dq", "dk", "dv"), grads, ref, strict=True):
        _close(g, r, dtype, name)


@pytest.mark.parametrize("b, sq, sk, hq, hkv, d, dtype, causal, window, softcap", CASES[2:])
def test_tma_split_backward_matches_reference_and_pointer_kernels(
    triton_device, b, sq, sk, hq, hkv, d, dtype, causal, window, softcap
):
    """The split backward's dV and dK passes through descriptors (head_dim bucket 128)."""
    q, k, v = dense_inputs(b, sq, sk, hq, hkv, d, dtype, triton_device)
    dout = torch.randn_like(q)
    kw = dict(causal=causal, window=window, softcap=softcap)
    grads = _grads(q, k, v, dout, True, mode="split", **kw)
    check_backward([g.cpu() for g in grads], q.cpu(), k.cpu(), v.cpu(), dout.cpu(), kw)
    ref = _grads(q, k, v, dout, False, mode="split", **kw)
    for name, g, r in zip(("dq", "dk", "dv"), grads, ref, strict=True):
        _close(g, r, dtype, name)


def test_tma_backward_varlen_keeps_sequences_apart(triton_device):
    """Per-sequence descriptors: the zero fill stops at each sequence's end, the clipped
    stores never write into the next sequence, and tokens past cu_seqlens keep zero
    gradients. Sequence lengths 1 (query) and 1 (key) included."""
    lens_q, lens_k = [1, 17, 40], [30, 1, 45]
    dev = triton_device
    cu_q = torch.tensor([0, 1, 18, 58], dtype=torch.int32, device=dev)
    cu_k = torch.tensor([0, 30, 31, 76], dtype=torch.int32, device=dev)
    q = torch.randn(58 + 3, 4, 64, device=dev).to(BF16)
    k = torch.randn(76 + 2, 2, 64, device=dev).to(BF16)
    v = torch.randn(76 + 2, 2, 64, device=dev).to(BF16)
    dout = torch.randn_like(q)
    varlen = (cu_q, cu_k, max(lens_q), max(lens_k))
    dq, dk, dv = _grads(q, k, v, dout, True, causal=True, varlen=varlen)
    assert torch.all(dq[58:] == 0) and torch.all(dk[76:] == 0) and torch.all(dv[76:] == 0)
    kw = dict(causal=True, window=(-1, -1), softcap=0.0)
    cpu = [t.cpu() for t in (dq[:58], dk[:76], dv[:76], q[:58], k[:76], v[:76], dout[:58])]
    check_backward(cpu[:3], *cpu[3:], kw, varlen=(cu_q.cpu(), cu_k.cpu()))
    ref = _grads(q, k, v, dout, False, causal=True, varlen=varlen)
    for name, g, r in zip(("dq", "dk", "dv"), (dq, dk, dv), ref, strict=True):
        _close(g, r, BF16, name)


def test_tma_backward_is_deterministic(triton_device):
    q, k, v = dense_inputs(1, 37, 37, 4, 1, 64, F16, triton_device)
    dout = torch.randn_like(q)
    first = _grads(q, k, v, dout, True, causal=True)
    second = _grads(q, k, v, dout, True, causal=True)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def _public_grads(q, k, v, dout):
    """Gradients through the public op; a q that already requires grad is used as it is."""
    qg, kg, vg = (t if t.requires_grad else t.detach().clone().requires_grad_() for t in (q, k, v))
    attention(qg, kg, vg, causal=True, backend="triton").backward(dout)
    return qg.grad, kg.grad, vg.grad


def test_tma_backward_falls_back_where_descriptors_cannot_address(triton_device, monkeypatch):
    """A q whose data starts 2 bytes past a 16-byte boundary (contiguous, so the launcher
    keeps it): the table chooses the pointer kernels, with the same result as its aligned
    copy, and the launcher refuses to be told otherwise."""
    q, k, v = dense_inputs(1, 17, 17, 2, 2, 64, F16, triton_device)
    dout = torch.randn_like(q)
    flat = torch.empty(q.numel() + 1, dtype=F16, device=triton_device)
    odd = flat[1:].view(q.shape)
    odd.copy_(q)
    assert odd.is_contiguous()
    monkeypatch.setenv(capabilities.TMA_ENV, "1")
    assert "16-byte" in capabilities.tma_reason(capabilities.call_facts("attention", odd, k, v))
    with pytest.raises(ValueError, match="tma: tensor descriptors need 16-byte"):
        _grads(odd, k, v, dout, True)
    seen = spy_tma(monkeypatch, B, "backward")
    got = _public_grads(odd.requires_grad_(), k, v, dout)
    assert seen == [False]
    monkeypatch.setenv(capabilities.TMA_ENV, "0")
    ref = _public_grads(q, k, v, dout)
    for a, b in zip(got, ref, strict=True):
        assert torch.equal(a, b)


def test_env_switch_reaches_the_backward(triton_device, monkeypatch):
    q, k, v = dense_inputs(1, 17, 17, 2, 1, 64, BF16, triton_device)
    dout = torch.randn_like(q)
    seen = spy_tma(monkeypatch, B, "backward")
    monkeypatch.setenv(capabilities.TMA_ENV, "1")
    with_tma = _public_grads(q, k, v, dout)
    monkeypatch.setenv(capabilities.TMA_ENV, "0")
    without = _public_grads(q, k, v, dout)
    assert seen == [True, False]
    for name, a, b in zip(("dq", "dk", "dv"), with_tma, without, strict=True):
        _close(a, b, BF16, name)


def test_tma_backward_compiles_for_sm90_with_tma_wgmma_and_no_spills():
    """Offline (no GPU): the first TMA config of each backward kernel at head_dim 64 and 128
    uses TMA and wgmma on sm_90 and does not spill (`millkernels analyze` covers every row)."""
    from millkernels.analyze.core import analyze_kernels
    from millkernels.analyze.registry import Registry, triton_kernels

    package, reg = triton_kernels(), Registry()
    for name in ("attention.bwd_dkdv", "attention.bwd_dq"):
        k = package.triton[name]
        picked = []
        for d in (64, 128):
            tma = [
                v
                for v in k.variants
                if v.constexprs.get("TMA")
                and v.constexprs["HEAD_DIM"] == d
                and not v.constexprs["VARLEN"]
            ]
            assert tma and all(v.min_arch >= 90 for v in tma), (name, d)
            picked.append(tma[0])
        reg.register_triton(name, k.fn, picked, hot=True)
    reports = analyze_kernels("sm_90", registry=reg, include_cuda=False).reports
    assert len(reports) == 4, [(r.kernel, r.variant) for r in reports]
    for r in reports:
        assert r.status == "ok", (r.kernel, r.variant, r.reason)
        assert r.tma, (r.kernel, r.variant)
        assert "HGMMA" in r.tensor_core_ops, (r.kernel, r.variant, r.tensor_core_counts)
        assert r.spill_bytes == 0, (r.kernel, r.variant, r.spill_bytes)
