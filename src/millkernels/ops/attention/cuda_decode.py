"""The ``cuda`` backend of ``attention_decode``: a thin wrapper over ``millkernels._C``.

The CUDA kernel (csrc/attention/decode.cu) is templated on head_dim 64, 128 and 256 and on the
number of query heads a CTA handles (1, 2, 4 or 8 of a GQA group); K and V rows move 16 bytes
per lane. The C++ side checks ranks, dtypes, shapes, head_dim, strides, 16-byte alignment and
devices (``ValueError`` naming the argument), then that a GPU exists (``RuntimeError``). The
values inside ``block_table`` / ``cache_seqlens`` are checked by
:func:`millkernels.ops.attention.api.check_decode_values`.
"""

from __future__ import annotations

import torch

from millkernels._native import require_native, view
from millkernels.ops.analysis_spec import CudaHot
from millkernels.ops.attention import decode_plan
from millkernels.ops.attention.decode_plan import heads_per_cta

__all__ = ["attention_decode", "heads_per_cta", "launch", "num_splits"]

# csrc/attention/decode.cu: `millkernels analyze --check` fails if these spill.
ANALYSIS = (CudaHot(("decode_split_kernel", "decode_combine_kernel")),)


def num_splits(batch: int, heads_q: int, heads_kv: int, capacity: int, sms: int | None) -> int:
    """Splits per sequence (:func:`.decode_plan.num_splits`); a CTA handles
    :func:`.decode_plan.heads_per_cta` query heads of one key/value head."""
    per_cta = heads_per_cta(heads_q // heads_kv)
    return decode_plan.num_splits(batch, heads_q, heads_kv, capacity, sms, per_cta)


def launch(
    q, k_cache, v_cache, block_table, cache_seqlens, out, lse, o_partial, lse_partial,
    splits: int, softmax_scale: float, softcap: float,
) -> None:  # fmt: skip
    """Call the C++ binding with explicit buffers (tests reach its checks through this)."""
    require_native().attention_decode(
        view(q, "q"), view(k_cache, "k_cache"), view(v_cache, "v_cache"),
        view(block_table, "block_table"), view(cache_seqlens, "cache_seqlens"),
        view(out, "out"), view(lse, "lse"), view(o_partial, "o_partial"),
        view(lse_partial, "lse_partial"), int(splits), float(softmax_scale), float(softcap),
    )  # fmt: skip


def attention_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    cache_seqlens: torch.Tensor,
    softmax_scale: float,
    softcap: float,
    splits: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Allocate the outputs (and the split workspace), launch; returns ``(out, lse)``.

    ``splits`` overrides the split count (tests use it to cover the combine)."""
    batch, heads_q, _ = q.shape
    block_size, heads_kv = k_cache.shape[1], k_cache.shape[2]
    if splits is None:
        capacity = block_table.shape[1] * block_size
        splits = num_splits(batch, heads_q, heads_kv, capacity, decode_plan.sm_count(q.device))
    out, lse, po, plse = decode_plan.buffers(q, splits)
    launch(
        q, k_cache, v_cache, block_table, cache_seqlens, out, lse, po, plse,
        splits, softmax_scale, softcap,
    )  # fmt: skip
    return out, lse
