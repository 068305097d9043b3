"""attention / attention_varlen forward and backward against the fp32 reference.

Every backend that runs here (reference; Triton under the interpreter on a CPU, or on the
GPU) is checked with flash-attention's rule: the result may be at most twice as wrong as
the same reference computed in the input dtype. Shapes are tiny (the interpreter is slow)
but odd: lengths 1, 17, 113, 255; GQA and MQA; causal with seqlen_q below and above
seqlen_k (fully masked rows); windows; softcap; head dims 40, 64, 80, 128, 256.
"""

from __future__ import annotations

import pytest
import torch
from _attention_cases import check_backward, check_forward, dense_inputs

from millkernels.ops.attention import attention, attention_varlen
from millkernels.ops.attention import reference as R
from millkernels.testing import assert_flash_close

F16, BF16 = torch.float16, torch.bfloat16

# (batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim, dtype, causal, window, softcap)
DENSE = [
    pytest.param(1, 1, 1, 2, 2, 64, F16, False, (-1, -1), 0.0, id="len1"),
    pytest.param(2, 17, 17, 4, 2, 64, BF16, False, (-1, -1), 0.0, id="gqa-17"),
    pytest.param(1, 113, 113, 2, 1, 128, F16, True, (-1, -1), 0.0, id="mqa-causal-113-d128"),
    pytest.param(1, 17, 113, 2, 2, 80, BF16, True, (-1, -1), 0.0, id="causal-q<k-d80"),
    pytest.param(1, 113, 17, 4, 2, 64, F16, True, (-1, -1), 0.0, id="causal-q>k-masked-rows"),
    pytest.param(1, 113, 113, 2, 2, 64, BF16, False, (16, 8), 0.0, id="window"),
    pytest.param(1, 113, 77, 2, 1, 64, F16, True, (8, -1), 5.0, id="causal-window-softcap"),
    pytest.param(1, 17, 17, 2, 2, 256, BF16, False, (-1, -1), 30.0, id="softcap-d256"),
    pytest.param(1, 17, 40, 2, 2, 40, F16, False, (0, 0), 0.0, id="window-0-d40"),
    pytest.param(1, 255, 255, 2, 1, 64, F16, True, (-1, -1), 0.0, id="causal-255"),
    pytest.param(2, 33, 255, 2, 2, 128, BF16, False, (-1, 31), 0.0, id="window-right-255"),
]


@pytest.fixture(params=["reference", "triton"])
def backend(request, device):
    return request.param


def _run(fn, backend, q, k, v, kw, *args, dlse_weight=False):
    qg, kg, vg = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    out, lse = fn(qg, kg, vg, *args, return_lse=True, backend=backend, **kw)
    dout = torch.randn_like(out)
    dlse = torch.randn_like(lse).masked_fill(torch.isneginf(lse), 0) if dlse_weight else None
    loss = (out.float() * dout.float()).sum()
    if dlse is not None:
        loss = loss + (lse.masked_fill(torch.isneginf(lse), 0) * dlse).sum()
    loss.backward()
    return out.detach(), lse.detach(), dout, dlse, (qg.grad, kg.grad, vg.grad)


@pytest.mark.parametrize("b, sq, sk, hq, hkv, d, dtype, causal, window, softcap", DENSE)
def test_attention_forward_backward(
    backend, device, b, sq, sk, hq, hkv, d, dtype, causal, window, softcap
):
    q, k, v = dense_inputs(b, sq, sk, hq, hkv, d, dtype, device)
    kw = dict(causal=causal, window=window, softcap=softcap)
    out, lse, dout, _, grads = _run(attention, backend, q, k, v, kw)
    check_forward(out, lse, q, k, v, kw)
    check_backward(grads, q, k, v, dout, kw)


@pytest.mark.parametrize("backend_name", ["reference", "triton"])
def test_attention_lse_gradient(backend_name, device):
    """A gradient flowing into lse (d lse / d s = p) reaches q and k."""
    q, k, v = dense_inputs(1, 33, 47, 4, 2, 64, F16, device)
    kw = dict(causal=True, window=(-1, -1), softcap=0.0)
    _, _, dout, dlse, grads = _run(attention, backend_name, q, k, v, kw, dlse_weight=True)
    check_backward(grads, q, k, v, dout, kw, dlse=dlse)


def test_attention_scale_default_and_explicit(device):
    q, k, v = dense_inputs(1, 17, 17, 2, 2, 64, F16, device)
    a = attention(q, k, v, backend="reference")
    b = attention(q, k, v, softmax_scale=0.125, backend="reference")
    assert torch.equal(a, b)  # 1/sqrt(64)
    c = attention(q, k, v, softmax_scale=0.3, backend="triton")
    ref, _ = R.attention_ref(q, k, v, softmax_scale=0.3)
    pt, _ = R.attention_ref(q, k, v, softmax_scale=0.3, compute_dtype=None)
    assert_flash_close(c, pt, ref)


