"""Triton weight-only GEMM (w4a16, w8a16): ``out = x @ dequant(W)^T (+ bias)``.

Packed int32 words (canonical layout, :mod:`millkernels.ops.quant.formats`) are loaded once
each, unpacked in registers by shifts into a (BLOCK_K, BLOCK_N) tile of exact integers
``q - zero`` in x's dtype (|q - zero| <= 255 is exact in fp16 and bf16; built with magic
numbers, no int -> float conversion, see :func:`_dequant`), multiplied on the tensor cores with
float32 accumulation, and scaled per K tile (``BLOCK_K`` divides the group size, so a tile lies
in one group; per-channel weights are scaled once at the end). Small M splits K over a third
grid axis into float32 partials, reduced inside the same launch: each program stores its
partial and arrives on its output tile's counter; the last to arrive sums the partials in the
fixed order 0..split-1 (deterministic), adds the bias, stores the output and resets the counter
to 0. Configs are autotuned on GPUs with a key of the next power of two of M (capped at 256),
N, K, the group size, the split and the variant.

``variant="legacy"`` keeps the previous kernel (one I2F per weight, partials summed in torch
by a second and third launch) selectable, to compare both on a GPU.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import triton
import triton.language as tl

from millkernels import runtime
from millkernels.ops.analysis_spec import Expect, TritonAnalysis, variants_from_configs
from millkernels.ops.quant.capabilities import TRITON_VARIANTS, triton_variant
from millkernels.ops.triton_common import INTERPRET, cast, dot, sub

SPLIT_ALIGN = 128  # K per split is a multiple of this (>= every BLOCK_K)


#: Allocates every output and workspace (tests swap in a poisoning allocator).
_empty = torch.empty
# (device index, stream handle, tiles) -> split-K counters (see split_counters); never evicted
_COUNTERS: dict[tuple[int, int, int], torch.Tensor] = {}


@triton.jit
def _int_to(v, dtype: tl.constexpr):
    """Small integers to fp16/bf16 (exact), one I2F each (the legacy path). The interpreter's
    int -> bf16 cast is wrong (it gives NaN), so there it goes through float32."""
    if INTERPRET:
        return v.to(tl.float32).to(dtype)
    else:
        return v.to(dtype)


@triton.jit
def _dequant(q, zero, BITS: tl.constexpr, dtype: tl.constexpr, LEGACY: tl.constexpr):
    """``q - zero`` in ``dtype`` (exact) for codes ``q`` (BLOCK_K, BLOCK_N) and zero points
    ``zero`` (BLOCK_N,), int32 in [0, 2**BITS), without an int -> float conversion per weight.

    Magic numbers: OR-ing a code v < 2**m into the bits of the float 2**m (whose unit in the
    last place is 1) gives the float 2**m + v, so a subtraction of the same construction of
    the zero point leaves q - zero, an exact small integer. fp16: 0x6400 = 1024 (m = 10);
    bf16 at 4 bits: 0x4300 = 128 (m = 7); bf16 at 8 bits (codes up to 255 exceed bf16's 7
    mantissa bits): float32 0x4B000000 = 2**23, then a cast to bf16, exact for |q - zero| <=
    255. Replaces one I2F (a quarter-rate instruction on sm_80/sm_90) per weight by integer
    OR and half-precision subtraction. ``LEGACY``: the integer subtraction and an I2F."""
    if LEGACY:
        return _int_to(q - zero[None, :], dtype)
    elif dtype == tl.float16:
        w = (q | 0x6400).to(tl.int16).to(tl.float16, bitcast=True)
        base = (zero | 0x6400).to(tl.int16).to(tl.float16, bitcast=True)
        return w - base[None, :]
    elif BITS == 4:
        w = (q | 0x4300).to(tl.int16).to(tl.bfloat16, bitcast=True)
        base = (zero | 0x4300).to(tl.int16).to(tl.bfloat16, bitcast=True)
        return sub(w, base[None, :])
    else:
        w = (q | 0x4B000000).to(tl.float32, bitcast=True)
        base = (zero | 0x4B000000).to(tl.float32, bitcast=True)
        return (w - base[None, :]).to(dtype)


@triton.jit
def _wo_kernel(
    x_ptr,
    qw_ptr,
    s_ptr,
    z_ptr,
    bias_ptr,
    out_ptr,
    ws_ptr,
    cnt_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_om,
    stride_os,
    group_size,
    k_per_split,
    M_BUCKET,
    BITS: tl.constexpr,
    HAS_ZEROS: tl.constexpr,
    PER_CHANNEL: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SPLIT: tl.constexpr,
    LEGACY: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    PER: tl.constexpr = 32 // BITS
    KW: tl.constexpr = BLOCK_K // PER
    QMASK: tl.constexpr = (1 << BITS) - 1
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    words_k = (K + PER - 1) // PER
    shifts = tl.arange(0, PER) * BITS
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if PER_CHANNEL:
        scale = tl.load(s_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        if HAS_ZEROS:
            zero = tl.load(z_ptr + offs_n, mask=mask_n, other=0).to(tl.int32)
        else:
            zero = tl.full((BLOCK_N,), 1 << (BITS - 1), tl.int32)
    k_start = pid_k * k_per_split
    # group of the current K tile, carried through the loop (no division per tile): BLOCK_K
    # divides the group size, so the group advances every `tiles_per_group` tiles
    g = k_start // group_size
    tiles_per_group = group_size // BLOCK_K
    tile_in_group = (k_start - g * group_size) // BLOCK_K
    k_end = tl.minimum(k_start + k_per_split, K)
    for k0 in range(k_start, k_end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(
            x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
            mask=mask_m[:, None] & (offs_k[None, :] < K),
            other=0.0,
        )
        offs_w = k0 // PER + tl.arange(0, KW)
        words = tl.load(
            qw_ptr + offs_w[:, None] * N + offs_n[None, :],
            mask=(offs_w[:, None] < words_k) & mask_n[None, :],
            other=0,
        )
        q = (words[:, None, :] >> shifts[None, :, None]) & QMASK
        q = tl.reshape(q, (BLOCK_K, BLOCK_N))
        if PER_CHANNEL:
            w = _dequant(q, zero, BITS, a.dtype, LEGACY)
            acc = dot(a, w, acc)
        else:
            if LEGACY:
                g = k0 // group_size  # the previous kernel: one division per tile
            scale = tl.load(s_ptr + g * N + offs_n, mask=mask_n, other=0.0).to(tl.float32)
            if HAS_ZEROS:
                zero = tl.load(z_ptr + g * N + offs_n, mask=mask_n, other=0).to(tl.int32)
            else:
                zero = tl.full((BLOCK_N,), 1 << (BITS - 1), tl.int32)
            w = _dequant(q, zero, BITS, a.dtype, LEGACY)
            part = dot(a, w, tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32))
            acc += part * scale[None, :]
            tile_in_group += 1
            wrap = tile_in_group == tiles_per_group
            g += wrap.to(tl.int32)
            tile_in_group = tl.where(wrap, 0, tile_in_group)
    if PER_CHANNEL:
        acc = acc * scale[None, :]
    out_offs = offs_m[:, None] * stride_om + offs_n[None, :]
    mask = mask_m[:, None] & mask_n[None, :]
    if SPLIT and LEGACY:  # float32 partials, summed by the launcher in torch
        tl.store(out_ptr + pid_k * stride_os + out_offs, acc, mask=mask)
    else:
        if SPLIT:
            # float32 partial to the workspace (through L2), then arrive on the tile's counter;
            # the last of the tile's programs to arrive sums the partials in the fixed order
            # 0..split-1 (bitwise the same whatever the arrival order) and resets the counter.
            # The barrier orders every thread's stores before the arrival (one thread's
            # atomic, gpu scope, acquire-release; causality is transitive through bar.sync).
            n_split = tl.num_programs(2)
            tl.store(ws_ptr + pid_k * stride_os + out_offs, acc, mask=mask, cache_modifier=".cg")
            tl.debug_barrier()
            tile = pid_m * tl.num_programs(1) + pid_n
            before = tl.atomic_add(cnt_ptr + tile, 1, sem="acq_rel", scope="gpu")
            if before == n_split - 1:
                acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
                for s in range(0, n_split):
                    acc += tl.load(
                        ws_ptr + s * stride_os + out_offs, mask=mask, other=0.0,
                        cache_modifier=".cg",
                    )  # fmt: skip
                tl.atomic_xchg(cnt_ptr + tile, 0, sem="relaxed", scope="gpu")
                _epilogue(acc, bias_ptr, out_ptr, out_offs, offs_n, mask, mask_n, HAS_BIAS)
        else:
            _epilogue(acc, bias_ptr, out_ptr, out_offs, offs_n, mask, mask_n, HAS_BIAS)


@triton.jit
def _epilogue(acc, bias_ptr, out_ptr, out_offs, offs_n, mask, mask_n, HAS_BIAS: tl.constexpr):
    """``acc`` (+ bias) rounded to the output's dtype and stored."""
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + out_offs, cast(acc, out_ptr.dtype.element_ty), mask=mask)


