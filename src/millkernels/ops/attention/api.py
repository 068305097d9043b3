"""Public attention functions: ``attention`` and ``attention_varlen`` (forward and backward)
and ``attention_decode`` (paged KV cache).

Each validates its arguments (``TypeError`` / ``ValueError`` naming the argument), resolves
the backend once through the family's capability table (:mod:`.capabilities`), and calls the
custom op of :mod:`.custom_ops` with the resolved name; the ops carry autograd and
``torch.compile`` support. The values inside index tensors (``cu_seqlens_*``,
``block_table``, ``cache_seqlens``) are checked by the ops when they run.

Decode fast path: inside a captured CUDA graph (``torch.cuda.graph``, ``torch.compile(mode=
"reduce-overhead")``) a replay runs only the kernels: no validation, no dispatch, no sync.
"""

from __future__ import annotations

import math
from typing import Any, Literal, overload

import torch

from millkernels import runtime
from millkernels.dispatch import constant_under_compile
from millkernels.ops.attention import custom_ops, reference
from millkernels.ops.attention.capabilities import (
    DECODE_OP,
    MAX_HEAD_DIM,
    REFERENCE_DTYPES,
    TABLE,
    aligned16,
    facts_from_values,
)
from millkernels.ops.attention.custom_ops import check_decode_values, check_varlen_values

__all__ = [
    "attention",
    "attention_decode",
    "attention_varlen",
    "check_decode_values",
    "check_varlen_values",
    "scale_and_softcap",
]

_Out = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


# ---------------------------------------------------------------------------- validation


def _tensor(name: str, x: Any, ndim: int, layout: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor {layout}, got {type(x).__name__}")
    if x.dim() != ndim:
        raise ValueError(f"{name}: expected a {ndim}-d tensor {layout}, got shape {tuple(x.shape)}")
    if str(x.dtype).removeprefix("torch.") not in REFERENCE_DTYPES:
        raise TypeError(
            f"{name}: expected float16 or bfloat16 (float32 on the reference backend), "
            f"got {x.dtype}"
        )
    if x.stride(-1) != 1 and x.shape[-1] > 1:
        raise ValueError(
            f"{name}: expected a unit stride in the last (head_dim) dimension, got strides "
            f"{tuple(x.stride())} (call .contiguous())"
        )
    return x


def _flag(name: str, x: Any) -> bool:
    if not isinstance(x, bool):
        raise TypeError(f"{name}: expected a bool, got {type(x).__name__}")
    return x


def scale_and_softcap(softmax_scale: Any, softcap: Any, head_dim: int) -> tuple[float, float]:
    """The checked ``(softmax_scale, softcap)`` of every attention op (training and decode).

    ``softmax_scale``: a finite float > 0, or None for ``1 / sqrt(head_dim)``; ``softcap``: a
    finite float >= 0 (0 disables it). Raises TypeError (not a number) or ValueError.
    """
    if softmax_scale is None:
        scale = reference.default_scale(head_dim)
    else:
        if isinstance(softmax_scale, bool) or not isinstance(softmax_scale, (int, float)):
            raise TypeError(f"softmax_scale: expected a float or None, got {softmax_scale!r}")
        scale = float(softmax_scale)
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"softmax_scale: expected a finite positive float, got {scale}")
    if isinstance(softcap, bool) or not isinstance(softcap, (int, float)):
        raise TypeError(f"softcap: expected a float, got {softcap!r}")
    if not math.isfinite(float(softcap)) or softcap < 0:
        raise ValueError(f"softcap: expected a finite float >= 0 (0 disables it), got {softcap}")
    return scale, float(softcap)


