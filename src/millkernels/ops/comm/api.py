"""Collectives over a ``torch.distributed`` process group: all-reduce (NCCL / gloo, the IPC
one-shot and two-shot kernels, quantised), all-gather, reduce-scatter, all-to-all, broadcast.

Every function is collective: call it on every rank of ``group`` with the same shapes,
dtypes and options. Arguments are checked locally before any communication, so a bad call
raises on the rank that made it; a call that is valid on each rank but differs across ranks
(shapes, dtypes, options) cannot be seen locally. With ``MILLKERNELS_COMM_DEBUG=1`` every call
first exchanges a small description of its arguments (one extra all-gather of 17 int64s) and
every rank raises ``ValueError`` naming each rank's arguments when they differ, or when any
rank's arguments were invalid, instead of hanging or computing garbage.

Devices: a gloo group takes CPU tensors (and, for a non-quantised ``all_reduce``, CUDA
tensors: several ranks sharing one GPU, which NCCL refuses, run the IPC kernels that way); an
NCCL group takes CUDA tensors on this rank's current device (``torch.cuda.current_device()``);
a group with both backends takes either.
"""

from __future__ import annotations

import dataclasses
import os
import zlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from millkernels.dispatch import BackendUnavailable, env_override
from millkernels.ops.comm import capabilities as caps
from millkernels.ops.comm import reference
from millkernels.ops.comm.capabilities import TABLE, CommCall, call_facts
from millkernels.ops.comm.groups import comm_device, group_devices, resolve_group

DEBUG_ENV = "MILLKERNELS_COMM_DEBUG"
REDUCE_OPS = ("sum", "max", "min", "prod")
_MAX_QUANT_GROUP = 4096


def debug_enabled() -> bool:
    """True when ``MILLKERNELS_COMM_DEBUG`` asks for the cross-rank argument check."""
    return os.environ.get(DEBUG_ENV, "0").strip().lower() in ("1", "true", "yes", "on")


# ------------------------------------------------------------------------ validation


def check_tensor(
    name: str, t: Any, group: Any, *, contiguous: bool = False, cuda_on_gloo: bool = False
) -> torch.Tensor:
    """``t`` if it is a tensor on a device ``group`` takes; else TypeError/ValueError.

    ``cuda_on_gloo``: a gloo group also takes CUDA tensors (gloo all-reduces them; and the
    IPC kernels only use the group for their fallback). That is how several ranks sharing
    one GPU, which NCCL refuses, run the IPC all-reduce.
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    devices = group_devices(group)
    if cuda_on_gloo and devices == {"cpu"}:
        devices = {"cpu", "cuda"}
    dev = t.device.type
    if devices is not None and dev not in devices:
        backend = dist.get_backend(group)
        raise ValueError(
            f"{name}: a {backend} group takes tensors on {'/'.join(sorted(devices))}, got a "
            f"tensor on {t.device}"
        )
    if dev == "cuda" and devices is not None:
        current = torch.cuda.current_device()
        if t.device.index != current:
            raise ValueError(
                f"{name}: expected a tensor on this rank's device cuda:{current} "
                f"(torch.cuda.current_device()), got {t.device}"
            )
    if t.is_sparse or t.layout != torch.strided:
        raise ValueError(f"{name}: expected a dense (strided) tensor, got layout {t.layout}")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous tensor (strides {tuple(t.stride())})")
    return t


def check_out(
    out: Any, shape: tuple[int, ...], like: torch.Tensor, group: Any, name: str = "out"
) -> torch.Tensor:
    """A validated ``out=`` tensor of ``shape`` and ``like``'s dtype and device."""
    check_tensor(name, out, group, contiguous=True, cuda_on_gloo=like.device.type == "cuda")
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(out.shape)}")
    if out.dtype != like.dtype:
        raise TypeError(f"{name}: expected dtype {like.dtype} (the input's), got {out.dtype}")
    if out.device != like.device:
        raise ValueError(f"{name}: expected device {like.device} (the input's), got {out.device}")
    return out


