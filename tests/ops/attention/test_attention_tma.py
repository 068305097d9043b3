"""The tensor-descriptor (TMA) forward: same results as the pointer kernel, wherever the
descriptors' zero fill and clipped stores replace the pointer kernel's masks (sequence ends,
head_dim padded to a power of two, varlen boundaries), and a clean fallback where TMA cannot
address the tensors.

On a CPU this runs the same kernel under the interpreter (which emulates descriptors); on a
GPU the `gpu`-marked test runs it on sm_90+.
"""

from __future__ import annotations

import pytest
import torch
from _attention_cases import check_forward, dense_inputs, spy_tma

from millkernels.ops.attention import attention, capabilities
from millkernels.ops.attention import triton_fwd as F

F16, BF16 = torch.float16, torch.bfloat16
TOL = {F16: 4 * 2.0**-10, BF16: 4 * 2.0**-7}  # four units of each dtype's precision


def _forward(q, k, v, tma, *, causal=False, window=(-1, -1), softcap=0.0, varlen=None):
    scale = q.shape[-1] ** -0.5
    left, right = window
    win = (left, 0 if right < 0 else min(right, 0)) if causal else window  # as the API folds it
    if varlen is None:
        return F.forward(q, k, v, None, None, q.shape[1], k.shape[1], scale, win, softcap, tma)
    cu_q, cu_k, mq, mk = varlen
    return F.forward(q, k, v, cu_q, cu_k, mq, mk, scale, win, softcap, tma)


# (batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim, dtype, causal, window, softcap)
CASES = [
    pytest.param(1, 1, 1, 2, 2, 64, F16, False, (-1, -1), 0.0, id="len1"),
    pytest.param(2, 17, 37, 4, 2, 64, BF16, True, (-1, -1), 0.0, id="gqa-causal-17x37"),
    pytest.param(1, 113, 50, 2, 1, 80, BF16, False, (9, 4), 5.0, id="mqa-d80-window-softcap"),
    pytest.param(1, 33, 33, 2, 2, 128, F16, True, (-1, -1), 0.0, id="causal-d128"),
]


@pytest.mark.parametrize("b, sq, sk, hq, hkv, d, dtype, causal, window, softcap", CASES)
def test_tma_forward_matches_pointer_kernel_and_reference(
    triton_device, b, sq, sk, hq, hkv, d, dtype, causal, window, softcap
):
    if triton_device == "cuda" and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("tensor descriptors need sm_90")
    q, k, v = dense_inputs(b, sq, sk, hq, hkv, d, dtype, triton_device)
    kw = dict(causal=causal, window=window, softcap=softcap)
    out, lse = _forward(q, k, v, True, **kw)
    check_forward(out.cpu(), lse.cpu(), q.cpu(), k.cpu(), v.cpu(), kw)
    ref_out, ref_lse = _forward(q, k, v, False, **kw)
    # The same arithmetic up to the summation order of the matmuls (K arrives transposed): a
    # last-bit difference in a score can flip the rounding of p to 16 bits, so the outputs
    # agree to a few units of the dtype's precision and lse to float32's.
    tol = TOL[dtype]
    torch.testing.assert_close(out, ref_out, atol=tol, rtol=tol)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-5, atol=1e-5)


def test_tma_varlen_keeps_sequences_apart(triton_device):
    """Descriptors per sequence: the zero fill stops at each sequence's end, stores never
    write into the next sequence, and tokens past cu_seqlens stay zero."""
    if triton_device == "cuda" and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("tensor descriptors need sm_90")
    lens_q, lens_k = [1, 17, 40], [30, 1, 45]
    cu_q = torch.tensor([0, 1, 18, 58], dtype=torch.int32, device=triton_device)
    cu_k = torch.tensor([0, 30, 31, 76], dtype=torch.int32, device=triton_device)
    q = torch.randn(58 + 3, 4, 64, device=triton_device).to(BF16)
    k = torch.randn(76, 2, 64, device=triton_device).to(BF16)
    v = torch.randn(76, 2, 64, device=triton_device).to(BF16)
    varlen = (cu_q, cu_k, max(lens_q), max(lens_k))
    out, lse = _forward(q, k, v, True, causal=True, varlen=varlen)
    kw = dict(causal=True, window=(-1, -1), softcap=0.0)
    check_forward(
        out[:58].cpu(), lse[:, :58].cpu(), q[:58].cpu(), k.cpu(), v.cpu(), kw,
        varlen=(cu_q.cpu(), cu_k.cpu()),
    )  # fmt: skip
    assert torch.all(out[58:] == 0)