def _common(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    head_axis: int,
    causal: Any,
    softmax_scale: Any,
    window: Any,
    softcap: Any,
    return_lse: Any,
    deterministic: Any,
) -> tuple[float, tuple[int, int], float]:
    """Checks shared by dense and varlen; returns (scale, window with causal folded, softcap)."""
    for name, x in (("k", k), ("v", v)):
        if x.dtype != q.dtype:
            raise TypeError(
                f"{name}: expected q's dtype {q.dtype} (no mixed dtypes), got {x.dtype}"
            )
        if x.device != q.device:
            raise ValueError(f"{name}: expected q's device {q.device}, got {x.device}")
    head_dim = q.shape[-1]
    if head_dim % 8 or not 8 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(
            f"q: head_dim (last dimension) must be a multiple of 8 in [8, {MAX_HEAD_DIM}], "
            f"got {head_dim}"
        )
    for name, x in (("k", k), ("v", v)):
        if x.shape[-1] != head_dim:
            raise ValueError(f"{name}: expected head_dim {head_dim} like q, got {x.shape[-1]}")
    if v.shape != k.shape:
        raise ValueError(f"v: expected the shape of k {tuple(k.shape)}, got {tuple(v.shape)}")
    heads_q, heads_kv = q.shape[head_axis], k.shape[head_axis]
    if heads_kv == 0 or heads_q % heads_kv:
        raise ValueError(f"k: heads_kv ({heads_kv}) must divide heads_q ({heads_q}) (GQA / MQA)")
    _flag("causal", causal)
    _flag("return_lse", return_lse)
    _flag("deterministic", deterministic)
    scale, cap = scale_and_softcap(softmax_scale, softcap, head_dim)
    if (
        not isinstance(window, (tuple, list))
        or len(window) != 2
        or not all(isinstance(w, int) and not isinstance(w, bool) for w in window)
    ):
        raise TypeError(f"window: expected a (left, right) pair of ints, got {window!r}")
    if window[0] < -1 or window[1] < -1:
        raise ValueError(f"window: sides are >= 0, or -1 for unbounded; got {tuple(window)}")
    return scale, reference.effective_window(causal, tuple(window)), cap


def _cu_seqlens(name: str, cu: Any, q: torch.Tensor, total: int, what: str) -> torch.Tensor:
    if not isinstance(cu, torch.Tensor):
        raise TypeError(f"{name}: expected an int32 torch.Tensor, got {type(cu).__name__}")
    if cu.dtype != torch.int32:
        raise TypeError(f"{name}: expected int32, got {cu.dtype}")
    if cu.dim() != 1 or cu.numel() < 2:
        raise ValueError(
            f"{name}: expected shape (batch + 1,) with batch >= 1, got {tuple(cu.shape)}"
        )
    if cu.device != q.device:
        raise ValueError(f"{name}: expected q's device {q.device}, got {cu.device}")
    if not cu.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous tensor")
    return cu


def _select(op: str, q: torch.Tensor, backend: str, aligned: bool = True, group: int = 1) -> str:
    index = q.device.index if q.device.type == "cuda" else None
    dtype = str(q.dtype).removeprefix("torch.")
    return _select_constant(
        op, q.device.type, index, dtype, int(q.shape[-1]), aligned, backend, group
    )


@constant_under_compile
def _select_constant(
    op: str,
    device: str,
    index: int | None,
    dtype: str,
    head_dim: int,
    aligned: bool,
    backend: str,
    group: int = 1,
) -> str:
    """Backend choice from plain facts; under torch.compile it runs once at trace time and
    its answer is baked into the graph (the capability queries are not traceable)."""
    cap = runtime.capability(index) if device == "cuda" else None
    facts = facts_from_values(
        op, device, dtype, head_dim, capability=cap, aligned=aligned, group=group
    )
    return TABLE.select(backend, facts, op)


# ---------------------------------------------------------------------------- decode validation