def _choice(name: str, value: Any, allowed: tuple) -> Any:
    if value not in allowed:
        shown = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"{name}: expected one of {shown}, got {value!r}")
    return value


def _new_out(out: Any, shape: tuple[int, ...], x: torch.Tensor, group: Any) -> torch.Tensor:
    if out is None:
        return torch.empty(shape, dtype=x.dtype, device=x.device)
    return check_out(out, shape, x, group)


def _dim0_split(name: str, x: torch.Tensor, world: int) -> int:
    if x.dim() == 0:
        raise ValueError(f"{name}: expected at least one dimension, got a 0-d tensor")
    if x.shape[0] % world:
        raise ValueError(
            f"{name}: dim 0 ({x.shape[0]}) must be divisible by the group size ({world})"
        )
    return x.shape[0] // world


# ----------------------------------------------------------------------- debug check


_MAX_DIMS = 8
_SIG_LEN = 17


@dataclass
class _Sig:
    """What must agree across ranks for one call (or that this rank's call was invalid)."""

    op: str
    shape: tuple[int, ...] = ()
    dtype: torch.dtype | None = None
    options: tuple = ()
    error: str | None = None

    def encode(self) -> list[int]:
        dims = list(self.shape[:_MAX_DIMS]) + [-1] * (_MAX_DIMS - len(self.shape[:_MAX_DIMS]))
        return [
            0x6D6B636F,  # "mkco"
            _crc(self.op),
            -1 if self.error else 0,
            len(self.shape),
            _crc(repr(self.shape)),
            _crc(str(self.dtype)),
            _crc(repr(self.options)),
            int(torch.Size(self.shape).numel()) if self.dtype is not None else 0,
            _dtype_index(self.dtype),
            *dims,
        ]


def _crc(s: str) -> int:
    return zlib.crc32(s.encode())


_DTYPES = [
    getattr(torch, n)
    for n in (
        "float32", "float64", "float16", "bfloat16", "int8", "uint8", "int16", "int32", "int64",
        "bool", "complex64", "complex128", "float8_e4m3fn", "float8_e5m2",
    )
    if hasattr(torch, n)
]  # fmt: skip


def _dtype_index(dtype: torch.dtype | None) -> int:
    return _DTYPES.index(dtype) if dtype in _DTYPES else -1


def _describe(v: list[int]) -> str:
    if v[2] == -1:
        return "an invalid call (it raised on that rank)"
    ndim, index = v[3], v[8]
    dims = [d for d in v[9 : 9 + min(ndim, _MAX_DIMS)]]
    shape = ", ".join(str(d) for d in dims) + (", ..." if ndim > _MAX_DIMS else "")
    dtype = str(_DTYPES[index]).removeprefix("torch.") if 0 <= index < len(_DTYPES) else "?"
    return f"{dtype}[{shape}] options#{v[6] & 0xFFFF:04x}"


def debug_check(sig: _Sig, group: Any) -> None:
    """Exchange ``sig`` over ``group`` and raise ValueError on every rank when the ranks'
    calls differ or any rank's call was invalid. One all-gather of 17 int64 per rank."""
    world = dist.get_world_size(group)
    device = comm_device(group)
    mine = torch.tensor(sig.encode(), dtype=torch.int64, device=device)
    everyone = torch.empty(world * _SIG_LEN, dtype=torch.int64, device=device)
    reference.gather_flat(everyone, mine, group)
    rows = everyone.view(world, _SIG_LEN).cpu().tolist()
    if sig.error is not None:
        return  # the caller raises its own error next
    bad = [r for r, v in enumerate(rows) if v[2] == -1]
    if bad:
        raise ValueError(
            f"{sig.op}: rank(s) {bad} of the group made an invalid call ({DEBUG_ENV}); see the "
            "error on those ranks"
        )
    if any(v != rows[0] for v in rows):
        if any(v[1] != rows[0][1] for v in rows):
            detail = "different collectives"
        else:
            detail = "; ".join(f"rank {r}: {_describe(v)}" for r, v in enumerate(rows))
        raise ValueError(
            f"{sig.op}: the ranks' arguments differ ({DEBUG_ENV}=1 check): {detail}. Every "
            "rank must pass the same shape, dtype and options."
        )


