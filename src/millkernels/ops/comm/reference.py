"""Reference collectives: plain ``torch.distributed`` calls, the one-shot / two-shot algorithms
written with ``torch.distributed`` collectives, and torch versions of the quantisation steps.

They are the CPU path, what tests and the benchmark compare against, and the fallback where
the Triton kernels cannot launch. Inputs are validated by :mod:`millkernels.ops.comm.api`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

_REDUCE_OPS = {
    "sum": dist.ReduceOp.SUM,
    "max": dist.ReduceOp.MAX,
    "min": dist.ReduceOp.MIN,
    "prod": dist.ReduceOp.PRODUCT,
}

#: Largest |q| per quantised format: int8 is symmetric (-127..127); fp8 e4m3fn's max finite.
QMAX = {"int8": 127.0, "fp8": 448.0}
#: Group absmaxes are floored here, so 1/scale stays finite (a group of values below it
#: quantises to zero: an absolute error under 1e-30 per rank).
AMAX_FLOOR = 1e-30


def reduce_op(op: str) -> dist.ReduceOp.RedOpType:
    return _REDUCE_OPS[op]


# torch 2.13 renamed the flat-tensor collectives (*_single) and deprecates the old names;
# torch 2.11 has only the old ones.
_gather_flat = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_scatter_flat = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def gather_flat(out: torch.Tensor, x: torch.Tensor, group) -> None:
    """``out`` (world * numel) := every rank's ``x`` in rank order."""
    _gather_flat(out, x, group=group)


def scatter_flat(out: torch.Tensor, x: torch.Tensor, group, op: str = "sum") -> None:
    """``out`` := this rank's 1/world slice of the reduction of ``x``."""
    _scatter_flat(out, x, op=reduce_op(op), group=group)


# ----------------------------------------------------------------- torch.distributed calls


def all_reduce(x: torch.Tensor, out: torch.Tensor, group, op: str) -> torch.Tensor:
    """``out := reduce over ranks of x`` (out may be x)."""
    if out.data_ptr() != x.data_ptr():
        out.copy_(x)
    dist.all_reduce(out, op=reduce_op(op), group=group)
    return out


def all_gather(x: torch.Tensor, out: torch.Tensor, group) -> torch.Tensor:
    """``out`` (world * numel, flat view of the result) := concatenation of every rank's x."""
    gather_flat(out.reshape(-1), x.reshape(-1).contiguous(), group)
    return out


def reduce_scatter(x: torch.Tensor, out: torch.Tensor, group, op: str) -> torch.Tensor:
    """``out`` := this rank's 1/world slice (along dim 0 of the flat input) of the reduction."""
    flat = x.reshape(-1)
    if out.data_ptr() == flat.data_ptr() or _overlaps(out, flat):
        flat = flat.clone()  # in-place (out is a slice of x): gloo needs disjoint buffers
    scatter_flat(out.reshape(-1), flat, group, op)
    return out


def all_to_all(x: torch.Tensor, out: torch.Tensor, group) -> torch.Tensor:
    """Rank r's chunk j (of world equal chunks along dim 0) goes to rank j's chunk r."""
    src = x.reshape(-1)
    if _overlaps(out, src):
        src = src.clone()
    dist.all_to_all_single(out.reshape(-1), src, group=group)
    return out


def broadcast(x: torch.Tensor, group, src: int) -> torch.Tensor:
    """``x`` := rank ``src``'s x (``src`` is a global rank), in place."""
    dist.broadcast(x, src=src, group=group)
    return x


def _overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    a0, b0 = a.data_ptr(), b.data_ptr()
    a1, b1 = a0 + a.numel() * a.element_size(), b0 + b.numel() * b.element_size()
    return a0 < b1 and b0 < a1


# ------------------------------------------------- one-shot / two-shot over collectives