def _varlen_inputs(lens_q, lens_k, hq, hkv, d, dtype, device, tail=0):
    cu_q = torch.tensor([0, *torch.tensor(lens_q).cumsum(0).tolist()], dtype=torch.int32)
    cu_k = torch.tensor([0, *torch.tensor(lens_k).cumsum(0).tolist()], dtype=torch.int32)
    tq, tk = int(cu_q[-1]) + tail, int(cu_k[-1])
    q = torch.randn(tq, hq, d).to(dtype=dtype, device=device)
    k = torch.randn(tk, hkv, d).to(dtype=dtype, device=device)
    v = torch.randn(tk, hkv, d).to(dtype=dtype, device=device)
    return q, k, v, cu_q.to(device), cu_k.to(device), max(lens_q), max(lens_k)


# fmt: off
VARLEN = [
    pytest.param([1, 17, 113, 5], [1, 17, 113, 30], 4, 2, 64, F16, True, (-1, -1), 0.0, 0,
                 id="causal-gqa-len1"),
    pytest.param([17, 1, 40], [30, 0, 40], 2, 2, 80, BF16, False, (7, 3), 10.0, 3,
                 id="window-softcap-emptyk-tail"),
    pytest.param([9, 33], [33, 9], 4, 1, 128, BF16, True, (-1, -1), 0.0, 0, id="mqa-causal"),
]
# fmt: on


@pytest.mark.parametrize("lq, lk, hq, hkv, d, dtype, causal, window, softcap, tail", VARLEN)
def test_attention_varlen_forward_backward(
    backend, device, lq, lk, hq, hkv, d, dtype, causal, window, softcap, tail
):
    q, k, v, cu_q, cu_k, mq, mk = _varlen_inputs(lq, lk, hq, hkv, d, dtype, device, tail)
    kw = dict(causal=causal, window=window, softcap=softcap)
    out, lse, dout, _, grads = _run(attention_varlen, backend, q, k, v, kw, cu_q, cu_k, mq, mk)
    check_forward(out, lse, q, k, v, kw, varlen=(cu_q, cu_k))
    check_backward(grads, q, k, v, dout, kw, varlen=(cu_q, cu_k))
    if tail:
        assert torch.all(out[-tail:] == 0) and torch.all(grads[0][-tail:] == 0)


def test_varlen_matches_dense_per_sequence(device):
    """Each packed sequence equals the dense op on that sequence alone (Triton, bf16)."""
    q, k, v, cu_q, cu_k, mq, mk = _varlen_inputs([17, 3], [5, 20], 2, 1, 64, BF16, device)
    out = attention_varlen(q, k, v, cu_q, cu_k, mq, mk, causal=True, backend="triton")
    o0 = attention(q[None, :17], k[None, :5], v[None, :5], causal=True, backend="triton")
    o1 = attention(q[None, 17:], k[None, 5:], v[None, 5:], causal=True, backend="triton")
    assert torch.equal(out, torch.cat([o0[0], o1[0]]))


def test_triton_outputs_are_fully_written(device, monkeypatch):
    """Outputs allocated by the launchers are poisoned (NaN) first: every element is written."""
    real_empty_like, real_empty = torch.empty_like, torch.empty

    def nan_empty_like(x, *a, **kw):
        t = real_empty_like(x, *a, **kw)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    def nan_empty(*a, **kw):
        t = real_empty(*a, **kw)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    q, k, v = dense_inputs(1, 113, 50, 4, 2, 80, F16, device)
    qg, kg, vg = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    monkeypatch.setattr(torch, "empty_like", nan_empty_like)
    monkeypatch.setattr(torch, "empty", nan_empty)
    out, lse = attention(qg, kg, vg, causal=True, return_lse=True, backend="triton")
    out.float().sum().backward()
    monkeypatch.undo()
    assert not out.isnan().any() and not lse.isnan().any()
    for g in (qg.grad, kg.grad, vg.grad):
        assert not g.isnan().any()
    check_forward(out.detach(), lse, q, k, v, dict(causal=True))


def test_triton_backward_is_bitwise_reproducible(device):
    q, k, v = dense_inputs(1, 47, 47, 4, 1, 64, BF16, device)
    grads = []
    for _ in range(2):
        qg, kg, vg = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
        out = attention(qg, kg, vg, causal=True, deterministic=True, backend="triton")
        out.backward(torch.ones_like(out))
        grads.append((qg.grad, kg.grad, vg.grad))
    for a, b in zip(*grads, strict=True):
        assert torch.equal(a, b)