def _run_checked(sig_fn, group: Any, op: str):
    """Run local validation ``sig_fn() -> (_Sig, payload)``; in debug mode exchange the
    signature (or the fact that this rank failed) before raising or returning."""
    try:
        sig, payload = sig_fn()
    except (TypeError, ValueError, BackendUnavailable) as exc:
        if debug_enabled():
            debug_check(_Sig(op, error=str(exc)), group)
        raise
    if debug_enabled():
        debug_check(sig, group)
    return payload


# ------------------------------------------------------------------------ public API


def all_reduce(
    x: torch.Tensor,
    *,
    group: Any = None,
    op: str = "sum",
    algo: str = "auto",
    backend: str = "auto",
    quant: str | None = None,
    quant_group: int = 128,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reduce ``x`` over the ranks of ``group``; every rank gets the result.

    Parameters
    ----------
    x
        Any shape. Dtypes: whatever the group's backend reduces; ``one_shot``/``two_shot``
        and ``quant`` take float16, bfloat16, float32.
    group
        A ``torch.distributed`` process group (None: the default group).
    op
        "sum", "max", "min" or "prod" ("sum" only for one_shot, two_shot and quant).
    algo
        "auto" (docs/comm-cost-model.md), "nccl" (``torch.distributed.all_reduce``: NCCL, or
        gloo on a CPU), "one_shot", "two_shot" (CUDA tensors: the IPC kernels of the group's
        :class:`CustomAllReduce`; CPU tensors: the same algorithm over torch.distributed).
        One-shot and two-shot sum in rank order: every rank gets identical bits.
    backend
        "auto" (the algo decides: the IPC kernels are ``cuda``, everything else
        ``reference``; the quantised kernels ``triton`` where it can launch), or "cuda",
        "triton", "reference" (the comm capability table; ``millkernels info``). A named
        backend, or one ``MILLKERNELS_BACKEND`` forces over "auto", that cannot serve the call
        raises ``BackendUnavailable`` with the reason. With ``algo="auto"``, "cuda" picks
        one-shot or two-shot by size.
    quant
        None, "int8" or "fp8": the quantised all-reduce (quantized.py; error bound there),
        with per-group absmax scales over ``quant_group`` elements (a power of two, 16..4096).
    out
        Result tensor of x's shape, dtype and device (contiguous); ``out=x`` reduces in
        place. Default: a new tensor.

    Returns ``out`` (or the new tensor). Raises RuntimeError (no process group), TypeError /
    ValueError (bad arguments, named), BackendUnavailable (a backend or algo that cannot
    serve the call, with the reason).
    """
    g = resolve_group(group)

    def validate():
        _choice("op", op, REDUCE_OPS)
        _choice("algo", algo, caps.ALGOS)
        _choice("quant", quant, caps.QUANTS)
        t = check_tensor("x", x, g, cuda_on_gloo=quant is None)
        o = _new_out(out, tuple(t.shape), t, g)
        if out is not None and out is x and not x.is_contiguous():
            raise ValueError("x: in-place (out=x) needs a contiguous tensor")
        world = dist.get_world_size(g)
        dtype = str(t.dtype).removeprefix("torch.")
        custom = None
        if quant is not None:
            if dtype not in caps.QUANT_DTYPES:
                raise TypeError(
                    f"x: quant={quant!r} takes {'/'.join(caps.QUANT_DTYPES)} tensors, got {t.dtype}"
                )
            if op != "sum":
                raise ValueError(f"op: the quantised all-reduce only sums, got {op!r}")
            if algo not in ("auto", "two_shot"):
                raise ValueError(
                    f"algo: the quantised all-reduce is a reduce-scatter + all-gather "
                    f"(two_shot); expected 'auto' or 'two_shot', got {algo!r}"
                )
            if (
                isinstance(quant_group, bool)
                or not isinstance(quant_group, int)
                or not 16 <= quant_group <= _MAX_QUANT_GROUP
                or quant_group & (quant_group - 1)
            ):
                raise ValueError(
                    f"quant_group: expected a power of two in 16..{_MAX_QUANT_GROUP}, "
                    f"got {quant_group!r}"
                )
            call = call_facts("all_reduce", t, world, "two_shot", quant=quant, reduce_op=op)
            resolved = ("quant", TABLE.select(backend, call, "all_reduce"))
        else:
            if t.device.type == "cuda":
                from millkernels.ops.comm.custom_allreduce import registered

                custom = registered(g)
            limit = None if custom is None else custom.max_bytes
            call = call_facts("all_reduce", t, world, algo, reduce_op=op, custom_max_bytes=limit)
            call, wanted = _resolve_exact(backend, call)
            chosen = call.algo
            if chosen in ("one_shot", "two_shot") and op != "sum":
                raise ValueError(f"op: algo {chosen!r} only sums, got {op!r}")
            resolved = (chosen, TABLE.select(wanted, call, "all_reduce"))
        options = (op, algo, backend, quant, quant_group if quant else 0)
        return _Sig("all_reduce", tuple(t.shape), t.dtype, options), (t, o, custom, resolved)

    t, o, custom, (how, runs_on) = _run_checked(validate, g, "all_reduce")
    if t.numel() == 0:
        return o
    if quant is not None:  # validate chose the quantised path (how == "quant")
        from millkernels.ops.comm.quantized import run_quantized

        src = t if t.is_contiguous() else t.contiguous()
        return run_quantized(src, o, g, quant, quant_group, runs_on)
    if runs_on == "cuda":
        return custom.all_reduce(t, out=o, algo=how)
    if how == "one_shot":
        return reference.one_shot(t, o, g)
    if how == "two_shot":
        return reference.two_shot(t, o, g)
    return reference.all_reduce(t, o, g, op)


def _resolve_exact(backend: str, call: CommCall) -> tuple[CommCall, str]:
    """(``call`` with its algorithm resolved, backend to ask the table for) of a non-quantised
    all-reduce. A named (or ``MILLKERNELS_BACKEND``-forced) backend decides an "auto" algo:
    IPC by size on cuda, NCCL / gloo on the others (triton then refuses the call with its
    reason). Otherwise the ``auto`` rule picks the algo, and the algo its backend: the IPC
    kernels on CUDA tensors are cuda, the rest reference (no walk down the table on every
    call: small all-reduces are latency-bound)."""
    forced = backend if backend != "auto" else env_override(TABLE.family)
    if call.algo == "auto":
        if forced is None:
            chosen = caps.auto_algo(call)
        else:
            chosen = caps.ipc_algo(call) if forced == "cuda" else "nccl"
        call = dataclasses.replace(call, algo=chosen)
    if forced is not None:
        return call, backend  # "auto" here: the table applies the override and says so
    ipc = call.algo in ("one_shot", "two_shot") and call.device == "cuda"
    return call, "cuda" if ipc else "reference"


def _check_plain_backend(op: str, t: torch.Tensor, group: Any, backend: str) -> None:
    """A collective other than all-reduce runs on torch.distributed (``reference``): raise
    BackendUnavailable when ``backend``, or the one ``MILLKERNELS_BACKEND`` forces, is another."""
    if backend == "auto" and env_override(TABLE.family) is None:
        return
    TABLE.select(backend, call_facts(op, t, dist.get_world_size(group), "nccl"), op)


def all_gather(
    x: torch.Tensor, *, group: Any = None, out: torch.Tensor | None = None, backend: str = "auto"
):
    """Concatenate every rank's ``x`` along dim 0, in rank order.

    ``x``: any shape (a 0-d tensor counts as shape (1,)); every rank the same shape and
    dtype. Returns (world * x.shape[0], *x.shape[1:]) (``out=`` of that shape; ``x`` may be
    the rank's own slice of ``out``: in place).
    """
    g = resolve_group(group)

    def validate():
        t = check_tensor("x", x, g)
        _check_plain_backend("all_gather", t, g, backend)
        world = dist.get_world_size(g)
        base = tuple(t.shape) if t.dim() else (1,)
        shape = (world * base[0], *base[1:])
        o = _new_out(out, shape, t, g)
        return _Sig("all_gather", tuple(t.shape), t.dtype), (t, o)

    t, o = _run_checked(validate, g, "all_gather")
    if t.numel() == 0:
        return o
    src = t
    if reference._overlaps(o, t):
        src = t.clone()
    return reference.all_gather(src, o, g)


def reduce_scatter(
    x: torch.Tensor,
    *,
    group: Any = None,
    op: str = "sum",
    out: torch.Tensor | None = None,
    backend: str = "auto",
):
    """Reduce ``x`` over ranks and give rank r the r-th of world equal slices along dim 0.

    ``x``: dim 0 divisible by the group size. Returns (x.shape[0] // world, *x.shape[1:]);
    ``out`` may be this rank's slice of ``x`` (in place).
    """
    g = resolve_group(group)

    def validate():
        _choice("op", op, REDUCE_OPS)
        t = check_tensor("x", x, g)
        _check_plain_backend("reduce_scatter", t, g, backend)
        world = dist.get_world_size(g)
        rows = _dim0_split("x", t, world)
        o = _new_out(out, (rows, *t.shape[1:]), t, g)
        return _Sig("reduce_scatter", tuple(t.shape), t.dtype, (op,)), (t, o)

    t, o = _run_checked(validate, g, "reduce_scatter")
    if t.numel() == 0:
        return o
    return reference.reduce_scatter(t, o, g, op)


def all_to_all(
    x: torch.Tensor, *, group: Any = None, out: torch.Tensor | None = None, backend: str = "auto"
):
    """Split ``x`` into world equal chunks along dim 0; chunk j goes to rank j, and this
    rank's result holds, in rank order, the chunk every rank sent it. Same shape as ``x``."""
    g = resolve_group(group)

    def validate():
        t = check_tensor("x", x, g)
        _check_plain_backend("all_to_all", t, g, backend)
        _dim0_split("x", t, dist.get_world_size(g))
        o = _new_out(out, tuple(t.shape), t, g)
        return _Sig("all_to_all", tuple(t.shape), t.dtype), (t, o)

    t, o = _run_checked(validate, g, "all_to_all")
    if t.numel() == 0:
        return o
    return reference.all_to_all(t.contiguous(), o, g)


def broadcast(
    x: torch.Tensor,
    *,
    src: int = 0,
    group: Any = None,
    out: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Every rank gets rank ``src``'s ``x`` (``src``: the rank within ``group``).

    In place on ``x`` by default (as torch.distributed.broadcast); with ``out=`` the result
    goes there and ``x`` is left alone.
    """
    g = resolve_group(group)

    def validate():
        world = dist.get_world_size(g)
        if isinstance(src, bool) or not isinstance(src, int) or not 0 <= src < world:
            raise ValueError(f"src: expected a rank of the group in 0..{world - 1}, got {src!r}")
        t = check_tensor("x", x, g, contiguous=out is None)
        _check_plain_backend("broadcast", t, g, backend)
        o = t if out is None else check_out(out, tuple(t.shape), t, g)
        return _Sig("broadcast", tuple(t.shape), t.dtype, (src,)), (t, o)

    t, o = _run_checked(validate, g, "broadcast")
    if o is not t:
        o.copy_(t)
    if t.numel() == 0:
        return o
    return reference.broadcast(o, g, dist.get_global_rank(g, src))