def _decode_tensor(name: str, t: Any, ndim: int, what: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor {what}, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions {what}, got shape {tuple(t.shape)}")
    if t.numel() and t.stride(-1) != 1:
        raise ValueError(
            f"{name}: expected a unit stride in the last dimension, got strides {t.stride()}"
        )


def _decode_arguments(
    q: Any,
    k_cache: Any,
    v_cache: Any,
    block_table: Any,
    cache_seqlens: Any,
    softmax_scale: Any,
    softcap: Any,
) -> float:
    """Validate everything but the values of block_table / cache_seqlens; return the scale.

    Raises TypeError (a non-tensor, an unsupported or mixed dtype) or ValueError (ranks,
    shapes, devices, head_dim, strides, scale, softcap), naming the argument. The scale and
    softcap rules are the training ops' (:func:`~millkernels.ops.attention.api.
    scale_and_softcap`).
    """
    _decode_tensor("q", q, 3, "(batch, heads_q, head_dim)")
    layout = "(num_blocks, block_size, heads_kv, head_dim)"
    _decode_tensor("k_cache", k_cache, 4, layout)
    _decode_tensor("v_cache", v_cache, 4, layout)
    _decode_tensor("block_table", block_table, 2, "(batch, max_blocks_per_seq)")
    _decode_tensor("cache_seqlens", cache_seqlens, 1, "(batch,)")
    if q.dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"q: expected dtype float16 or bfloat16, got {q.dtype}")
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        if t.dtype != q.dtype:
            raise TypeError(f"{name}: expected q's dtype {q.dtype}, got {t.dtype}")
    for name, t in (("block_table", block_table), ("cache_seqlens", cache_seqlens)):
        if t.dtype != torch.int32:
            raise TypeError(f"{name}: expected dtype int32, got {t.dtype}")
    for name, t in (
        ("k_cache", k_cache),
        ("v_cache", v_cache),
        ("block_table", block_table),
        ("cache_seqlens", cache_seqlens),
    ):
        if t.device != q.device:
            raise ValueError(f"{name}: expected q's device {q.device}, got {t.device}")
    batch, heads_q, head_dim = q.shape
    _, block_size, heads_kv, kv_dim = k_cache.shape
    if tuple(v_cache.shape) != tuple(k_cache.shape):
        raise ValueError(
            f"v_cache: expected k_cache's shape {tuple(k_cache.shape)}, got {tuple(v_cache.shape)}"
        )
    if head_dim % 8 or not 8 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(
            f"q: expected head_dim a multiple of 8 in [8, {MAX_HEAD_DIM}], got {head_dim}"
        )
    if kv_dim != head_dim:
        raise ValueError(f"k_cache: expected q's head_dim {head_dim}, got {kv_dim}")
    if block_size < 1:
        raise ValueError(f"k_cache: expected block_size >= 1, got {block_size}")
    if heads_kv < 1 or heads_q % heads_kv:
        raise ValueError(
            f"q: expected heads_q a multiple of k_cache's heads_kv {heads_kv}, got {heads_q}"
        )
    if block_table.shape[0] != batch:
        raise ValueError(
            f"block_table: expected q's batch {batch} rows, got shape {tuple(block_table.shape)}"
        )
    if cache_seqlens.shape[0] != batch:
        raise ValueError(
            f"cache_seqlens: expected q's batch {batch} entries, got {cache_seqlens.shape[0]}"
        )
    return scale_and_softcap(softmax_scale, softcap, head_dim)[0]


# ---------------------------------------------------------------------------- public


@overload
def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = ...,
    softmax_scale: float | None = ...,
    window: tuple[int, int] = ...,
    softcap: float = ...,
    return_lse: Literal[False] = ...,
    deterministic: bool = ...,
    backend: str = ...,
) -> torch.Tensor: ...


@overload
def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = ...,
    softmax_scale: float | None = ...,
    window: tuple[int, int] = ...,
    softcap: float = ...,
    return_lse: Literal[True],
    deterministic: bool = ...,
    backend: str = ...,
) -> tuple[torch.Tensor, torch.Tensor]: ...


@overload
def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = ...,
    softmax_scale: float | None = ...,
    window: tuple[int, int] = ...,
    softcap: float = ...,
    return_lse: bool = ...,
    deterministic: bool = ...,
    backend: str = ...,
) -> _Out: ...


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    softmax_scale: float | None = None,
    window: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    return_lse: bool = False,
    deterministic: bool = False,
    backend: str = "auto",
) -> _Out:
    """Scaled dot-product attention (FlashAttention semantics), differentiable.

    Parameters
    ----------
    q : Tensor (batch, seqlen_q, heads_q, head_dim), float16 or bfloat16
        (float32 only on the reference backend). Unit stride in the last dimension.
    k, v : Tensor (batch, seqlen_k, heads_kv, head_dim), q's dtype and device;
        ``heads_q`` a multiple of ``heads_kv`` (GQA / MQA).
    causal : bool
        Causal mask aligned to the bottom-right corner: row i sees key j when
        ``j <= i + seqlen_k - seqlen_q``.
    softmax_scale : float, optional
        Scale of ``q . k``; default ``1 / sqrt(head_dim)``.
    window : (int, int)
        Sliding window ``(left, right)``: row i sees j when
        ``i + seqlen_k - seqlen_q - left <= j <= i + seqlen_k - seqlen_q + right``;
        -1 is unbounded on that side.
    softcap : float
        When > 0, each score x becomes ``softcap * tanh(x / softcap)``.
    return_lse : bool
        Also return the log-sum-exp of the scores (natural log) per row.
    deterministic : bool
        A bitwise-reproducible backward. The Triton backward otherwise adds dQ with fp32
        atomics (one pass, faster, summation order varies); with True it computes dQ in a
        separate pass in a fixed order. The reference is always reproducible.
    backend : str
        "auto", "triton" or "reference" ("cuda" has no training kernel).

    Returns
    -------
    out : Tensor (batch, seqlen_q, heads_q, head_dim), q's dtype. Rows that see no key are 0.
    lse : Tensor (batch, heads_q, seqlen_q) float32, only with ``return_lse``
        (-inf for rows that see no key). Gradients may flow through it.

    Raises
    ------
    TypeError, ValueError
        Bad arguments (the message names the argument).
    millkernels.dispatch.BackendUnavailable
        ``backend`` cannot serve the call (the message says why).
    """
    _tensor("q", q, 4, "(batch, seqlen_q, heads_q, head_dim)")
    _tensor("k", k, 4, "(batch, seqlen_k, heads_kv, head_dim)")
    _tensor("v", v, 4, "(batch, seqlen_k, heads_kv, head_dim)")
    if k.shape[0] != q.shape[0]:
        raise ValueError(f"k: expected batch {q.shape[0]} like q, got {k.shape[0]}")
    scale, (wl, wr), cap = _common(
        q, k, v, 2, causal, softmax_scale, window, softcap, return_lse, deterministic
    )
    name = _select("attention", q, backend)
    out, lse = custom_ops.attention_fwd(q, k, v, scale, wl, wr, cap, name, deterministic)
    return (out, lse) if return_lse else out


