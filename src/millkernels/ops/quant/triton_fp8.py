"""Triton fp8 (e4m3) kernels: fused activation quantisation and scaled GEMMs.

- ``_act_quant_kernel``: one program per (token, group): amax over the group, scale
  ``amax / 448``, ``q = e4m3(x / scale)`` (nearest even, saturating). Both divisions are
  IEEE (``tl.math.div_rn``; a plain ``/`` compiles to an approximate division on a GPU), so
  codes and scales equal ``reference.act_quant``'s bit for bit. Groups are the whole row
  (per-token, ``fp8_rowwise``) or 128 features (``fp8_block``); with a given scale it only
  casts (``fp8_tensor``, whose amax is one torch reduction first).
- ``_fp8_gemm_kernel``: ``out = (xq @ wq^T) * scales (+ bias)``, A (M, K) and B (N, K) both
  K-major, as Hopper's fp8 wgmma wants; float32 accumulation. Tensor/rowwise scales are applied
  once at the end; 128x128-block scales per 128-wide K step (``BLOCK_K = 128``).

Under ``TRITON_INTERPRET=1`` (Triton 3.9): loading e4m3 and widening it to float32 is exact,
but the float32 -> e4m3 cast drops the carry when rounding up across a power of two (31.2 ->
16 instead of 32), and fp8 ``tl.dot`` multiplies bit patterns. So under the interpreter
:func:`_to_e4m3` rounds in float32 first (the cast is then exact) and ``triton_common.dot``
widens to float32. Compiled for a GPU both are the plain instructions.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from millkernels.ops.analysis_spec import TritonAnalysis, TritonVariant, variants_from_configs
from millkernels.ops.quant.formats import FP8_BLOCK, FP8_DTYPE, fp8_scale
from millkernels.ops.triton_common import INTERPRET, cast, dot

ACT_BLOCK = 1024  # elements per chunk of a per-token row (two passes: amax, then cast)
MODE_TENSOR, MODE_ROWWISE, MODE_BLOCK = 0, 1, 2


#: Allocates every output and workspace (tests swap in a poisoning allocator).
_empty = torch.empty


@triton.jit
def _to_e4m3(x):
    """float32 -> e4m3, nearest even, saturating at +-448."""
    x = tl.minimum(tl.maximum(x, -448.0), 448.0)
    if INTERPRET:
        bits = x.to(tl.int32, bitcast=True)
        lsb = (bits >> 20) & 1
        normal = ((bits + 0x7FFFF + lsb) & -1048576).to(tl.float32, bitcast=True)  # 3 bits
        mag = tl.abs(x)
        sub = (mag + 16384.0) - 16384.0  # multiples of 2**-9: e4m3's subnormal step
        sub = tl.where(bits < 0, -sub, sub)  # the sign bit: -0.0 and tiny negatives give -0.0
        x = tl.where(mag < 0.015625, sub, normal)
    return x.to(tl.float8e4nv)


@triton.jit
def _act_quant_kernel(
    x_ptr,
    q_ptr,
    s_ptr,
    K,
    stride_xm,
    stride_qm,
    stride_sm,
    group_len,
    STATIC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    grp = tl.program_id(1)
    start = grp * group_len
    end = tl.minimum(start + group_len, K)
    x_row = x_ptr + row.to(tl.int64) * stride_xm
    q_row = q_ptr + row.to(tl.int64) * stride_qm
    if STATIC:
        scale = tl.load(s_ptr)
    else:
        amax = tl.zeros((BLOCK,), dtype=tl.float32)
        for c in range(start, end, BLOCK):
            offs = c + tl.arange(0, BLOCK)
            v = tl.load(x_row + offs, mask=offs < end, other=0.0).to(tl.float32)
            amax = tl.maximum(amax, tl.abs(v))
        m = tl.max(amax, axis=0)
        scale = tl.where(m > 0, tl.math.div_rn(m, 448.0), 1.0)
        tl.store(s_ptr + row * stride_sm + grp, scale)
    for c in range(start, end, BLOCK):
        offs = c + tl.arange(0, BLOCK)
        mask = offs < end
        v = tl.load(x_row + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(q_row + offs, _to_e4m3(tl.math.div_rn(v, scale)), mask=mask)


def act_quant(x: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise x (M, K) fp16/bf16 (contiguous rows) like ``reference.act_quant``."""
    m, k = x.shape
    q = _empty((m, k), dtype=FP8_DTYPE, device=x.device)
    if mode == "tensor":
        s = fp8_scale(x.abs().amax()).reshape(1)
        grid, group_len, block, static, stride_s = (m, 1), k, ACT_BLOCK, True, 0
    elif mode == "token":
        s = _empty((m,), dtype=torch.float32, device=x.device)
        grid, group_len, block, static, stride_s = (m, 1), k, ACT_BLOCK, False, 1
    else:
        kb = triton.cdiv(k, FP8_BLOCK)
        s = _empty((m, kb), dtype=torch.float32, device=x.device)
        grid, group_len, block, static, stride_s = (m, kb), FP8_BLOCK, FP8_BLOCK, False, kb
    if m:
        _act_quant_kernel[grid](
            x,
            q,
            s,
            k,
            x.stride(0),
            k,
            stride_s,
            group_len,
            STATIC=static,
            BLOCK=block,
            num_warps=4,
        )
    return q, s


