"""Reference paged-KV decode attention in plain PyTorch: the semantics every backend matches.

One query token per sequence attends to the first ``cache_seqlens[b]`` tokens of its cache,
which live in pages of ``block_size`` tokens: token ``t`` of sequence ``b`` is row
``t % block_size`` of page ``block_table[b, t // block_size]``. Query head ``i`` uses key/value
head ``i // (heads_q // heads_kv)`` (GQA; MQA when heads_kv == 1). Scores are
``(q . k) * softmax_scale``, optionally soft-capped to ``softcap * tanh(x / softcap)``; ``lse``
is the natural log of the sum of exp(scores). A sequence with no cached token gives zeros and
``lse = -inf``. Cache rows a sequence does not read never affect its output (NaN there stays
out); a NaN in a row it reads makes its output NaN.

Also the CPU fallback (``backend="reference"``) and the truth the tests compare against.
"""

from __future__ import annotations

import math

import torch


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
    scale = 1.0 / math.sqrt(head_dim) if softmax_scale is None else float(softmax_scale)
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
