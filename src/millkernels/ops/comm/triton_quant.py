"""Triton kernels of the quantised all-reduce: quantise, dequantise-accumulate-requantise and
dequantise, over the wire format of :func:`millkernels.ops.comm.reference.shard_layout`.

A wire row is L one-byte codes (int8, or fp8 e4m3fn bit patterns) followed by L / G float32
scales (G = group size, 128 by default); shard w of the flat input is row w. Every kernel
handles ``BG`` groups per program and is memory bound (one read and one write of each byte).
Rounding matches the torch reference bit for bit: int8 codes are floor(x * QMAX/absmax + 0.5)
clamped to +-127; fp8 codes are the round-to-nearest-even conversion of the value clamped to
+-448. On a GPU that needs IEEE divisions (``tl.math.div_rn``, not ``/``, which compiles to an
approximate division) and no FMA contraction (launch option ``enable_fp_fusion=False``);
``tests/ops/comm/test_comm_quant_kernels.py`` checks the compiled PTX for both. fp8 needs a
GPU with fp8 conversions (sm_89+) or the interpreter.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from millkernels import runtime
from millkernels.ops.analysis_spec import TritonAnalysis, TritonVariant
from millkernels.ops.comm.reference import AMAX_FLOOR as _AMAX_FLOOR
from millkernels.ops.comm.reference import QMAX, shard_layout
from millkernels.ops.triton_common import INTERPRET, cast

# Groups per program: 8 x 128 = 1024 elements (4 KB of fp32) per program keeps 4 warps busy
# with 8 elements each on a GPU. Under the interpreter a program's cost is mostly fixed
# Python overhead: 1M elements took 5.7 s at 64 groups per program, 1.5 s at 1024.
_BG_GPU = 8
_BG_INTERPRET = 1024


AMAX_FLOOR = tl.constexpr(_AMAX_FLOOR)
#: Launch option of every kernel here: no multiply-add contracted into an FMA (on by default
#: on GPUs), so ``acc + q * s`` and ``x * inv + 0.5`` round twice, as in the torch reference.
_IEEE = {"enable_fp_fusion": False}


@triton.jit
def _round_e4m3(v):
    """``v`` (|v| <= 448) rounded to nearest-even on the fp8 e4m3 grid, in float32.

    Only for the interpreter: its float32 -> fp8e4nv conversion (Triton 3.9) drops the carry
    when rounding up into the next binade (124.0 -> 64.0, not 128.0) and rounds ties away
    from zero; converting an already-representable value is exact there.
    """
    a = tl.abs(v)
    e = tl.maximum(((a.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127, -6)  # subnormals: -6
    step = ((e - 3 + 127) << 23).to(tl.float32, bitcast=True)  # 2**(e-3): 3 mantissa bits
    q = a / step  # exact: step is a power of two
    r = tl.floor(q + 0.5)
    r = tl.where((r - q == 0.5) & (r - 2.0 * tl.floor(r * 0.5) == 1.0), r - 1.0, r)
    negative = v.to(tl.int32, bitcast=True) < 0  # the sign bit: -0.0 stays -0.0 (code 0x80)
    return tl.where(negative, -r * step, r * step)


@triton.jit
def _group_scales(x, QMAX: tl.constexpr):
    """(scale, 1 / scale) per row of float32 groups ``x`` (BG, G): ``absmax / QMAX`` and
    ``QMAX / absmax``, absmax floored at AMAX_FLOOR. IEEE divisions (``div_rn``), as torch
    computes them: a plain ``/`` compiles to an approximate division on a GPU, which would
    break the bit-for-bit match with the reference."""
    amax = tl.maximum(tl.max(tl.abs(x), axis=1), AMAX_FLOOR)
    return tl.math.div_rn(amax, QMAX), tl.math.div_rn(QMAX, amax)


@triton.jit
def _encode(v, QMAX: tl.constexpr, FP8: tl.constexpr):
    if FP8:
        v = tl.minimum(tl.maximum(v, -QMAX), QMAX)
        if INTERPRET:
            v = _round_e4m3(v)
        return v.to(tl.float8e4nv).to(tl.int8, bitcast=True)
    else:
        v = tl.minimum(tl.maximum(tl.floor(v + 0.5), -127.0), 127.0)
        return v.to(tl.int8)


@triton.jit
def _decode(q, FP8: tl.constexpr):
    if FP8:
        return q.to(tl.float8e4nv, bitcast=True).to(tl.float32)
    else:
        return q.to(tl.float32)


@triton.jit
def _quantize_store(acc, row_ptr, lg, gmask, L, QMAX: tl.constexpr, G: tl.constexpr,
                    FP8: tl.constexpr):  # fmt: skip
    """Quantise float32 groups ``acc`` (BG, G) into a wire row at groups ``lg``."""
    scale, inv = _group_scales(acc, QMAX)
    q = _encode(acc * inv[:, None], QMAX, FP8)
    k = tl.arange(0, G)
    tl.store(row_ptr + lg[:, None] * G + k[None, :], q, mask=gmask[:, None])
    s_ptr = (row_ptr + L).to(tl.pointer_type(tl.float32))
    tl.store(s_ptr + lg, scale, mask=gmask)


@triton.jit
def _quantize_kernel(x_ptr, buf_ptr, n, total_groups, gps, ROW,
                     QMAX: tl.constexpr, G: tl.constexpr, BG: tl.constexpr,
                     FP8: tl.constexpr):  # fmt: skip
    """buf (world, ROW) := quantised rows of flat x (n elements, zero-padded)."""
    pid = tl.program_id(0)
    g = pid * BG + tl.arange(0, BG)
    gmask = g < total_groups
    k = tl.arange(0, G)
    idx = g.to(tl.int64)[:, None] * G + k[None, :]
    x = tl.load(x_ptr + idx, mask=gmask[:, None] & (idx < n), other=0.0).to(tl.float32)
    w = g // gps
    lg = g % gps
    # Groups of one program can straddle two rows: store per group through its row pointer.
    row_off = w.to(tl.int64) * ROW
    scale, inv = _group_scales(x, QMAX)
    q = _encode(x * inv[:, None], QMAX, FP8)
    tl.store(buf_ptr + row_off[:, None] + lg[:, None] * G + k[None, :], q, mask=gmask[:, None])
    s_ptr = (buf_ptr + gps * G).to(tl.pointer_type(tl.float32))
    tl.store(s_ptr + row_off // 4 + lg, scale, mask=gmask)


@triton.jit
def _dequant_accumulate_kernel(recv_ptr, send_ptr, world, gps, ROW,
                               QMAX: tl.constexpr, G: tl.constexpr, BG: tl.constexpr,
                               FP8: tl.constexpr):  # fmt: skip
    """send (1, ROW) := requantised float32 sum over rows j = 0, 1, ... of recv (world, ROW)."""
    pid = tl.program_id(0)
    lg = pid * BG + tl.arange(0, BG)
    gmask = lg < gps
    k = tl.arange(0, G)
    L = gps * G
    # -0.0 + x == x for every x (also -0.0), so the sum starts exactly at row 0's values, as
    # the reference's (a +0.0 start would turn an all -0.0 element into +0.0: fp8 code 0x00,
    # not the reference's 0x80)
    acc = tl.full((BG, G), -0.0, dtype=tl.float32)
    for j in range(0, world):  # fixed rank order: identical sums wherever this runs
        row = recv_ptr + j * ROW  # ROW is i64: 64-bit offsets
        q = tl.load(row + lg[:, None] * G + k[None, :], mask=gmask[:, None], other=0)
        s = tl.load((row + L).to(tl.pointer_type(tl.float32)) + lg, mask=gmask, other=0.0)
        acc += _decode(q, FP8) * s[:, None]
    _quantize_store(acc, send_ptr, lg, gmask, L, QMAX, G, FP8)


@triton.jit
def _dequantize_kernel(buf_ptr, out_ptr, n, total_groups, gps, ROW,
                       G: tl.constexpr, BG: tl.constexpr, FP8: tl.constexpr):  # fmt: skip
    """Flat out (n elements, out's dtype) := dequantised rows of buf (world, ROW)."""
    pid = tl.program_id(0)
    g = pid * BG + tl.arange(0, BG)
    gmask = g < total_groups
    k = tl.arange(0, G)
    w = g // gps
    lg = g % gps
    row_off = w.to(tl.int64) * ROW
    q = tl.load(buf_ptr + row_off[:, None] + lg[:, None] * G + k[None, :], mask=gmask[:, None],
                other=0)  # fmt: skip
    s_ptr = (buf_ptr + gps * G).to(tl.pointer_type(tl.float32))
    s = tl.load(s_ptr + row_off // 4 + lg, mask=gmask, other=0.0)
    v = _decode(q, FP8) * s[:, None]
    idx = g.to(tl.int64)[:, None] * G + k[None, :]
    tl.store(out_ptr + idx, cast(v, out_ptr.dtype.element_ty), mask=gmask[:, None] & (idx < n))


def _bg(groups: int) -> int:
    if not runtime.triton_interpret():
        return _BG_GPU
    return min(_BG_INTERPRET, triton.next_power_of_2(max(groups, 1)))


def quantize_rows(x: torch.Tensor, world: int, group_size: int, quant: str) -> torch.Tensor:
    """Triton form of :func:`millkernels.ops.comm.reference.quantize_rows` (same bytes)."""
    n = x.numel()
    _, gps, row = shard_layout(n, world, group_size)
    buf = torch.empty((world, row), dtype=torch.int8, device=x.device)
    total = world * gps
    bg = _bg(total)
    _quantize_kernel[(triton.cdiv(total, bg),)](
        x.reshape(-1), buf, n, total, gps, row,
        QMAX=QMAX[quant], G=group_size, BG=bg, FP8=quant == "fp8", **_IEEE,
    )  # fmt: skip
    return buf


def dequant_accumulate_requantize(
    received: torch.Tensor, group_size: int, quant: str
) -> torch.Tensor:
    """Triton form of the reference function of the same name."""
    world, row = received.shape
    gps = row // (group_size + 4)
    send = torch.empty((1, row), dtype=torch.int8, device=received.device)
    bg = _bg(gps)
    _dequant_accumulate_kernel[(triton.cdiv(gps, bg),)](
        received, send, world, gps, row,
        QMAX=QMAX[quant], G=group_size, BG=bg, FP8=quant == "fp8", **_IEEE,
    )  # fmt: skip
    return send


def dequantize_into(buf: torch.Tensor, out: torch.Tensor, group_size: int, quant: str) -> None:
    """Flat contiguous ``out`` (n elements) := the dequantised rows of ``buf``."""
    world, row = buf.shape
    gps = row // (group_size + 4)
    total = world * gps
    bg = _bg(total)
    _dequantize_kernel[(triton.cdiv(total, bg),)](
        buf, out, out.numel(), total, gps, row, G=group_size, BG=bg, FP8=quant == "fp8", **_IEEE
    )


_INTS = {"n": "i64", "total_groups": "i32", "gps": "i32", "ROW": "i64"}
#: What Triton specialises on at the launches that move the bytes (power-of-two messages of at
#: least 16 groups per rank, as the bench sweeps them): fresh, 16-byte aligned buffers, and
#: element, group and row-byte counts that are multiples of 16. Smaller messages run another
#: specialisation, bound by launch latency, not by this code.
_DIVISIBLE = ("n", "total_groups", "gps", "ROW")
_FORMATS = (("int8", 127.0, False), ("fp8", 448.0, True))  # name, QMAX, FP8


def _variants(sig: dict[str, str], aligned: tuple[str, ...], qmax: bool) -> list[TritonVariant]:
    """One variant per quantised format (GPU group sizes; ``QMAX`` only where the kernel
    quantises)."""
    return [
        TritonVariant(
            sig,
            {**({"QMAX": q} if qmax else {}), "G": 128, "BG": _BG_GPU, "FP8": fp8},
            num_warps=4,
            label=f"{name} G=128 BG={_BG_GPU} w4",
            min_arch=89 if fp8 else 80,
            divisible_by_16=aligned,
            enable_fp_fusion=_IEEE["enable_fp_fusion"],
        )
        for name, q, fp8 in _FORMATS
    ]


def _analysis() -> tuple[TritonAnalysis, ...]:
    out = []
    for x_ty in ("bf16", "fp16", "fp32"):
        quantize = {"x_ptr": f"*{x_ty}", "buf_ptr": "*i8", **_INTS}
        dequantize = {"buf_ptr": "*i8", "out_ptr": f"*{x_ty}", **_INTS}
        out += [
            TritonAnalysis(
                f"comm.quantize_{x_ty}",
                _quantize_kernel,
                _variants(quantize, ("x_ptr", "buf_ptr", *_DIVISIBLE), qmax=True),
                hot=True,
            ),
            TritonAnalysis(
                f"comm.dequantize_{x_ty}",
                _dequantize_kernel,
                _variants(dequantize, ("buf_ptr", "out_ptr", *_DIVISIBLE), qmax=False),
                hot=True,
            ),
        ]
    accumulate = {"recv_ptr": "*i8", "send_ptr": "*i8", "world": "i32", "gps": "i32", "ROW": "i64"}
    out.append(
        TritonAnalysis(
            "comm.dequant_accumulate",
            _dequant_accumulate_kernel,
            _variants(accumulate, ("recv_ptr", "send_ptr", "gps", "ROW"), qmax=True),
            hot=True,
        )
    )
    return tuple(out)


ANALYSIS = _analysis()