def test_non_contiguous_inputs(device):
    """Strided q/k/v (e.g. split from a packed qkv projection) with unit last stride."""
    qkv = torch.randn(2, 17, 3, 4, 64).to(dtype=F16, device=device)
    q, k, v = qkv.unbind(2)
    assert not q.is_contiguous()
    qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))
    out = attention(q, k, v, backend="triton")
    check_forward(out, R.attention_ref(q, k, v)[1], q, k, v, {})
    out2 = attention(qg, kg, vg, backend="triton")
    out2.float().sum().backward()
    assert qg.grad.shape == q.shape
    check_backward((qg.grad, kg.grad, vg.grad), q, k, v, torch.ones_like(out2), {"causal": False})


@pytest.mark.gpu
@pytest.mark.parametrize("d", [64, 128, 256])
@pytest.mark.parametrize("causal", [False, True])
def test_triton_gpu_larger_shapes(d, causal):
    """Shapes with many blocks, every autotuned config family (GPU only)."""
    q, k, v = dense_inputs(2, 1000, 1031, 8, 2, d, BF16, "cuda")
    kw = dict(causal=causal, window=(-1, -1), softcap=0.0)
    torch.manual_seed(1234)
    out, lse, dout, _, grads = _run(attention, "triton", q, k, v, kw)
    check_forward(out, lse, q, k, v, kw)
    check_backward(grads, q, k, v, dout, kw)
    torch.manual_seed(1234)  # the same dout
    again = _run(attention, "triton", q, k, v, kw)
    for a, b in zip(grads, again[4], strict=True):
        assert torch.equal(a, b)  # bitwise reproducible backward


def _toward_zero_share(x: torch.Tensor, exact: torch.Tensor) -> float:
    """Among the elements of ``x`` that differ from ``exact`` rounded to x's dtype, the share
    smaller in magnitude than ``exact``: about 0.5 when every rounding is to nearest, near 1
    when the float32 -> bf16 casts truncate (as the Triton interpreter's own cast does)."""
    off = x != exact.to(x.dtype)
    return (x[off].double().abs() < exact[off].abs()).double().mean().item()


def test_triton_bf16_rounds_like_the_gpu_decode_shape(triton_device):
    """Causal MQA with one query row against 239 keys, bf16: forward and backward against a
    float64 reference with flash-attention's rule (no slack beyond 1e-5), and the bf16 casts
    (P and dS before their matmuls, every output store) round to nearest, so the CPU run errs
    like a GPU run (with truncation this shape sat at exactly 2x PyTorch's error)."""
    q, k, v = dense_inputs(2, 1, 239, 4, 1, 64, BF16, triton_device)
    kw = dict(causal=True, window=(-1, -1), softcap=0.0)
    out, _, dout, _, grads = _run(attention, "triton", q, k, v, kw)
    ref64, _ = R.attention_ref(q, k, v, compute_dtype=torch.float64, causal=True)
    ref_pt, _ = R.attention_ref(q, k, v, compute_dtype=None, causal=True)
    assert_flash_close(out, ref_pt, ref64, "out")
    g64 = R.attention_backward_ref(dout, None, q, k, v, compute_dtype=torch.float64, causal=True)
    g_pt = R.attention_backward_ref(dout, None, q, k, v, compute_dtype=None, causal=True)
    for name, g, p, r in zip(("dq", "dk", "dv"), grads, g_pt, g64, strict=True):
        assert_flash_close(g, p, r, name)
    for name, x, r in zip(("out", "dq", "dk", "dv"), (out, *grads), (ref64, *g64), strict=True):
        share = _toward_zero_share(x.cpu(), r.cpu())
        assert share < 0.7, f"{name}: {share:.2f} of the rounded values lie toward zero"


@pytest.mark.parametrize("given", ["cu_seqlens_q", "cu_seqlens_k"])
def test_backward_ref_needs_both_offsets_or_neither(given):
    """The autograd reference's varlen path needs both offset tensors: one alone is refused
    by name (it used to fail inside with an AttributeError, or run the dense path on packed
    tokens)."""
    q, k, v = (torch.randn(7, 2, 16) for _ in range(3))
    cu = torch.tensor([0, 3, 7], dtype=torch.int32)
    with pytest.raises(ValueError, match="cu_seqlens_q, cu_seqlens_k: expected both"):
        R.attention_backward_ref(torch.randn_like(q), None, q, k, v, **{given: cu})