@triton.jit
def _fp8_gemm_kernel(
    a_ptr,
    b_ptr,
    as_ptr,
    bs_ptr,
    bias_ptr,
    c_ptr,
    M,
    N,
    K,
    stride_am,
    stride_bn,
    stride_cm,
    stride_as,
    stride_bs,
    M_BUCKET,
    SCALE_MODE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    # grouped launch order: GROUP_M row-tiles share each column tile while it is in L2
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % size_m
    pid_n = (pid % per_group) // size_m
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = offs_m % M  # wrapped: loads need no row/column masks, stores are masked
    cols = offs_n % N
    offs_k = tl.arange(0, BLOCK_K)
    # 32-bit offsets (the launcher checks M*K and N*K < 2**31): 64-bit pointer tiles spill
    a_ptrs = a_ptr + (rows[:, None] * stride_am + offs_k[None, :])
    b_ptrs = b_ptr + (cols[None, :] * stride_bn + offs_k[:, None])
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            kmask = offs_k < K - k0
            a = tl.load(a_ptrs, mask=kmask[None, :], other=0.0)
            b = tl.load(b_ptrs, mask=kmask[:, None], other=0.0)
        if SCALE_MODE == 2:
            kb = k0 // BLOCK_K
            sa = tl.load(as_ptr + rows * stride_as + kb)
            sb = tl.load(bs_ptr + (cols // BLOCK_K) * stride_bs + kb)
            part = dot(a, b, tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32))
            acc += part * sa[:, None] * sb[None, :]
        else:
            acc = dot(a, b, acc)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    if SCALE_MODE == 0:
        acc = acc * (tl.load(as_ptr) * tl.load(bs_ptr))
    elif SCALE_MODE == 1:
        acc = acc * tl.load(as_ptr + rows)[:, None] * tl.load(bs_ptr + cols)[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols).to(tl.float32)[None, :]
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    c_ptrs = c_ptr + (offs_m[:, None] * stride_cm + offs_n[None, :])
    tl.store(c_ptrs, cast(acc, c_ptr.dtype.element_ty), mask=mask)


def _cfg(bm: int, bn: int, bk: int, warps: int, stages: int, gm: int = 8) -> triton.Config:
    return triton.Config(
        {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": gm},
        num_warps=warps,
        num_stages=stages,
    )


# Hopper: 128x128 / 128x256 tiles with 8 warps (two warpgroups) keep wgmma busy; 64-row tiles
# for small M. Not yet tuned on a GPU (no H100 run yet); the list is the usual fp8 space.
CONFIGS = [
    _cfg(128, 256, 128, 8, 3),
    _cfg(128, 128, 128, 8, 4),
    _cfg(128, 128, 128, 4, 4),
    _cfg(64, 128, 128, 4, 4),
    _cfg(64, 64, 128, 4, 4),
    _cfg(128, 64, 128, 4, 4),
    _cfg(64, 256, 128, 8, 3),
]


def _fits(cfg: triton.Config, m_bucket: int, mode: int) -> bool:
    kw = cfg.kwargs
    if mode == MODE_BLOCK and 2 * kw["BLOCK_M"] * kw["BLOCK_N"] > 128 * 32 * cfg.num_warps:
        # two fp32 tiles live (acc + the block's partial): over 128 registers per thread for
        # them spills (analyze, sm_90: 128x256 w8 and 128x128 w4 spill 300+ B)
        return False
    return kw["BLOCK_M"] <= max(64, m_bucket)


def _prune(configs, named_args, **kwargs):
    # Triton passes positional arguments as named_args and keyword arguments as kwargs
    args = {**named_args, **kwargs}
    ok = [c for c in configs if _fits(c, int(args["M_BUCKET"]), int(args["SCALE_MODE"]))]
    return ok or [CONFIGS[3]]


_fp8_tuned = triton.autotune(
    configs=CONFIGS,
    key=["M_BUCKET", "N", "K"],
    prune_configs_by={"early_config_prune": _prune},
)(_fp8_gemm_kernel)

#: The config the interpreter uses (small tiles; BLOCK_K must stay 128 for block scales).
INTERPRET_CONFIG = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 128, "GROUP_M": 4}


def gemm(
    xq: torch.Tensor,
    x_scale: torch.Tensor,
    wq: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    mode: int,
    config: dict[str, int] | None = None,
) -> torch.Tensor:
    """(M, K) e4m3 x (N, K) e4m3 -> (M, N) ``out_dtype`` with the scales of ``mode``."""
    from millkernels.ops.quant.triton_weight_only import m_bucket

    m, k = xq.shape
    n = wq.shape[0]
    if max(m, n) * k >= 2**31 or m * n >= 2**31:
        raise ValueError(f"x: ({m}, {k}) x ({n}, {k}) exceeds the kernel's 32-bit offsets")
    out = _empty((m, n), dtype=out_dtype, device=xq.device)
    if m == 0:
        return out
    args = dict(
        a_ptr=xq,
        b_ptr=wq,
        as_ptr=x_scale,
        bs_ptr=w_scale,
        bias_ptr=bias if bias is not None else x_scale,
        c_ptr=out,
        M=m,
        N=n,
        K=k,
        stride_am=xq.stride(0),
        stride_bn=wq.stride(0),
        stride_cm=out.stride(0),
        stride_as=x_scale.stride(0) if mode == MODE_BLOCK else 0,
        stride_bs=w_scale.stride(0) if mode == MODE_BLOCK else 0,
        M_BUCKET=m_bucket(m),
        SCALE_MODE=mode,
        HAS_BIAS=bias is not None,
        EVEN_K=k % 128 == 0,  # every config has BLOCK_K = 128
    )

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)

    if config is None and not INTERPRET:
        _fp8_tuned[grid](**args)
    else:
        cfg = dict(config or INTERPRET_CONFIG)
        _fp8_gemm_kernel[grid(cfg)](**args, **cfg)
    return out


def tuned_config() -> dict | None:
    """The config autotuning chose last (for benchmark rows), or None."""
    from millkernels.ops.autotune import autotune_config

    return autotune_config(_fp8_tuned)


def _analysis() -> tuple[TritonAnalysis, ...]:
    sig = {
        "a_ptr": "*fp8e4nv",
        "b_ptr": "*fp8e4nv",
        "as_ptr": "*fp32",
        "bs_ptr": "*fp32",
        "bias_ptr": "*bf16",
        "c_ptr": "*bf16",
        "M": "i32",
        "N": "i32",
        "K": "i32",
        "stride_am": "i32",
        "stride_bn": "i32",
        "stride_cm": "i32",
        "stride_as": "i32",
        "stride_bs": "i32",
        "M_BUCKET": "i32",
    }
    # what a launch on LLM shapes specialises on: pointers, K and the row strides 16-divisible
    aligned = (*[k for k, v in sig.items() if v.startswith("*")], "K", "stride_am", "stride_bn")
    out = []
    for mode, name in ((MODE_TENSOR, "tensor"), (MODE_ROWWISE, "rowwise"), (MODE_BLOCK, "block")):
        consts = {"SCALE_MODE": mode, "HAS_BIAS": False, "EVEN_K": True}
        cfgs = [c for c in CONFIGS if _fits(c, 256, mode)]  # every config autotuning may pick
        variants = variants_from_configs(cfgs, sig, consts, min_arch=90, divisible_by_16=aligned)
        out.append(TritonAnalysis(f"quant.fp8_{name}_gemm", _fp8_gemm_kernel, variants, hot=True))
    act_sig = {
        "x_ptr": "*bf16",
        "q_ptr": "*fp8e4nv",
        "s_ptr": "*fp32",
        "K": "i32",
        "stride_xm": "i32",
        "stride_qm": "i32",
        "stride_sm": "i32",
        "group_len": "i32",
    }
    out.append(
        TritonAnalysis(
            "quant.fp8_act_quant",
            _act_quant_kernel,
            [
                TritonVariant(act_sig, {"STATIC": False, "BLOCK": ACT_BLOCK}, 4, 1, min_arch=90),
                TritonVariant(act_sig, {"STATIC": False, "BLOCK": FP8_BLOCK}, 4, 1, min_arch=90),
                TritonVariant(act_sig, {"STATIC": True, "BLOCK": ACT_BLOCK}, 4, 1, min_arch=90),
            ],
            hot=True,
        )
    )
    return tuple(out)


ANALYSIS = _analysis()
