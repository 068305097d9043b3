"""Plain-PyTorch attention (training and paged decode): the semantics every backend matches,
the CPU fallback, the tests' truth.

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
from collections.abc import Iterator
from typing import NamedTuple

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


class _Softmax(NamedTuple):
    """The pieces of one attention's softmax, in (batch, heads_q, seqlen, ...) layout."""

    qh: torch.Tensor
    kh: torch.Tensor
    vh: torch.Tensor
    scale: float
    capped: torch.Tensor | None  # tanh(x / softcap) when softcap > 0 (its backward needs it)
    row_max: torch.Tensor  # finite (0 for rows that see no key), no gradient
    denom: torch.Tensor  # sum of exp(scores - row_max); 0 for rows that see no key
    p: torch.Tensor  # the probabilities; rows that see no key are 0


def _softmax(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool,
    softmax_scale: float | None,
    window: tuple[int, int],
    softcap: float,
    dt: torch.dtype,
) -> _Softmax:
    """Scores, masks and probabilities of dense attention in ``dt`` (seqlens above 0)."""
    scale = default_scale(q.shape[-1]) if softmax_scale is None else float(softmax_scale)
    heads_q, seqlen_q, seqlen_k = q.shape[2], q.shape[1], k.shape[1]
    qh = q.to(dt).transpose(1, 2)  # (B, H, Sq, D)
    kh = _expand_kv(k.to(dt), heads_q).transpose(1, 2)
    vh = _expand_kv(v.to(dt), heads_q).transpose(1, 2)
    scores = torch.matmul(qh, kh.transpose(-1, -2)) * scale
    capped = None
    if softcap > 0:
        capped = torch.tanh(scores / softcap)
        scores = softcap * capped
    mask = visible_mask(seqlen_q, seqlen_k, causal, window, q.device)
    scores = scores.masked_fill(~mask, float("-inf"))
    row_max = scores.amax(dim=-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max)).detach()
    e = torch.exp(scores - row_max)
    denom = e.sum(dim=-1, keepdim=True)
    p = e / torch.where(denom > 0, denom, torch.ones_like(denom))
    return _Softmax(qh, kh, vh, scale, capped, row_max, denom, p)


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
    heads_q, seqlen_q, seqlen_k = q.shape[2], q.shape[1], k.shape[1]
    if seqlen_k == 0 or seqlen_q == 0:  # nothing to see: zeros and -inf
        lse = torch.full((q.shape[0], heads_q, seqlen_q), float("-inf"), device=q.device)
        return torch.zeros_like(q), lse
    sm = _softmax(q, k, v, causal, softmax_scale, window, softcap, dt)
    out = torch.matmul(sm.p.to(dt), sm.vh).transpose(1, 2)
    seen = sm.denom > 0
    safe = torch.where(seen, sm.denom, torch.ones_like(sm.denom))
    lse = torch.where(seen, torch.log(safe) + sm.row_max, torch.full_like(safe, float("-inf")))
    return out.to(q.dtype), lse.squeeze(-1).float()


def _sequences(
    cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor
) -> Iterator[tuple[slice, slice]]:
    """The (query, key) token slices of each sequence of a packed batch."""
    cq = [int(x) for x in cu_seqlens_q.tolist()]
    ck = [int(x) for x in cu_seqlens_k.tolist()]
    for b in range(len(cq) - 1):
        yield slice(cq[b], cq[b + 1]), slice(ck[b], ck[b + 1])


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
    outs, lses = [], []
    end = 0
    for sq, sk in _sequences(cu_seqlens_q, cu_seqlens_k):
        end = sq.stop
        o, lse = attention_ref(
            q[sq].unsqueeze(0),
            k[sk].unsqueeze(0),
            v[sk].unsqueeze(0),
            causal=causal,
            softmax_scale=softmax_scale,
            window=window,
            softcap=softcap,
            compute_dtype=compute_dtype,
        )
        outs.append(o[0])
        lses.append(lse[0])
    tail = q.shape[0] - end
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
    """(dq, dk, dv) by autograd through the reference (dense, or varlen with both cu_seqlens)."""
    if (cu_seqlens_q is None) != (cu_seqlens_k is None):
        raise ValueError("cu_seqlens_q, cu_seqlens_k: expected both (varlen) or neither, got one")
    with torch.enable_grad():
        qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))
        if cu_seqlens_q is None or cu_seqlens_k is None:
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
    batch, seqlen_q, heads_q, head_dim = q.shape
    seqlen_k, heads_kv = k.shape[1], k.shape[2]
    group = heads_q // heads_kv
    if seqlen_k == 0 or seqlen_q == 0:
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    sm = _softmax(q, k, v, causal, softmax_scale, window, softcap, compute_dtype)
    p, vh = sm.p, sm.vh
    doh = dout.to(compute_dtype).transpose(1, 2)
    out = torch.matmul(p, vh)
    dv = torch.matmul(p.transpose(-1, -2), doh)
    dp = torch.matmul(doh, vh.transpose(-1, -2))
    delta = (doh * out).sum(-1, keepdim=True)
    if dlse is not None:
        delta = delta - dlse.to(compute_dtype).unsqueeze(-1)
    ds = p * (dp - delta)
    if sm.capped is not None:  # set exactly when softcap > 0
        ds = ds * (1 - sm.capped * sm.capped)
    ds = ds * sm.scale
    dq = torch.matmul(ds, sm.kh)
    dk = torch.matmul(ds.transpose(-1, -2), sm.qh)

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
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for sq, sk in _sequences(cu_seqlens_q, cu_seqlens_k):
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