@overload
def attention_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    *,
    causal: bool = ...,
    softmax_scale: float | None = ...,
    window: tuple[int, int] = ...,
    softcap: float = ...,
    return_lse: Literal[False] = ...,
    deterministic: bool = ...,
    backend: str = ...,
) -> torch.Tensor: ...


@overload
def attention_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    *,
    causal: bool = ...,
    softmax_scale: float | None = ...,
    window: tuple[int, int] = ...,
    softcap: float = ...,
    return_lse: Literal[True],
    deterministic: bool = ...,
    backend: str = ...,
) -> tuple[torch.Tensor, torch.Tensor]: ...


@overload
def attention_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    *,
    causal: bool = ...,
    softmax_scale: float | None = ...,
    window: tuple[int, int] = ...,
    softcap: float = ...,
    return_lse: bool = ...,
    deterministic: bool = ...,
    backend: str = ...,
) -> _Out: ...


def attention_varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    *,
    causal: bool = False,
    softmax_scale: float | None = None,
    window: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    return_lse: bool = False,
    deterministic: bool = False,
    backend: str = "auto",
) -> _Out:
    """Attention over a packed batch of variable-length sequences, differentiable.

    Sequence b's queries are ``q[cu_seqlens_q[b]:cu_seqlens_q[b + 1]]`` and its keys and
    values ``k[cu_seqlens_k[b]:cu_seqlens_k[b + 1]]``; masks align per sequence (see
    :func:`attention` for the keywords).

    Parameters
    ----------
    q : Tensor (total_q, heads_q, head_dim)
    k, v : Tensor (total_k, heads_kv, head_dim)
    cu_seqlens_q, cu_seqlens_k : Tensor int32 (batch + 1,)
        Offsets starting at 0, non-decreasing, at most total_q / total_k; on q's device.
    max_seqlen_q, max_seqlen_k : int
        At least the longest query / key sequence (they size the launch grid).

    Returns
    -------
    out : Tensor (total_q, heads_q, head_dim), q's dtype (tokens past
        ``cu_seqlens_q[-1]`` are 0).
    lse : Tensor (heads_q, total_q) float32, only with ``return_lse``.

    Raises
    ------
    TypeError, ValueError, millkernels.dispatch.BackendUnavailable
        As :func:`attention`; also for bad ``cu_seqlens_*`` (not int32, wrong length,
        decreasing, not starting at 0, beyond the tokens) or a ``max_seqlen_*`` below the
        longest sequence. Checking the offsets' values reads them on the host (one
        synchronisation); under ``torch.compile`` only CPU offsets are checked (GPU ones
        would need a synchronisation inside the graph).
    """
    _tensor("q", q, 3, "(total_q, heads_q, head_dim)")
    _tensor("k", k, 3, "(total_k, heads_kv, head_dim)")
    _tensor("v", v, 3, "(total_k, heads_kv, head_dim)")
    scale, (wl, wr), cap = _common(
        q, k, v, 1, causal, softmax_scale, window, softcap, return_lse, deterministic
    )
    _cu_seqlens("cu_seqlens_q", cu_seqlens_q, q, q.shape[0], "q")
    _cu_seqlens("cu_seqlens_k", cu_seqlens_k, q, k.shape[0], "k")
    if cu_seqlens_k.numel() != cu_seqlens_q.numel():
        raise ValueError(
            f"cu_seqlens_k: expected {cu_seqlens_q.numel()} entries like cu_seqlens_q "
            f"(batch + 1), got {cu_seqlens_k.numel()}"
        )
    for name, m in (("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k)):
        if isinstance(m, bool) or not isinstance(m, int):
            raise TypeError(f"{name}: expected an int, got {m!r}")
        if m < 0:
            raise ValueError(f"{name}: expected an int >= 0, got {m}")
    check_varlen_values(
        cu_seqlens_q, cu_seqlens_k, q.shape[0], k.shape[0], max_seqlen_q, max_seqlen_k
    )
    name = _select("attention_varlen", q, backend)
    out, lse = custom_ops.attention_varlen_fwd(
        q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, wl, wr, cap, name,
        deterministic,
    )  # fmt: skip
    return (out, lse) if return_lse else out


@overload
def attention_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    cache_seqlens: torch.Tensor,
    *,
    softmax_scale: float | None = ...,
    softcap: float = ...,
    return_lse: Literal[False] = ...,
    backend: str = ...,
) -> torch.Tensor: ...


@overload
def attention_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    cache_seqlens: torch.Tensor,
    *,
    softmax_scale: float | None = ...,
    softcap: float = ...,
    return_lse: Literal[True],
    backend: str = ...,
) -> tuple[torch.Tensor, torch.Tensor]: ...


