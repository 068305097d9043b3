"""Shared checks for the attention tests (imported by the test modules next to it)."""

from __future__ import annotations

import torch

from millkernels.ops.attention import reference as R
from millkernels.testing import assert_flash_close

HALF = (torch.float16, torch.bfloat16)


def dense_inputs(b, sq, sk, hq, hkv, d, dtype, device="cpu"):
    q = torch.randn(b, sq, hq, d, dtype=torch.float32).to(dtype=dtype, device=device)
    k = torch.randn(b, sk, hkv, d, dtype=torch.float32).to(dtype=dtype, device=device)
    v = torch.randn(b, sk, hkv, d, dtype=torch.float32).to(dtype=dtype, device=device)
    return q, k, v


def check_lse(lse, lse_pt, lse32, name="lse"):
    """-inf exactly where the fp32 reference has -inf; the flash rule on the finite rows."""
    inf32 = torch.isneginf(lse32)
    assert torch.equal(torch.isneginf(lse.cpu()), inf32.cpu()), f"{name}: -inf rows differ"
    fin = ~inf32
    if fin.any():
        assert_flash_close(lse[fin], lse_pt[fin], lse32[fin], name)


def check_forward(out, lse, q, k, v, kw, varlen=None):
    """out/lse against the fp32 reference with the flash 2x rule; masked rows exactly 0."""
    if varlen is None:
        ref, lse32 = R.attention_ref(q, k, v, **kw)
        pt, lse_pt = R.attention_ref(q, k, v, compute_dtype=None, **kw)
    else:
        ref, lse32 = R.attention_varlen_ref(q, k, v, *varlen, **kw)
        pt, lse_pt = R.attention_varlen_ref(q, k, v, *varlen, compute_dtype=None, **kw)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert_flash_close(out, pt, ref, "out")
    check_lse(lse, lse_pt, lse32)
    empty = torch.isneginf(lse32)  # (B, H, S) or (H, T)
    rows = out.float().abs().amax(-1)  # (B, S, H) or (T, H)
    rows = rows.transpose(-1, -2) if varlen is None else rows.transpose(0, 1)
    assert torch.all(rows[empty] == 0), "rows that see no key must be exactly zero"


def check_backward(grads, q, k, v, dout, kw, dlse=None, varlen=None):
    """dq, dk, dv against autograd of the fp32 reference (flash 2x rule)."""
    extra = {} if varlen is None else {"cu_seqlens_q": varlen[0], "cu_seqlens_k": varlen[1]}
    g32 = R.attention_backward_ref(dout, dlse, q, k, v, **extra, **kw)
    gpt = R.attention_backward_ref(dout, dlse, q, k, v, compute_dtype=None, **extra, **kw)
    for name, g, p, r, x in zip(("dq", "dk", "dv"), grads, gpt, g32, (q, k, v), strict=True):
        assert g.shape == x.shape and g.dtype == x.dtype, name
        assert_flash_close(g, p, r, name)


def spy_tma(monkeypatch, module, launcher: str) -> list[bool]:
    """The ``tma`` argument (the table's choice, passed by name by the custom ops) of every
    call of ``module.<launcher>``, in order."""
    seen: list[bool] = []
    real = getattr(module, launcher)

    def spy(*args, **kwargs):
        seen.append(kwargs["tma"])
        return real(*args, **kwargs)

    monkeypatch.setattr(module, launcher, spy)
    return seen
