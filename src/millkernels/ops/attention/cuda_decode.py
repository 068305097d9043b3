"""The ``cuda`` backend of ``attention_decode``: a thin wrapper over ``millkernels._C``.

The CUDA kernel (csrc/attention/decode.cu) is templated on head_dim 64, 128 and 256 and on the
number of query heads a CTA handles (1, 2, 4 or 8 of a GQA group); K and V rows move 16 bytes
per lane. The capability table sends GQA groups of 4 and more to Triton
(``capabilities.CUDA_DECODE_MAX_GROUP``); the kernel still serves them when called directly.
Splits follow :mod:`.decode_plan` like the Triton kernel: the grid's split count from the
capacity, each sequence's live splits from its length (``split_tokens`` passed through).
The C++ side checks ranks, dtypes, shapes, head_dim, strides, 16-byte alignment and devices
(``ValueError`` naming the argument), then that a GPU exists (``RuntimeError``). The values
inside ``block_table`` / ``cache_seqlens`` are checked by
:func:`millkernels.ops.attention.api.check_decode_values`.
"""

from __future__ import annotations

import torch

from millkernels._native import require_native, view
from millkernels.ops.analysis_spec import CudaHot, Expect
from millkernels.ops.attention import decode_plan
from millkernels.ops.attention.decode_plan import heads_per_cta

__all__ = ["attention_decode", "heads_per_cta", "launch", "num_splits"]

# csrc/attention/decode.cu: `millkernels analyze --check` fails if these spill.
_NO_SPILL = (Expect("spill_bytes", "==", 0, "every template's state fits in registers"),)
ANALYSIS = (
    CudaHot(
        ("decode_split_kernel", "decode_combine_kernel"),
        expect={"decode_split_kernel": _NO_SPILL, "decode_combine_kernel": _NO_SPILL},
    ),
)


def num_splits(batch: int, heads_q: int, heads_kv: int, capacity: int, sms: int | None) -> int:
    """Splits per sequence (:func:`.decode_plan.num_splits`); a CTA handles
    :func:`.decode_plan.heads_per_cta` query heads of one key/value head."""
    per_cta = heads_per_cta(heads_q // heads_kv)
    return decode_plan.num_splits(batch, heads_q, heads_kv, capacity, sms, per_cta)


def launch(
    q, k_cache, v_cache, block_table, cache_seqlens, out, lse, o_partial, lse_partial,
    splits: int, softmax_scale: float, softcap: float, split_tokens: int | None = None,
) -> None:  # fmt: skip
    """Call the C++ binding with explicit buffers (tests reach its checks through this).
    ``split_tokens`` None: :func:`.decode_plan.split_tokens` for q's device."""
    if split_tokens is None:
        split_tokens = decode_plan.split_tokens(q.device)
    require_native().attention_decode(
        view(q, "q"), view(k_cache, "k_cache"), view(v_cache, "v_cache"),
        view(block_table, "block_table"), view(cache_seqlens, "cache_seqlens"),
        view(out, "out"), view(lse, "lse"), view(o_partial, "o_partial"),
        view(lse_partial, "lse_partial"), int(splits), int(split_tokens),
        float(softmax_scale), float(softcap),
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

    ``splits`` overrides the grid's split count (tests use it to cover the combine)."""
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