# ---------------------------------------------------------------------------- paged decode
#
# One query token per sequence attends to the first ``cache_seqlens[b]`` tokens of its cache,
# which live in pages of ``block_size`` tokens: token ``t`` of sequence ``b`` is row
# ``t % block_size`` of page ``block_table[b, t // block_size]``. Same scores, softcap, GQA
# and lse as above; a sequence with no cached token gives zeros and ``lse = -inf``. Cache rows
# a sequence does not read never affect its output (NaN there stays out); a NaN in a row it
# reads makes its output NaN.


def gather_kv(
    cache: torch.Tensor, block_table: torch.Tensor, length: int | None = None
) -> torch.Tensor:
    """The cache pages of each sequence, in order: (batch, length, heads_kv, head_dim).

    ``length`` defaults to the table's capacity (max_blocks_per_seq * block_size); pages past a
    sequence's last token are gathered too (their contents are masked out by the caller), so
    every table entry read must be a valid page index.
    """
    _, block_size, heads_kv, head_dim = cache.shape
    batch, max_blocks = block_table.shape
    capacity = max_blocks * block_size
    length = capacity if length is None else length
    pages = cache[block_table.long()]  # (batch, max_blocks, block_size, heads_kv, head_dim)
    return pages.reshape(batch, capacity, heads_kv, head_dim)[:, :length]


def attention_decode_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    cache_seqlens: torch.Tensor,
    softmax_scale: float | None = None,
    softcap: float = 0.0,
    *,
    upcast: bool = True,
    out_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paged decode attention; returns ``(out, lse)``.

    Parameters
    ----------
    q
        (batch, heads_q, head_dim).
    k_cache, v_cache
        (num_blocks, block_size, heads_kv, head_dim).
    block_table
        int32 (batch, max_blocks_per_seq); only the entries of pages that hold a sequence's
        tokens are read (others may hold anything, e.g. -1 padding).
    cache_seqlens
        int32 (batch,), 0 <= cache_seqlens[b] <= max_blocks_per_seq * block_size.
    upcast
        True (default): compute in float32 (float64 inputs stay float64). False: compute in the
        input dtype, as a naive implementation would (the baseline of the flash 2x rule).
    out_dtype
        dtype of ``out``; default q's. Tests ask for float32: the truth of the flash 2x rule
        must not be rounded to the input dtype.

    Returns
    -------
    out
        (batch, heads_q, head_dim), ``out_dtype`` (default q's dtype).
    lse
        (batch, heads_q) float32, natural log; -inf for a sequence with no cached token.
    """
    batch, heads_q, head_dim = q.shape
    heads_kv = k_cache.shape[2]
    group = heads_q // heads_kv
    scale = default_scale(head_dim) if softmax_scale is None else float(softmax_scale)
    lens = cache_seqlens.long()
    # gather only the pages the longest sequence needs (reads no entry past them)
    longest = int(lens.max().item()) if batch else 0
    block_size = k_cache.shape[1]
    used_blocks = -(-longest // block_size)
    table = block_table[:, :used_blocks]
    if batch:  # entries past each sequence's last page may be garbage: point them at page 0
        cols = torch.arange(used_blocks, device=table.device)
        needed = cols[None, :] * block_size < lens[:, None]
        table = torch.where(needed, table, torch.zeros_like(table))
    compute = q.dtype
    if upcast and q.dtype != torch.float64:
        compute = torch.float32
    k = gather_kv(k_cache, table).to(compute)  # (batch, L, heads_kv, head_dim)
    v = gather_kv(v_cache, table).to(compute)
    length = k.shape[1]
    qg = q.to(compute).reshape(batch, heads_kv, group, head_dim)
    scores = torch.einsum("bhgd,blhd->bhgl", qg, k) * scale
    if softcap > 0:
        scores = softcap * torch.tanh(scores / softcap)
    visible = torch.arange(length, device=q.device)[None, :] < lens[:, None]  # (batch, L)
    scores = scores.masked_fill(~visible[:, None, None, :], float("-inf"))
    lse = torch.logsumexp(scores.float(), dim=-1)  # (batch, heads_kv, group)
    probs = torch.softmax(scores, dim=-1)
    # a sequence with no token has an all -inf row (softmax NaN): zeros. Only those rows: a
    # NaN from a cached token the sequence does read must reach the output, as in the kernels
    probs = probs.masked_fill((lens == 0)[:, None, None, None], 0.0)
    # rows past a sequence's end (their pages are gathered too) never reach the output, even
    # when they hold NaN or inf (0 * NaN is NaN): the kernels never load them
    v = v.masked_fill(~visible[:, :, None, None], 0.0)
    out = torch.einsum("bhgl,blhd->bhgd", probs, v)
    out = out.reshape(batch, heads_q, head_dim).to(out_dtype or q.dtype)
    return out, lse.reshape(batch, heads_q).float()
