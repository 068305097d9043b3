"""Plain-PyTorch attention: the semantics every backend matches, the CPU fallback, the tests'
truth.

Semantics:

- ``scores = (q . k) * softmax_scale`` (``softmax_scale`` defaults to ``1/sqrt(head_dim)``);
  a softcap ``s > 0`` replaces each score ``x`` by ``s * tanh(x / s)``.
- Query row ``i`` sees key ``j`` when the masks allow it. With ``off = seqlen_k - seqlen_q``
  (bottom-right alignment): causal means ``j <= i + off``; a window ``(left, right)`` means
  ``i + off - left <= j <= i + off + right``, ``-1`` being unbounded on that side.
- ``lse`` is the natural log of the sum of ``exp(scores)`` over the visible keys. A row that
  sees no key gives zeros and ``lse = -inf``.
- Query head ``h`` reads key/value head ``h // (heads_q // heads_kv)`` (GQA / MQA).

Everything is computed in ``compute_dtype`` (float32 by default). Computing in the input
dtype gives the "PyTorch's own error" term of the flash-attention tolerance rule. Gradients
come from autograd through these functions; masked scores get exact zero gradients and fully
masked rows produce no NaN.
"""

from __future__ import annotations

import math

import torch

UNBOUNDED = -1


def default_scale(head_dim: int) -> float:
    """``1 / sqrt(head_dim)``."""
    return 1.0 / math.sqrt(head_dim)


def effective_window(causal: bool, window: tuple[int, int]) -> tuple[int, int]:
    """Fold ``causal`` into the window: ``(left, right)`` with -1 meaning unbounded."""
    left, right = int(window[0]), int(window[1])
    if causal:
        right = 0 if right < 0 else min(right, 0)
    return left, right