@overload
def attention_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    cache_seqlens: torch.Tensor,
    *,
    softmax_scale: float | None = ...,
    softcap: float = ...,
    return_lse: bool = ...,
    backend: str = ...,
) -> _Out: ...


def attention_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    cache_seqlens: torch.Tensor,
    *,
    softmax_scale: float | None = None,
    softcap: float = 0.0,
    return_lse: bool = False,
    backend: str = "auto",
) -> _Out:
    """Attention of one new query token per sequence over a paged KV cache.

    Parameters
    ----------
    q
        (batch, heads_q, head_dim), float16 or bfloat16; head_dim a multiple of 8, <= 256.
    k_cache, v_cache
        (num_blocks, block_size, heads_kv, head_dim), q's dtype and device; heads_q a multiple
        of heads_kv (GQA; MQA with heads_kv = 1). The new token's key and value are already in.
    block_table
        int32 (batch, max_blocks_per_seq): token t of sequence b is row ``t % block_size`` of
        page ``block_table[b, t // block_size]``. Entries past a sequence's last page are not
        read and may hold anything (e.g. -1 padding).
    cache_seqlens
        int32 (batch,): valid cached tokens per sequence, 0 <= n <= max_blocks_per_seq *
        block_size. A sequence with 0 tokens gives zeros and lse = -inf.
    softmax_scale
        Scores are ``(q . k) * softmax_scale``, a finite float > 0; default
        ``1 / sqrt(head_dim)``.
    softcap
        When > 0, each score x becomes ``softcap * tanh(x / softcap)``.
    return_lse
        Also return ``lse`` (batch, heads_q) float32: the natural log of the sum of
        exp(scores).
    backend
        "auto", "cuda", "triton" or "reference" (``MILLKERNELS_BACKEND`` overrides "auto").

    Returns
    -------
    out, or (out, lse)
        out: (batch, heads_q, head_dim), q's dtype, contiguous.

    Raises
    ------
    TypeError, ValueError
        A bad argument (rank, shape, dtype, device, head_dim, stride, a block_table entry out
        of range, cache_seqlens beyond the table's capacity), naming it. The value checks of
        block_table and cache_seqlens cost one device sync and are skipped while a CUDA graph
        is being captured.
    BackendUnavailable
        The named backend cannot serve the call (the message says why).
    """
    scale = _decode_arguments(
        q, k_cache, v_cache, block_table, cache_seqlens, softmax_scale, softcap
    )
    group = q.shape[1] // k_cache.shape[2]
    name = _select(DECODE_OP, q, backend, aligned16(q, k_cache, v_cache), group)
    out, lse = custom_ops.attention_decode(
        q, k_cache, v_cache, block_table, cache_seqlens, scale, float(softcap), name
    )
    return (out, lse) if return_lse else out