def _cfg(bm: int, bn: int, bk: int, warps: int, stages: int) -> triton.Config:
    return triton.Config(
        {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages
    )


# Small M (decode): one 16-row tile, wide N tiles, deep pipelines for the weight stream.
# Large M: square-ish tiles for tensor-core reuse. Not yet tuned on a GPU (no H100 run yet).
CONFIGS = [
    _cfg(16, 64, 128, 4, 4),
    _cfg(16, 128, 128, 4, 4),
    _cfg(16, 256, 64, 4, 4),
    _cfg(16, 128, 64, 4, 3),
    _cfg(16, 64, 32, 4, 4),
    _cfg(32, 128, 64, 4, 4),
    _cfg(64, 128, 64, 4, 4),
    _cfg(64, 128, 32, 4, 4),
    _cfg(128, 128, 64, 8, 3),
    _cfg(128, 256, 64, 8, 3),
    _cfg(128, 128, 32, 8, 3),
    _cfg(16, 64, 16, 4, 3),
]


def _fits(cfg: triton.Config, m_bucket: int, group_size: int, per_channel: bool) -> bool:
    kw = cfg.kwargs
    if not per_channel and group_size % kw["BLOCK_K"]:
        return False
    bm = kw["BLOCK_M"]
    if m_bucket <= 16:
        return bm == 16
    if m_bucket <= 64:
        return bm in (32, 64) or (bm == 16 and m_bucket <= 32)
    return bm >= 64


def _prune(configs, named_args, **kwargs):
    # Triton passes positional arguments as named_args and keyword arguments as kwargs
    args = {**named_args, **kwargs}
    m_bucket = int(args["M_BUCKET"])
    ok = [c for c in configs if _fits(c, m_bucket, int(args["group_size"]), args["PER_CHANNEL"])]
    return ok or [CONFIGS[-1]]


_wo_tuned = triton.autotune(
    configs=CONFIGS,
    key=["M_BUCKET", "N", "K", "group_size", "k_per_split", "LEGACY"],  # each variant tuned
    prune_configs_by={"early_config_prune": _prune},
)(_wo_kernel)


def m_bucket(m: int) -> int:
    """Autotune key for M: the next power of two, capped at 256."""
    return min(256, 1 << max(0, (m - 1).bit_length()))


def default_config(m: int, group_size: int, per_channel: bool) -> dict[str, int]:
    """The config used where there is no autotuning (the interpreter): the first that fits."""
    for c in CONFIGS:
        if _fits(c, m_bucket(m), group_size, per_channel):
            return {**c.kwargs, "num_warps": c.num_warps, "num_stages": c.num_stages}
    c = CONFIGS[-1]
    return {**c.kwargs, "num_warps": c.num_warps, "num_stages": c.num_stages}


def choose_split(m: int, n: int, k: int, device: torch.device) -> int:
    """Split K when few output tiles would leave SMs idle (M <= 64): aim at ~2 tiles per SM,
    at least 256 input features per split."""
    if m > 64:
        return 1
    sms = runtime.device_sms(device)
    tiles = math.ceil(m / 16) * math.ceil(n / 128)
    want = max(1, (2 * sms) // max(tiles, 1))
    most = max(1, k // 256)
    split = 1
    while split * 2 <= min(want, most):
        split *= 2
    return split


def split_counters(tiles: int, device: torch.device) -> torch.Tensor:
    """int32 (tiles,) zeros: the split-K arrival counters of a launch with up to ``tiles``
    output tiles. Every launch leaves them 0, so on a GPU one tensor per (device, stream,
    tiles) is kept for the life of the process (a CUDA graph that captured it stays valid;
    launches on one stream are ordered, two streams get two tensors). Under CUDA-graph
    capture without a cached tensor, and on the CPU (interpreter), a fresh one each call."""
    if device.type != "cuda":
        return torch.zeros((tiles,), dtype=torch.int32, device=device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    key = (index, torch.cuda.current_stream(index).cuda_stream, tiles)
    hit = _COUNTERS.get(key)
    if hit is None:
        hit = torch.zeros((tiles,), dtype=torch.int32, device=device)
        if not torch.cuda.is_current_stream_capturing():
            _COUNTERS[key] = hit
    return hit


def matmul(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    bias: torch.Tensor | None,
    *,
    bits: int,
    group_size: int,
    n: int,
    split: int | None = None,
    config: dict[str, int] | None = None,
    variant: str | None = None,
) -> torch.Tensor:
    """Launch for x (M, K) contiguous fp16/bf16 -> (M, N) in x's dtype. ``split`` and
    ``config`` override the heuristic / autotuning (tests). ``variant``: ``"fused"``
    (magic-number dequantisation, split K reduced in the kernel) or ``"legacy"`` (one I2F per
    weight, split-K partials summed in torch: kept to compare on a GPU); None:
    :func:`capabilities.triton_variant` (``MILLKERNELS_QUANT_TRITON_VARIANT``)."""
    variant = triton_variant() if variant is None else variant
    if variant not in TRITON_VARIANTS:
        raise ValueError(f"variant: expected one of {TRITON_VARIANTS}, got {variant!r}")
    legacy = variant == "legacy"
    m, k = x.shape
    per_channel = group_size == k
    if split is None:
        split = choose_split(m, n, k, x.device)
    k_per_split = math.ceil(math.ceil(k / split) / SPLIT_ALIGN) * SPLIT_ALIGN
    split = math.ceil(k / k_per_split)
    if max(m * k, split * m * n, qweight.numel()) >= 2**31:
        raise ValueError(f"x: ({m}, {k}) x ({n}, {k}) exceeds the kernel's 32-bit offsets")
    out = _empty((m, n), dtype=x.dtype, device=x.device)
    ws = _empty((split, m, n), dtype=torch.float32, device=x.device) if split > 1 else out
    tuned = config is None and not INTERPRET
    cfg = {} if tuned else dict(config or default_config(m, group_size, per_channel))
    # counters: one per output tile (of the smallest tiles any config uses when autotuned)
    bm = cfg.get("BLOCK_M") or min(c.kwargs["BLOCK_M"] for c in CONFIGS)
    bn = cfg.get("BLOCK_N") or min(c.kwargs["BLOCK_N"] for c in CONFIGS)
    cnt = split_counters(triton.cdiv(m, bm) * triton.cdiv(n, bn), x.device) if split > 1 else out
    dummy = scales  # never read when the flag is off
    args = dict(
        x_ptr=x,
        qw_ptr=qweight,
        s_ptr=scales,
        z_ptr=zeros if zeros is not None else dummy,
        bias_ptr=bias if bias is not None else dummy,
        out_ptr=ws if legacy else out,
        ws_ptr=ws,
        cnt_ptr=cnt,
        M=m,
        N=n,
        K=k,
        stride_xm=x.stride(0),
        stride_om=n,
        stride_os=m * n,
        group_size=group_size,
        k_per_split=k_per_split,
        M_BUCKET=m_bucket(m),
        BITS=bits,
        HAS_ZEROS=zeros is not None,
        PER_CHANNEL=per_channel,
        HAS_BIAS=bias is not None,
        SPLIT=split > 1,
        LEGACY=legacy,
    )
    if tuned:

        def grid(meta):
            return (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(n, meta["BLOCK_N"]), split)

        _wo_tuned[grid](**args)
    else:
        fixed_grid = (triton.cdiv(m, cfg["BLOCK_M"]), triton.cdiv(n, cfg["BLOCK_N"]), split)
        _wo_kernel[fixed_grid](**args, **cfg)
    if split > 1 and legacy:
        acc = ws.sum(0)
        if bias is not None:
            acc += bias.float()
        out.copy_(acc)
    return out


def tuned_config() -> dict | None:
    """The config autotuning chose last (for benchmark rows), or None."""
    from millkernels.ops.autotune import autotune_config

    return autotune_config(_wo_tuned)


def _signature(xdt: str, sdt: str, zdt: str) -> dict[str, str]:
    return {
        "x_ptr": f"*{xdt}",
        "qw_ptr": "*i32",
        "s_ptr": f"*{sdt}",
        "z_ptr": f"*{zdt}",
        "bias_ptr": f"*{xdt}",
        "out_ptr": f"*{xdt}",
        "ws_ptr": "*fp32",
        "cnt_ptr": "*i32",
        "M": "i32",
        "N": "i32",
        "K": "i32",
        "stride_xm": "i32",
        "stride_om": "i32",
        "stride_os": "i32",
        "group_size": "i32",
        "k_per_split": "i32",
        "M_BUCKET": "i32",
    }


#: Evidence of the fused kernel (``millkernels analyze --check``): the magic-number
#: dequantisation leaves no I2F per weight in the hot loop (legacy: 128 a thread at
#: BLOCK_N=128, BLOCK_K=128), the carried group index no division (I2F + MUFU.RCP; legacy: one
#: per tile): sm_90 loop of that variant 823 instructions on Triton 3.9 (legacy 955), 973 on
#: 3.6 (legacy 922: 3.6 does not fuse the mask and the OR into one LOP3, 226 LOP3 vs 81).
FUSED_EXPECT = (
    Expect("loop.i2f", "==", 0, "magic-number dequantisation: no I2F per weight, no division"),
    Expect("loop.mufu", "==", 0, "no integer division per K tile (carried group index)"),
    Expect("spill_bytes", "==", 0, "no register spills"),
)


def _analysis() -> tuple[TritonAnalysis, ...]:
    small = [c for c in CONFIGS if c.kwargs["BLOCK_M"] == 16][:3]
    large = [c for c in CONFIGS if c.kwargs["BLOCK_M"] >= 64][:3]
    base = {"HAS_ZEROS": True, "PER_CHANNEL": False, "HAS_BIAS": False, "LEGACY": False}

    def entry(name, cfgs, xdt, consts, expect=FUSED_EXPECT):
        sig = _signature(xdt, xdt, "u8")
        # what a launch on LLM shapes specialises on: pointers, sizes and strides 16-divisible
        aligned = (*[k for k, v in sig.items() if v.startswith("*")], "N", "K", "stride_xm",
                   "stride_om", "group_size", "k_per_split")  # fmt: skip
        variants = variants_from_configs(cfgs, sig, {**base, **consts}, divisible_by_16=aligned)
        variants = [dataclasses.replace(v, expect=expect) for v in variants]
        return TritonAnalysis(name, _wo_kernel, variants, hot=True)

    out = []
    for bits in (4, 8):
        for label, cfgs, split in (("small_m", small, True), ("large_m", large, False)):
            consts = {"BITS": bits, "SPLIT": split}
            out.append(entry(f"quant.w{bits}a16_{label}", cfgs, "fp16", consts))
        # bf16: 4 bits subtract in bf16 (0x4300), 8 bits go through float32 (2**23)
        consts = {"BITS": bits, "SPLIT": True}
        out.append(entry(f"quant.w{bits}a16_small_m_bf16", small[1:2], "bf16", consts))
    legacy = {"BITS": 4, "SPLIT": True, "LEGACY": True}  # the I2F kernel, for comparison
    out.append(entry("quant.w4a16_small_m_legacy", small[1:2], "fp16", legacy, expect=()))
    return tuple(out)


ANALYSIS = _analysis()