def visible_mask(
    seqlen_q: int,
    seqlen_k: int,
    causal: bool = False,
    window: tuple[int, int] = (-1, -1),
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Boolean (seqlen_q, seqlen_k): True where query row i sees key j (bottom-right aligned)."""
    left, right = effective_window(causal, window)
    i = torch.arange(seqlen_q, device=device)[:, None] + (seqlen_k - seqlen_q)
    j = torch.arange(seqlen_k, device=device)[None, :]
    mask = torch.ones(seqlen_q, seqlen_k, dtype=torch.bool, device=device)
    if right >= 0:
        mask &= j <= i + right
    if left >= 0:
        mask &= j >= i - left
    return mask


def _expand_kv(x: torch.Tensor, heads_q: int) -> torch.Tensor:
    """(B, S, Hkv, D) -> (B, S, Hq, D): query head h reads kv head h // group."""
    group = heads_q // x.shape[2]
    return x if group == 1 else x.repeat_interleave(group, dim=2)


def attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    softmax_scale: float | None = None,
    window: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    compute_dtype: torch.dtype | None = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense attention. Returns ``(out, lse)``.

    Parameters
    ----------
    q : (batch, seqlen_q, heads_q, head_dim)
    k, v : (batch, seqlen_k, heads_kv, head_dim), heads_q a multiple of heads_kv
    compute_dtype
        Dtype of every step (None: the input dtype, for the tolerance rule's ``out_pt``).

    Returns
    -------
    out : (batch, seqlen_q, heads_q, head_dim) in q's dtype
    lse : (batch, heads_q, seqlen_q) float32
    """
    dt = q.dtype if compute_dtype is None else compute_dtype
    scale = default_scale(q.shape[-1]) if softmax_scale is None else float(softmax_scale)
    heads_q, seqlen_q, seqlen_k = q.shape[2], q.shape[1], k.shape[1]
    if seqlen_k == 0 or seqlen_q == 0:  # nothing to see: zeros and -inf
        lse = torch.full((q.shape[0], heads_q, seqlen_q), float("-inf"), device=q.device)
        return torch.zeros_like(q), lse
    qh = q.to(dt).transpose(1, 2)  # (B, H, Sq, D)
    kh = _expand_kv(k.to(dt), heads_q).transpose(1, 2)
    vh = _expand_kv(v.to(dt), heads_q).transpose(1, 2)
    scores = torch.matmul(qh, kh.transpose(-1, -2)) * scale
    if softcap > 0:
        scores = softcap * torch.tanh(scores / softcap)
    mask = visible_mask(seqlen_q, seqlen_k, causal, window, q.device)
    scores = scores.masked_fill(~mask, float("-inf"))
    row_max = scores.amax(dim=-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max)).detach()
    e = torch.exp(scores - row_max)
    denom = e.sum(dim=-1, keepdim=True)
    seen = denom > 0
    safe = torch.where(seen, denom, torch.ones_like(denom))
    p = e / safe
    out = torch.matmul(p.to(dt), vh).transpose(1, 2)
    lse = torch.where(seen, torch.log(safe) + row_max, torch.full_like(safe, float("-inf")))
    return out.to(q.dtype), lse.squeeze(-1).float()


def attention_varlen_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    *,
    causal: bool = False,
    softmax_scale: float | None = None,
    window: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    compute_dtype: torch.dtype | None = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Variable-length attention: :func:`attention_ref` on each sequence of the packed batch.

    ``q`` (total_q, heads_q, head_dim), ``k``/``v`` (total_k, heads_kv, head_dim),
    ``cu_seqlens_*`` (batch + 1,) offsets. Returns ``out`` like ``q`` and ``lse``
    (heads_q, total_q) float32. Tokens of ``q`` past ``cu_seqlens_q[-1]`` get zeros, -inf.
    """
    cq = [int(x) for x in cu_seqlens_q.tolist()]
    ck = [int(x) for x in cu_seqlens_k.tolist()]
    outs, lses = [], []
    for b in range(len(cq) - 1):
        o, lse = attention_ref(
            q[cq[b] : cq[b + 1]].unsqueeze(0),
            k[ck[b] : ck[b + 1]].unsqueeze(0),
            v[ck[b] : ck[b + 1]].unsqueeze(0),
            causal=causal,
            softmax_scale=softmax_scale,
            window=window,
            softcap=softcap,
            compute_dtype=compute_dtype,
        )
        outs.append(o[0])
        lses.append(lse[0])
    tail = q.shape[0] - cq[-1]
    if tail:
        outs.append(q.new_zeros(tail, *q.shape[1:]))
        lses.append(torch.full((q.shape[1], tail), float("-inf"), device=q.device))
    out = torch.cat(outs, 0) if outs else q.new_zeros(q.shape)
    lse = torch.cat(lses, 1) if lses else torch.full((q.shape[1], 0), float("-inf"))
    return out, lse


def attention_backward_ref(
    dout: torch.Tensor,
    dlse: torch.Tensor | None,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    cu_seqlens_q: torch.Tensor | None = None,
    cu_seqlens_k: torch.Tensor | None = None,
    compute_dtype: torch.dtype | None = torch.float32,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) by autograd through the reference (dense, or varlen with cu_seqlens)."""
    with torch.enable_grad():
        qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))
        if cu_seqlens_q is None:
            out, lse = attention_ref(qg, kg, vg, compute_dtype=compute_dtype, **kwargs)
        else:
            out, lse = attention_varlen_ref(
                qg, kg, vg, cu_seqlens_q, cu_seqlens_k, compute_dtype=compute_dtype, **kwargs
            )
        outputs, grads = [out], [dout.to(out.dtype)]
        if dlse is not None:
            outputs.append(lse)
            grads.append(dlse.float())
        dq, dk, dv = torch.autograd.grad(outputs, (qg, kg, vg), grads, allow_unused=True)
    dq = torch.zeros_like(q) if dq is None else dq
    dk = torch.zeros_like(k) if dk is None else dk
    dv = torch.zeros_like(v) if dv is None else dv
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def attention_grad_ref(
    dout: torch.Tensor,
    dlse: torch.Tensor | None,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    softmax_scale: float | None = None,
    window: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    compute_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) of dense attention in closed form, without autograd.

    The reference backend's backward (custom ops run below autograd, so they cannot call
    ``torch.autograd.grad``): with ``p`` the probabilities, ``dv = p^T dout``,
    ``ds = p * (dout v^T - rowsum(dout * out) + dlse)``, then the chain rule through the
    softcap and the scale; GQA gradients are summed over each kv head's query heads.
    """
    dt = compute_dtype
    head_dim = q.shape[-1]
    scale = default_scale(head_dim) if softmax_scale is None else float(softmax_scale)
    batch, seqlen_q, heads_q, _ = q.shape
    seqlen_k, heads_kv = k.shape[1], k.shape[2]
    group = heads_q // heads_kv
    if seqlen_k == 0 or seqlen_q == 0:
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    qh = q.to(dt).transpose(1, 2)
    kh = _expand_kv(k.to(dt), heads_q).transpose(1, 2)
    vh = _expand_kv(v.to(dt), heads_q).transpose(1, 2)
    doh = dout.to(dt).transpose(1, 2)
    x = torch.matmul(qh, kh.transpose(-1, -2)) * scale
    if softcap > 0:
        t = torch.tanh(x / softcap)
        scores = softcap * t
    else:
        scores = x
    mask = visible_mask(seqlen_q, seqlen_k, causal, window, q.device)
    scores = scores.masked_fill(~mask, float("-inf"))
    row_max = scores.amax(dim=-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    e = torch.exp(scores - row_max)
    denom = e.sum(dim=-1, keepdim=True)
    p = e / torch.where(denom > 0, denom, torch.ones_like(denom))
    out = torch.matmul(p, vh)
    dv = torch.matmul(p.transpose(-1, -2), doh)
    dp = torch.matmul(doh, vh.transpose(-1, -2))
    delta = (doh * out).sum(-1, keepdim=True)
    if dlse is not None:
        delta = delta - dlse.to(dt).unsqueeze(-1)
    ds = p * (dp - delta)
    if softcap > 0:
        ds = ds * (1 - t * t)
    ds = ds * scale
    dq = torch.matmul(ds, kh)
    dk = torch.matmul(ds.transpose(-1, -2), qh)

    def fold(g: torch.Tensor) -> torch.Tensor:  # (B, Hq, Sk, D) -> (B, Sk, Hkv, D)
        g = g.reshape(batch, heads_kv, group, seqlen_k, head_dim).sum(2)
        return g.transpose(1, 2)

    return (
        dq.transpose(1, 2).to(q.dtype),
        fold(dk).to(k.dtype),
        fold(dv).to(v.dtype),
    )


def attention_varlen_grad_ref(
    dout: torch.Tensor,
    dlse: torch.Tensor | None,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`attention_grad_ref` per sequence of a packed batch (tokens past the last
    offset get zero gradients)."""
    cq = [int(x) for x in cu_seqlens_q.tolist()]
    ck = [int(x) for x in cu_seqlens_k.tolist()]
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for b in range(len(cq) - 1):
        sq, sk = slice(cq[b], cq[b + 1]), slice(ck[b], ck[b + 1])
        g = attention_grad_ref(
            dout[sq].unsqueeze(0),
            None if dlse is None else dlse[:, sq].unsqueeze(0),
            q[sq].unsqueeze(0),
            k[sk].unsqueeze(0),
            v[sk].unsqueeze(0),
            **kwargs,
        )
        dq[sq], dk[sk], dv[sk] = g[0][0], g[1][0], g[2][0]
    return dq, dk, dv
