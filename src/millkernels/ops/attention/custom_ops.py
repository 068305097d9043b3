"""Attention as PyTorch custom ops, so ``torch.compile(fullgraph=True)`` and autograd see one
opaque op with a fake (meta) kernel and a registered backward.

Ops (``torch.ops.millkernels.*``):

- ``attention_fwd(q, k, v, softmax_scale, window_left, window_right, softcap, backend,
  deterministic=False) -> (out, lse)`` (``deterministic`` is kept for the backward)
- ``attention_bwd(dout, dlse, q, k, v, out, lse, softmax_scale, window_left, window_right,
  softcap, backend, deterministic=False) -> (dq, dk, dv)``
- ``attention_varlen_fwd`` / ``attention_varlen_bwd``: the same with ``cu_seqlens_q``,
  ``cu_seqlens_k``, ``max_seqlen_q``, ``max_seqlen_k`` after ``v``.
- ``attention_decode(q, k_cache, v_cache, block_table, cache_seqlens, softmax_scale, softcap,
  backend) -> (out, lse)``.

``causal`` is folded into the window (``right = min(right, 0)``) before these ops; ``-1``
means unbounded. ``backend`` is already resolved by the public functions (:mod:`.api`):
"triton" or "reference" for the training ops, also "cuda" for decode. The Triton training
launchers get the table's TMA decision (:func:`.capabilities.use_tma`) and the forward its
warp-specialisation decision (:func:`.capabilities.use_ws`), taken here on the real tensors.
Each op is made by :func:`millkernels.ops.custom_op.family_op` (eager calls that record no
gradient skip the dispatcher).
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

from millkernels.ops.attention import capabilities, reference
from millkernels.ops.custom_op import family_op

_NAMES = ("triton", "reference")
_DECODE_NAMES = ("triton", "cuda", "reference")


def _check_backend(backend: str, names: tuple[str, ...] = _NAMES) -> None:
    if backend not in names:
        raise ValueError(f"backend: the attention ops take one of {names}, got {backend!r}")


def _tma(op: str, *tensors: Tensor) -> bool:
    """The table's TMA decision for a Triton training launch on these tensors."""
    return capabilities.use_tma(capabilities.call_facts(op, *tensors))


def _ws(op: str, *tensors: Tensor) -> bool:
    """The table's warp-specialisation decision for a Triton forward on these tensors."""
    return capabilities.use_ws(capabilities.call_facts(op, *tensors))


def _like(x: Tensor, ref: Tensor) -> Tensor:
    """``x`` with exactly ``empty_like(ref)``'s strides (what the fake kernels promise)."""
    out = torch.empty_like(ref)
    if out.stride() == x.stride() and x.dtype == ref.dtype:
        return x
    return out.copy_(x)


# ---------------------------------------------------------------------------- value checks
#
# Checks of the values inside index tensors: they read them on the host (a device sync), so
# they run here, when the op runs, rather than while torch.compile traces the public function.


def check_varlen_values(
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    total_q: int,
    total_k: int,
    max_seqlen_q: int,
    max_seqlen_k: int,
) -> None:
    """The offsets' values: start at 0, non-decreasing, within the tokens, and no sequence
    longer than ``max_seqlen_*`` (the kernels' grid: longer ones would lose rows silently).

    Reads the offsets on the host: one synchronisation for GPU tensors. Skipped while
    torch.compile traces; the custom op repeats it at run time for CPU tensors (free there).
    """
    _check_cu_values("cu_seqlens_q", cu_seqlens_q, total_q, max_seqlen_q, "q")
    _check_cu_values("cu_seqlens_k", cu_seqlens_k, total_k, max_seqlen_k, "k")


def _check_cu_values(name: str, cu: torch.Tensor, total: int, max_len: int, what: str) -> None:
    if torch.compiler.is_compiling():
        return
    vals = cu.tolist()
    if vals[0] != 0:
        raise ValueError(f"{name}: must start at 0, got {vals[0]}")
    lengths = [b - a for a, b in itertools.pairwise(vals)]
    if min(lengths) < 0:
        raise ValueError(f"{name}: must be non-decreasing, got {vals}")
    if vals[-1] > total:
        raise ValueError(f"{name}: last offset {vals[-1]} exceeds the {total} tokens of {what}")
    if max(lengths) > max_len:
        raise ValueError(
            f"max_seqlen_{name[-1]}: {max_len} is below the longest sequence in {name} "
            f"({max(lengths)})"
        )