def test_tma_falls_back_where_descriptors_cannot_address(triton_device, monkeypatch):
    """A view whose rows are not 16-byte aligned: the table chooses the pointer kernel (same
    result as its contiguous copy), and the launcher refuses to be told otherwise."""
    q, k, v = dense_inputs(1, 17, 17, 2, 2, 64, F16, triton_device)
    wide = torch.randn(1, 17, 2, 64 + 4, device=triton_device).to(F16)
    wide[..., :64] = q
    q_odd = wide[..., :64]  # row stride 68 halves = 136 bytes: not a multiple of 16
    monkeypatch.setenv(capabilities.TMA_ENV, "1")
    why = capabilities.tma_reason(capabilities.call_facts("attention", q_odd, k, v))
    assert why and "16-byte" in why
    with pytest.raises(ValueError, match="tma: tensor descriptors need 16-byte"):
        _forward(q_odd, k, v, True)
    ref, _ = _forward(q, k, v, False)
    seen = spy_tma(monkeypatch, F, "forward")
    out = attention(q_odd, k, v, backend="triton")
    assert seen == [False]
    assert torch.equal(out, ref)  # the same kernel, same inputs


def test_env_switch_reaches_the_public_op(triton_device, monkeypatch):
    if triton_device == "cuda" and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("tensor descriptors need sm_90")
    q, k, v = dense_inputs(1, 17, 17, 2, 2, 64, BF16, triton_device)
    seen = spy_tma(monkeypatch, F, "forward")
    monkeypatch.setenv(capabilities.TMA_ENV, "1")
    with_tma = attention(q, k, v, backend="triton")
    assert F.chosen_config(True)["TMA"] is True
    monkeypatch.setenv(capabilities.TMA_ENV, "0")
    without = attention(q, k, v, backend="triton")
    monkeypatch.delenv(capabilities.TMA_ENV)
    attention(q, k, v, backend="triton")
    assert seen == [True, False, False]  # off unless opted in
    torch.testing.assert_close(with_tma, without, atol=TOL[BF16], rtol=TOL[BF16])


def test_descriptor_allocator_respects_an_application_allocator(monkeypatch):
    import triton
    from triton.runtime import _allocation

    token = _allocation._allocator.set(_allocation.NullAllocator())
    try:
        F.ensure_descriptor_allocator()
        ours = _allocation._allocator.get()
        assert not isinstance(ours, _allocation.NullAllocator)

        def theirs(size, alignment, stream):
            return torch.empty(size, dtype=torch.int8)

        triton.set_allocator(theirs)
        F.ensure_descriptor_allocator()
        assert _allocation._allocator.get() is theirs
    finally:
        _allocation._allocator.reset(token)


def test_tma_decision_is_the_tables(monkeypatch):
    """The TMA choice is a rule of the capability table on the call's facts: opt-in, training
    ops only, sm_90+ (or the interpreter), 16-byte aligned tensors."""
    from dataclasses import replace

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    gpu = capabilities.AttentionCall(
        op="attention", device="cuda", dtype="bfloat16", capability=(9, 0), head_dim=128,
        tma_opt_in=True,
    )  # fmt: skip
    assert capabilities.use_tma(gpu)
    assert capabilities.use_tma(replace(gpu, op="attention_varlen"))
    assert capabilities.TMA_ENV in capabilities.tma_reason(replace(gpu, tma_opt_in=False))
    assert "sm_90" in capabilities.tma_reason(replace(gpu, capability=(8, 0)))
    assert "16-byte" in capabilities.tma_reason(replace(gpu, aligned16=False))
    assert "attention_decode" in capabilities.tma_reason(replace(gpu, op="attention_decode"))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert capabilities.use_tma(replace(gpu, device="cpu", capability=None))
    q = torch.randn(1, 3, 2, 64).half()
    for value, opted in (("1", True), ("0", False)):
        monkeypatch.setenv(capabilities.TMA_ENV, value)
        assert capabilities.call_facts("attention", q).tma_opt_in is opted
