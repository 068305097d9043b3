"""Public attention functions: ``attention`` and ``attention_varlen`` (forward and backward).

Both validate their arguments (``TypeError`` / ``ValueError`` naming the argument), resolve
the backend through the family's capability table (:mod:`.capabilities`), and call the
custom ops of :mod:`.custom_ops`, which carry autograd and ``torch.compile`` support.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from millkernels import runtime
from millkernels.dispatch import constant_under_compile
from millkernels.ops.attention import custom_ops, reference
from millkernels.ops.attention.capabilities import MAX_HEAD_DIM, REFERENCE_DTYPES, TABLE
from millkernels.ops.attention.custom_ops import check_varlen_values

_Out = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


# ---------------------------------------------------------------------------- validation


def _tensor(name: str, x: Any, ndim: int, layout: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor {layout}, got {type(x).__name__}")
    if x.dim() != ndim:
        raise ValueError(f"{name}: expected a {ndim}-d tensor {layout}, got shape {tuple(x.shape)}")
    if x.dtype not in REFERENCE_DTYPES:
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


def _select(op: str, q: torch.Tensor, backend: str) -> str:
    index = q.device.index if q.device.type == "cuda" else None
    return _select_constant(op, q.device.type, index, q.dtype, int(q.shape[-1]), backend)


@constant_under_compile
def _select_constant(
    op: str, device: str, index: int | None, dtype: torch.dtype, head_dim: int, backend: str
) -> str:
    """Backend choice from plain facts; under torch.compile it runs once at trace time and
    its answer is baked into the graph (the capability queries are not traceable)."""
    arch = runtime.capability(index if index is not None else None) if device == "cuda" else None
    facts = {"op": op, "device": device, "dtype": dtype, "head_dim": head_dim, "arch": arch}
    return TABLE.select(backend, facts, op)


# ---------------------------------------------------------------------------- public


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
        Ask for a bitwise-reproducible backward. Every backend's backward already is (the
        Triton backward uses no atomics), so this only documents the requirement.
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
    out, lse = custom_ops.attention_fwd(q, k, v, scale, wl, wr, cap, name)
    return (out, lse) if return_lse else out


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
        q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, wl, wr, cap, name
    )
    return (out, lse) if return_lse else out