def check_decode_values(
    k_cache: torch.Tensor, block_table: torch.Tensor, cache_seqlens: torch.Tensor
) -> None:
    """ValueError unless 0 <= cache_seqlens[b] <= capacity and every block_table entry a
    sequence reads (its first ceil(cache_seqlens[b] / block_size) entries) is a page index in
    [0, num_blocks). One device sync; entries past a sequence's last page are not read."""
    num_blocks, block_size = k_cache.shape[:2]
    batch, max_blocks = block_table.shape
    if batch == 0:
        return
    capacity = max_blocks * block_size
    lens = cache_seqlens.long()
    bad_len = (lens < 0) | (lens > capacity)
    cols = torch.arange(max_blocks, device=lens.device)
    needed = cols[None, :] * block_size < lens[:, None]
    bad_page = needed & ((block_table < 0) | (block_table >= num_blocks))
    flags = torch.stack([bad_len.any(), bad_page.any()]).tolist()  # the one sync
    if flags[0]:
        b = int(bad_len.nonzero()[0, 0])
        raise ValueError(
            f"cache_seqlens: expected 0 <= cache_seqlens[b] <= max_blocks_per_seq * block_size "
            f"= {capacity}, got cache_seqlens[{b}] = {int(lens[b])}"
        )
    if flags[1]:
        b, j = (int(x) for x in bad_page.nonzero()[0])
        raise ValueError(
            f"block_table: expected page indices in [0, num_blocks={num_blocks}) for the pages "
            f"a sequence uses, got block_table[{b}, {j}] = {int(block_table[b, j])}"
        )


# ---------------------------------------------------------------------------- dense


@family_op("millkernels::attention_fwd")
def attention_fwd(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    softmax_scale: float,
    window_left: int,
    window_right: int,
    softcap: float,
    backend: str,
    deterministic: bool = False,
) -> tuple[Tensor, Tensor]:
    _check_backend(backend)
    window = (window_left, window_right)
    if backend == "triton":
        from millkernels.ops.attention import triton_fwd

        out, lse = triton_fwd.forward(
            q, k, v, None, None, q.shape[1], k.shape[1], softmax_scale, window, softcap,
            tma=_tma("attention", q, k, v), ws=_ws("attention", q, k, v),
        )  # fmt: skip
    else:
        out, lse = reference.attention_ref(
            q, k, v, softmax_scale=softmax_scale, window=window, softcap=softcap
        )
    return _like(out, q), lse.contiguous()


@attention_fwd.register_fake
def _(q, k, v, softmax_scale, window_left, window_right, softcap, backend, deterministic=False):
    lse = q.new_empty((q.shape[0], q.shape[2], q.shape[1]), dtype=torch.float32)
    return torch.empty_like(q), lse


@family_op("millkernels::attention_bwd")
def attention_bwd(
    dout: Tensor,
    dlse: Tensor | None,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    softmax_scale: float,
    window_left: int,
    window_right: int,
    softcap: float,
    backend: str,
    deterministic: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    _check_backend(backend)
    window = (window_left, window_right)
    dout = dout.to(q.dtype)
    if backend == "triton":
        from millkernels.ops.attention import triton_bwd

        dq, dk, dv = triton_bwd.backward(
            dout, dlse, q, k, v, out, lse, None, None, q.shape[1], k.shape[1],
            softmax_scale, window, softcap, tma=_tma("attention", q, k, v, dout),
            deterministic=deterministic, mode=capabilities.backward_mode(),
        )  # fmt: skip
    else:
        dq, dk, dv = reference.attention_grad_ref(
            dout, dlse, q, k, v, softmax_scale=softmax_scale, window=window, softcap=softcap
        )
    return _like(dq, q), _like(dk, k), _like(dv, v)


@attention_bwd.register_fake
def _(dout, dlse, q, k, v, out, lse, scale, window_left, window_right, softcap, backend, det=False):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _fwd_setup(ctx, inputs, output):
    q, k, v, softmax_scale, window_left, window_right, softcap, backend, *det = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.params = (softmax_scale, window_left, window_right, softcap, backend, *det)


def _fwd_backward(ctx, dout, dlse):
    q, k, v, out, lse = ctx.saved_tensors
    # the registered op, not the eager bypass: AOT autograd traces backwards with fake
    # tensors outside torch.compile, where the bypass would run the kernels on them
    dq, dk, dv = attention_bwd.op(dout, dlse, q, k, v, out, lse, *ctx.params)
    return dq, dk, dv, None, None, None, None, None, None


attention_fwd.register_autograd(_fwd_backward, setup_context=_fwd_setup)


# ---------------------------------------------------------------------------- varlen


@family_op("millkernels::attention_varlen_fwd")
def attention_varlen_fwd(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens_q: Tensor,
    cu_seqlens_k: Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    softmax_scale: float,
    window_left: int,
    window_right: int,
    softcap: float,
    backend: str,
    deterministic: bool = False,
) -> tuple[Tensor, Tensor]:
    _check_backend(backend)
    if cu_seqlens_q.device.type == "cpu":  # no sync: also under torch.compile, which skips
        check_varlen_values(
            cu_seqlens_q, cu_seqlens_k, q.shape[0], k.shape[0], max_seqlen_q, max_seqlen_k
        )
    window = (window_left, window_right)
    if backend == "triton":
        from millkernels.ops.attention import triton_fwd

        out, lse = triton_fwd.forward(
            q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
            softmax_scale, window, softcap, tma=_tma("attention_varlen", q, k, v),
            ws=_ws("attention_varlen", q, k, v),
        )  # fmt: skip
    else:
        out, lse = reference.attention_varlen_ref(
            q, k, v, cu_seqlens_q, cu_seqlens_k,
            softmax_scale=softmax_scale, window=window, softcap=softcap,
        )  # fmt: skip
    return _like(out, q), lse.contiguous()


@attention_varlen_fwd.register_fake
def _(q, k, v, cu_q, cu_k, max_q, max_k, scale, window_left, window_right, softcap, be, det=False):
    lse = q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)
    return torch.empty_like(q), lse