def _fixed_order_sum(parts: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Sum ``parts`` (world, m) over dim 0 in rank order 0, 1, ..., with float32 accumulation
    for 16-bit dtypes (as the IPC kernels do), rounded once to ``dtype``."""
    acc_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    acc = parts[0].to(acc_dtype).clone()
    for j in range(1, parts.shape[0]):
        acc += parts[j].to(acc_dtype)
    return acc.to(dtype)


def one_shot(x: torch.Tensor, out: torch.Tensor, group) -> torch.Tensor:
    """One-shot all-reduce: every rank gets every rank's whole input and sums it in rank order.

    Every rank performs the same additions in the same order, so results are identical.
    """
    world = dist.get_world_size(group)
    flat = x.reshape(-1)
    parts = torch.empty((world, flat.numel()), dtype=x.dtype, device=x.device)
    gather_flat(parts.reshape(-1), flat.contiguous(), group)
    out.reshape(-1).copy_(_fixed_order_sum(parts, x.dtype))
    return out


def two_shot(x: torch.Tensor, out: torch.Tensor, group) -> torch.Tensor:
    """Two-shot all-reduce: reduce-scatter (rank r sums slice r of every input, in rank
    order) then all-gather of the reduced slices. Each slice is summed by exactly one rank,
    so results are identical everywhere. The input is zero-padded to world equal slices."""
    world = dist.get_world_size(group)
    flat = x.reshape(-1)
    n = flat.numel()
    m = -(-n // world)
    padded = torch.zeros(world * m, dtype=x.dtype, device=x.device)
    padded[:n] = flat
    received = torch.empty_like(padded)
    dist.all_to_all_single(received, padded, group=group)  # row j := my slice of rank j
    mine = _fixed_order_sum(received.view(world, m), x.dtype)
    gathered = torch.empty_like(padded)
    gather_flat(gathered, mine, group)
    out.reshape(-1).copy_(gathered[:n])
    return out


# ------------------------------------------------------------ quantisation (torch form)


def shard_layout(n: int, world: int, group_size: int) -> tuple[int, int, int]:
    """(L, groups per shard, bytes per row) of the quantised wire format.

    The flat input (zero-padded) is split into ``world`` shards of L elements, L a multiple
    of ``group_size``; a row on the wire is L one-byte codes then L/group_size float32
    scales.
    """
    groups = max(1, -(-n // (world * group_size)))
    length = groups * group_size
    return length, groups, length + 4 * groups


def quantize_rows(x: torch.Tensor, world: int, group_size: int, quant: str) -> torch.Tensor:
    """Quantise flat ``x`` into the (world, row_bytes) int8 wire buffer (see shard_layout).

    Per group of ``group_size`` elements: scale = absmax / QMAX (float32), code =
    round(x / scale) as int8 (round half up, clamped to +-127) or fp8 e4m3fn (round to
    nearest even, clamped to +-448) stored as its bit pattern.
    """
    n = x.numel()
    length, groups, row = shard_layout(n, world, group_size)
    xf = torch.zeros(world * length, dtype=torch.float32, device=x.device)
    xf[:n] = x.reshape(-1).float()
    q, s = quantize_groups(xf.view(world * groups, group_size), quant)
    buf = torch.empty((world, row), dtype=torch.int8, device=x.device)
    buf[:, :length] = q.view(world, length)
    buf[:, length:] = s.view(world, groups).contiguous().view(torch.int8)
    return buf


def quantize_groups(xg: torch.Tensor, quant: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes int8 like xg, scales float32 (rows,)) for float32 groups ``xg`` (rows, G)."""
    amax = xg.abs().amax(dim=1).clamp_min(AMAX_FLOOR)
    # tensor / tensor: an IEEE division on every device, as the kernels' div_rn (torch turns
    # `qmax / amax` into reciprocal(amax) * qmax, and `amax / qmax` on CUDA into a multiply)
    qmax = torch.full_like(amax, QMAX[quant])
    scale = amax / qmax
    inv = qmax / amax
    v = xg * inv[:, None]
    if quant == "int8":
        q = torch.floor(v + 0.5).clamp_(-127.0, 127.0).to(torch.int8)
    else:
        q = v.clamp(-QMAX[quant], QMAX[quant]).to(torch.float8_e4m3fn).view(torch.int8)
    return q, scale


def dequantize_rows(buf: torch.Tensor, group_size: int, quant: str) -> torch.Tensor:
    """float32 (rows, L) values of a (rows, row_bytes) wire buffer."""
    rows, row = buf.shape
    groups = row // (group_size + 4)
    length = groups * group_size
    codes = buf[:, :length]
    vals = codes.float() if quant == "int8" else codes.view(torch.float8_e4m3fn).float()
    scales = buf[:, length:].contiguous().view(torch.float32).view(rows, groups)
    return (vals.view(rows, groups, group_size) * scales[:, :, None]).view(rows, length)


def dequant_accumulate_requantize(
    received: torch.Tensor, group_size: int, quant: str
) -> torch.Tensor:
    """Sum the (world, row_bytes) received shards in rank order in float32, requantise: one
    row (1, row_bytes) to all-gather."""
    vals = dequantize_rows(received, group_size, quant)
    acc = vals[0].clone()
    for j in range(1, vals.shape[0]):
        acc += vals[j]
    length = acc.numel()
    q, s = quantize_groups(acc.view(-1, group_size), quant)
    out = torch.empty((1, received.shape[1]), dtype=torch.int8, device=received.device)
    out[0, :length] = q.view(-1)
    out[0, length:] = s.view(torch.int8)
    return out