@family_op("millkernels::attention_varlen_bwd")
def attention_varlen_bwd(
    dout: Tensor,
    dlse: Tensor | None,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    cu_seqlens_q: Tensor,
    cu_seqlens_k: Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    softmax_scale: float,
    window_left: int,
    window_right: int,
    softcap: float,
    backend: str,
    deterministic: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    _check_backend(backend)
    window = (window_left, window_right)
    dout = dout.to(q.dtype)
    if backend == "triton":
        from millkernels.ops.attention import triton_bwd

        dq, dk, dv = triton_bwd.backward(
            dout, dlse, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
            max_seqlen_k, softmax_scale, window, softcap,
            tma=_tma("attention_varlen", q, k, v, dout),
            deterministic=deterministic, mode=capabilities.backward_mode(),
        )  # fmt: skip
    else:
        dq, dk, dv = reference.attention_varlen_grad_ref(
            dout, dlse, q, k, v, cu_seqlens_q, cu_seqlens_k,
            softmax_scale=softmax_scale, window=window, softcap=softcap,
        )  # fmt: skip
    return _like(dq, q), _like(dk, k), _like(dv, v)


@attention_varlen_bwd.register_fake
def _(
    dout, dlse, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, scale, wl, wr, softcap, be, det=False
):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _varlen_setup(ctx, inputs, output):
    q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale, wl, wr, softcap, backend, *det = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k)
    ctx.params = (max_q, max_k, softmax_scale, wl, wr, softcap, backend, *det)


def _varlen_backward(ctx, dout, dlse):
    q, k, v, out, lse, cu_q, cu_k = ctx.saved_tensors
    max_q, max_k, *rest = ctx.params
    dq, dk, dv = attention_varlen_bwd.op(  # the registered op, as in _fwd_backward
        dout, dlse, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, *rest
    )
    return dq, dk, dv, None, None, None, None, None, None, None, None, None, None


attention_varlen_fwd.register_autograd(_varlen_backward, setup_context=_varlen_setup)


# ---------------------------------------------------------------------------- decode


def _capturing(t: Tensor) -> bool:
    return t.device.type == "cuda" and torch.cuda.is_current_stream_capturing()


@family_op("millkernels::attention_decode")
def attention_decode(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    block_table: Tensor,
    cache_seqlens: Tensor,
    softmax_scale: float,
    softcap: float,
    backend: str,
) -> tuple[Tensor, Tensor]:
    """Paged decode on validated arguments: checks the values of ``block_table`` and
    ``cache_seqlens`` (one device sync; skipped while a CUDA graph is being captured, so a
    replay runs only the kernels), then launches ``backend``; returns fresh ``(out, lse)``."""
    _check_backend(backend, _DECODE_NAMES)
    if not _capturing(q):
        check_decode_values(k_cache, block_table, cache_seqlens)
    args = (q, k_cache, v_cache, block_table, cache_seqlens, softmax_scale, softcap)
    if backend == "triton":
        from millkernels.ops.attention import triton_decode

        return triton_decode.attention_decode(*args)
    if backend == "cuda":
        from millkernels.ops.attention import cuda_decode

        return cuda_decode.attention_decode(*args)
    out, lse = reference.attention_decode_reference(*args)
    return out.contiguous(), lse.contiguous()


@attention_decode.register_fake
def _(q, k_cache, v_cache, block_table, cache_seqlens, softmax_scale, softcap, backend):
    lse = q.new_empty((q.shape[0], q.shape[1]), dtype=torch.float32)
    return q.new_empty(q.shape), lse
