"""Triton attention forward (FlashAttention-2): dense and variable-length, GQA, windows, softcap.

One program computes ``BLOCK_M`` query rows of one query head against the key blocks those
rows can see, with an online softmax in base 2. The key range of a query block is split into
three loops (:func:`block_ranges`): blocks needing masks on the left, blocks every row sees
in full (no mask work), blocks needing masks on the right (causal diagonal, window edge,
sequence end). Query head ``h`` reads key/value head ``h // group``. ``head_dim`` is padded
to a power of two (``BLOCK_D``) with masked loads. Rows that see no key produce zeros and
``lse = -inf``.

Calls with only full blocks and no mask can take a warp-specialised form (``WS``): one
unmasked loop whose TMA loads a producer warpgroup issues while two consumer warpgroups
compute (:func:`ws_unfit` says which calls fit; opt-in through the capability table).

Windows arrive as two non-negative ints ``(left, right)`` with ``BIG`` meaning unbounded;
causal is folded in as ``right = min(right, 0)`` by the caller.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, NamedTuple

import torch
import triton
import triton.language as tl

from millkernels import runtime
from millkernels.ops.analysis_spec import (
    Expect,
    TritonAnalysis,
    TritonVariant,
    variants_from_configs,
    with_spill_allowance,
)
from millkernels.ops.attention.capabilities import aligned16
from millkernels.ops.triton_common import cast, dot, tanh

BIG = 1 << 30  # an unbounded window side (seqlens stay below 2**29)
LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


@triton.jit
def block_ranges(a_start, BLOCK_A: tl.constexpr, len_b, c, L, R, BLOCK_B: tl.constexpr):
    """For rows ``a`` in ``[a_start, a_start + BLOCK_A)`` that see ``b`` when
    ``a + c - L <= b <= a + c + R`` and ``b < len_b``: the b-blocks to visit as
    ``[lo, full_lo)`` masked, ``[full_lo, full_hi)`` unmasked (every row sees every b of the
    block, and the block ends inside ``len_b``), ``[full_hi, hi)`` masked. ``lo``, ``full_lo``
    and ``full_hi`` are multiples of ``BLOCK_B`` (or equal ``hi``)."""
    a_last = a_start + BLOCK_A - 1
    lo = (tl.maximum(a_start + c - L, 0) // BLOCK_B) * BLOCK_B
    hi = tl.maximum(tl.minimum(a_last + c + R + 1, len_b), lo)
    full_lo = ((tl.maximum(a_last + c - L, lo) + BLOCK_B - 1) // BLOCK_B) * BLOCK_B
    full_lo = tl.minimum(full_lo, hi)
    full_hi = (tl.maximum(tl.minimum(a_start + c + R + 1, len_b), 0) // BLOCK_B) * BLOCK_B
    full_hi = tl.maximum(full_hi, full_lo)
    return lo, full_lo, full_hi, hi


@triton.jit
def sequence_offsets(
    CU_Q,
    CU_K,
    b,
    seqlen_q,
    seqlen_k,
    stride_qb,
    stride_qs,
    stride_kb,
    stride_ks,
    stride_vb,
    stride_vs,
    stride_xb,
    stride_xs,
    stride_lb,
    VARLEN: tl.constexpr,
):
    """Where sequence ``b`` lives: ``(len_q, len_k, q_off, k_off, v_off, x_off, l_off)``, with
    ``x`` the second query-shaped tensor (the output in the forward, dO in the backward) and
    ``l`` the lse row. Varlen sequences start at ``cu_seqlens[b]`` (batch strides unused)."""
    if VARLEN:
        q0 = tl.load(CU_Q + b)
        k0 = tl.load(CU_K + b)
        len_q = tl.load(CU_Q + b + 1) - q0
        len_k = tl.load(CU_K + b + 1) - k0
        q_off = q0.to(tl.int64) * stride_qs
        x_off = q0.to(tl.int64) * stride_xs
        k_off = k0.to(tl.int64) * stride_ks
        v_off = k0.to(tl.int64) * stride_vs
        l_off = q0.to(tl.int64)
    else:
        len_q = seqlen_q
        len_k = seqlen_k
        q_off = b.to(tl.int64) * stride_qb
        x_off = b.to(tl.int64) * stride_xb
        k_off = b.to(tl.int64) * stride_kb
        v_off = b.to(tl.int64) * stride_vb
        l_off = b.to(tl.int64) * stride_lb
    return len_q, len_k, q_off, k_off, v_off, x_off, l_off


@triton.jit
def scores(qk, qk_scale, softcap, SOFTCAP: tl.constexpr):
    """``(x, mult)`` with the base-2 scores ``x * mult``: ``(qk, qk_scale)``, or with a softcap
    ``(tanh(qk * qk_scale), softcap)``. The multiply stays out of ``x`` so it fuses with the
    max subtraction into one FFMA per score (:func:`softmax_step`); ``mult`` > 0."""
    if SOFTCAP:
        return tanh(qk * qk_scale), softcap
    else:
        return qk, qk_scale


@triton.jit
def softmax_step(x, mult, m_i, l_i, acc, MASKED: tl.constexpr):
    """One online-softmax update for scores ``x * mult`` (masked scores ``x = -inf``):
    ``(p, m_new, l_i, acc)`` with ``acc`` rescaled to the new running max. The row max is
    taken on ``x`` and scaled once per row; ``x * mult - m`` is one FFMA per score."""
    m_new = tl.maximum(m_i, tl.max(x, 1) * mult)
    if MASKED:  # noqa: SIM108 (constexpr branch) a row with no visible key yet keeps m = -inf
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_use = m_new
    # an explicit fma: one FFMA whatever the launch's enable_fp_fusion (Triton 3.10's default
    # turns contraction off)
    p = tl.math.exp2(tl.fma(x, mult, -m_use[:, None]))
    alpha = tl.math.exp2(m_i - m_use)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    return p, m_new, l_i, acc


@triton.jit
def _fwd_inner(
    acc,
    l_i,
    m_i,
    q,
    k_base,
    v_base,
    stride_ks,
    stride_vs,
    start,
    end,
    start2,
    end2,
    offs_m,
    offs_d,
    len_k,
    diag,
    win_left,
    win_right,
    qk_scale,
    softcap,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    MASKED: tl.constexpr,
    SOFTCAP: tl.constexpr,
    TMA: tl.constexpr,
):
    """One run of key blocks. With ``TMA``, ``k_base`` and ``v_base`` are tensor descriptors
    of this sequence's keys and values (rows past ``len_k`` and columns past ``HEAD_DIM``
    arrive as zeros); otherwise pointers."""
    offs_n0 = tl.arange(0, BLOCK_N)
    d_ok = offs_d < HEAD_DIM
    n_first = tl.cdiv(end - start, BLOCK_N)
    n_total = n_first + tl.cdiv(end2 - start2, BLOCK_N)
    for it in range(0, n_total):
        n = tl.where(it < n_first, start + it * BLOCK_N, start2 + (it - n_first) * BLOCK_N)
        offs_n = n + offs_n0
        if TMA:
            kt = tl.trans(k_base.load([n, 0]))
        else:
            k_ptrs = k_base + offs_n[None, :] * stride_ks + offs_d[:, None]
            if MASKED:
                kt = tl.load(k_ptrs, mask=(offs_n[None, :] < len_k) & d_ok[:, None], other=0.0)
            elif BLOCK_D == HEAD_DIM:
                kt = tl.load(k_ptrs)
            else:
                kt = tl.load(k_ptrs, mask=d_ok[:, None], other=0.0)
        qk = dot(q, kt, tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32))
        x, mult = scores(qk, qk_scale, softcap, SOFTCAP)
        if MASKED:
            i = offs_m[:, None] + diag
            j = offs_n[None, :]
            vis = (j - i >= -win_left) & (j - i <= win_right) & (j < len_k)
            x = tl.where(vis, x, float("-inf"))
        p, m_i, l_i, acc = softmax_step(x, mult, m_i, l_i, acc, MASKED)
        if TMA:
            v = v_base.load([n, 0])
        else:
            v_ptrs = v_base + offs_n[:, None] * stride_vs + offs_d[None, :]
            if MASKED:
                v = tl.load(v_ptrs, mask=(offs_n[:, None] < len_k) & d_ok[None, :], other=0.0)
            elif BLOCK_D == HEAD_DIM:
                v = tl.load(v_ptrs)
            else:
                v = tl.load(v_ptrs, mask=d_ok[None, :], other=0.0)
        acc = dot(cast(p, v.dtype), v, acc)
    return acc, l_i, m_i


@triton.jit
def _fwd_inner_ws(
    acc,
    l_i,
    m_i,
    q,
    k_desc,
    v_desc,
    len_k,
    qk_scale,
    softcap,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SOFTCAP: tl.constexpr,
):
    """Every key block, unmasked, in one warp-specialised loop: a producer warpgroup issues
    the TMA loads of K and V while the consumer warpgroups run the dots and the softmax. The
    launcher guarantees full blocks (``len_k`` a multiple of ``BLOCK_N``, no window), so the
    loop needs no mask; a second (masked) loop would stop Triton from specialising it."""
    for n in tl.range(0, len_k, BLOCK_N, warp_specialize=True):
        kt = tl.trans(k_desc.load([n, 0]))
        qk = dot(q, kt, tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32))
        x, mult = scores(qk, qk_scale, softcap, SOFTCAP)
        p, m_i, l_i, acc = softmax_step(x, mult, m_i, l_i, acc, False)
        v = v_desc.load([n, 0])
        acc = dot(cast(p, v.dtype), v, acc)
    return acc, l_i, m_i


@triton.jit
def _attn_fwd_kernel(
    Q,
    K,
    V,
    O,  # noqa: E741
    LSE,
    CU_Q,
    CU_K,
    stride_qb,
    stride_qs,
    stride_qh,
    stride_kb,
    stride_ks,
    stride_kh,
    stride_vb,
    stride_vs,
    stride_vh,
    stride_ob,
    stride_os,
    stride_oh,
    stride_lb,
    stride_lh,
    seqlen_q,
    seqlen_k,
    heads_q,
    group,
    qk_scale,
    softcap,
    win_left,
    win_right,
    seq_bucket,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    VARLEN: tl.constexpr,
    SOFTCAP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    TMA: tl.constexpr = False,
    WS: tl.constexpr = False,
):
    """One ``BLOCK_M`` block of query rows of one head (docstring of the module). ``WS``: the
    warp-specialised form for calls with only full blocks and no mask (:func:`ws_unfit`):
    tensor descriptors, one unmasked loop, no early exit (a runtime branch around the loop
    stops Triton 3.6 from specialising it)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // heads_q
    h = pid_bh % heads_q
    kvh = h // group
    len_q, len_k, q_off, k_off, v_off, o_off, l_off = sequence_offsets(
        CU_Q, CU_K, b, seqlen_q, seqlen_k, stride_qb, stride_qs, stride_kb, stride_ks,
        stride_vb, stride_vs, stride_ob, stride_os, stride_lb, VARLEN,
    )  # fmt: skip
    m_start = pid_m * BLOCK_M
    if not WS:  # noqa: SIM102 (constexpr) WS grids hold full blocks; no branch around its loop
        if m_start >= len_q:
            return
    offs_m = m_start + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    row_ok = offs_m < len_q
    if TMA or WS:  # Hopper tensor memory access; the launcher checked TMA's 16-byte rules
        q_desc = tl.make_tensor_descriptor(
            Q + q_off + h * stride_qh, [len_q, HEAD_DIM], [stride_qs, 1], [BLOCK_M, BLOCK_D]
        )
        q = q_desc.load([m_start, 0])
        k_base = tl.make_tensor_descriptor(
            K + k_off + kvh * stride_kh, [len_k, HEAD_DIM], [stride_ks, 1], [BLOCK_N, BLOCK_D]
        )
        v_base = tl.make_tensor_descriptor(
            V + v_off + kvh * stride_vh, [len_k, HEAD_DIM], [stride_vs, 1], [BLOCK_N, BLOCK_D]
        )
    else:
        q_ptrs = Q + q_off + h * stride_qh + offs_m[:, None] * stride_qs + offs_d[None, :]
        q = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        k_base = K + k_off + kvh * stride_kh
        v_base = V + v_off + kvh * stride_vh
    diag = len_k - len_q
    lo, full_lo, full_hi, hi = block_ranges(
        m_start, BLOCK_M, len_k, diag, win_left, win_right, BLOCK_N
    )
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    if WS:
        acc, l_i, m_i = _fwd_inner_ws(
            acc, l_i, m_i, q, k_base, v_base, len_k, qk_scale, softcap, BLOCK_M, BLOCK_N, SOFTCAP
        )
    else:
        acc, l_i, m_i = _fwd_inner(
            acc, l_i, m_i, q, k_base, v_base, stride_ks, stride_vs, full_lo, full_hi, 0, 0,
            offs_m, offs_d, len_k, diag, win_left, win_right, qk_scale, softcap,
            HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N, False, SOFTCAP, TMA,
        )  # fmt: skip
        acc, l_i, m_i = _fwd_inner(
            acc, l_i, m_i, q, k_base, v_base, stride_ks, stride_vs, lo, full_lo, full_hi, hi,
            offs_m, offs_d, len_k, diag, win_left, win_right, qk_scale, softcap,
            HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N, True, SOFTCAP, TMA,
        )  # fmt: skip
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc / l_safe[:, None]
    lse = tl.where(empty, float("-inf"), (m_i + tl.math.log2(l_safe)) * 0.6931471805599453)
    if TMA or WS:
        o_desc = tl.make_tensor_descriptor(
            O + o_off + h * stride_oh, [len_q, HEAD_DIM], [stride_os, 1], [BLOCK_M, BLOCK_D]
        )
        o_desc.store([m_start, 0], cast(out, O.dtype.element_ty))
    else:
        o_ptrs = O + o_off + h * stride_oh + offs_m[:, None] * stride_os + offs_d[None, :]
        tl.store(o_ptrs, cast(out, O.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
    tl.store(LSE + l_off + h * stride_lh + offs_m, lse, mask=row_ok)


# ---------------------------------------------------------------------------- configs

# GPU configs per head-dim bucket (BLOCK_D): (BLOCK_M, BLOCK_N, num_warps, num_stages, min_arch).
# Registers per thread from `millkernels analyze` (Triton 3.9, bf16, dense, no softcap, strides
# 16-divisible as at a real launch; 255 = at the cap). sm_90: d64 128x64 w8: 137, 128x128 w8:
# 241, 64x64 w4: 134; d128 128x64 w8 s3: 200, 128x32 w8: 169, 64x64 w4: 203, no spills;
# d128 128x128 w8 spills 232 B (scores and accumulator are both 128x128 fp32). sm_80
# (mma.sync): d64 as on sm_90 (184-198); d128 128x64 w8: 208, 64x64 w4: 255, no spills.
# Three key loops (left mask, full, right mask) cost +47 registers over two loops (full, then
# both masked ranges in one loop), hence the two-loop form.
# An optional sixth field caps registers (maxnreg). d64 128x64 w8 s3 at 128 registers: two CTAs
# per sm_90 SM (2 x 256 threads x 128 registers, 2 x 66 KB shared), 121-124 registers, no
# spills on Triton 3.6 and 3.9 (pointer and TMA). d256 128x32 w8 s2 (sm_90): 246 registers, no
# spills, 131 KB: twice the N work per shared-memory read of 64x16, which is bound by them.
_FWD_TABLE: dict[int, list[tuple[int, ...]]] = {
    32: [(128, 64, 8, 3, 80), (64, 64, 4, 3, 80)],
    64: [(128, 64, 8, 3, 80), (64, 64, 4, 3, 80), (128, 128, 8, 3, 80), (128, 64, 8, 3, 90, 128)],
    128: [(128, 64, 8, 2, 80), (128, 64, 8, 3, 90), (128, 32, 8, 3, 80), (64, 64, 4, 3, 80)],
    256: [(64, 16, 4, 2, 80), (64, 32, 4, 2, 80), (128, 16, 8, 2, 90), (128, 32, 8, 2, 90)],
}
#: Under the interpreter: one small config (no autotuning on a CPU); BLOCK_M != BLOCK_N so the
#: block-range arithmetic is exercised with unequal blocks.
INTERPRET_FWD = {"BLOCK_M": 32, "BLOCK_N": 16}


def _bucket_d(head_dim: int) -> int:
    return max(16, triton.next_power_of_2(head_dim))


def _table_key(block_d: int) -> int:
    return min((k for k in _FWD_TABLE if k >= block_d), default=256)


def _configs(
    table: dict[int, list[tuple[int, ...]]], tma: bool = False, ws: bool = False
) -> list[triton.Config]:
    """Autotune configs from a table; ``tma`` configs load through tensor descriptors, which
    need sm_90, so they never go below it; ``ws`` configs are the warp-specialised form."""
    out = []
    tma = tma or ws
    for bd, rows in table.items():
        for bm, bn, w, s, arch, *cap in rows:
            kwargs = {"BLOCK_M": bm, "BLOCK_N": bn, "TMA": tma, "WS": ws}
            cfg = triton.Config(kwargs, num_warps=w, num_stages=s, maxnreg=cap[0] if cap else None)
            # head-dim bucket and lowest arch, read by the pruner
            cfg._mk_meta = (bd, max(arch, 90) if tma else arch)
            out.append(cfg)
    return out


def prune_for(configs, named_args, **kwargs):
    """Keep the configs of this head-dim bucket that the current GPU's arch can run."""
    args = {**named_args, **kwargs}
    bd = _table_key(int(args["BLOCK_D"]))
    major, minor = torch.cuda.get_device_capability() if torch.cuda.is_available() else (8, 0)
    arch = 10 * major + minor
    keep = [c for c in configs if c._mk_meta[0] == bd and c._mk_meta[1] <= arch]
    return keep or [c for c in configs if c._mk_meta[0] == bd][:1]


FWD_CONFIGS = _configs(_FWD_TABLE)
#: Tiles only the TMA kernel affords: without per-thread load addresses d128 128x128 w8 needs
#: 222 registers on sm_90, no spills (the pointer kernel spills 232 B there).
#: d256 128x64 w8 s2: 218 (3.9) / 237 (3.6) registers, no spills, 197 KB shared (the pointer
#: kernel spills there).
_FWD_TMA_EXTRA: dict[int, list[tuple[int, ...]]] = {
    128: [(128, 128, 8, 2, 90)],
    256: [(128, 64, 8, 2, 90)],
}
FWD_TMA_CONFIGS = _configs(_FWD_TABLE, tma=True) + _configs(_FWD_TMA_EXTRA, tma=True)
#: The warp-specialised forward (``WS``), sm_90: num_warps 4 is one consumer warpgroup that
#: Triton's Hopper pass doubles along M and gives a producer warpgroup: 12 warps compiled,
#: setmaxnreg 40 (producer) / 232 (consumers), on Triton 3.6 and 3.9. d64 and d128 128x128 s2:
#: no spills, 99 / 197 KB shared memory; 3 stages (257 KB) and d256 128x64 (263 KB) overflow
#: the 227 KB of an sm_90 SM.
_FWD_WS_TABLE: dict[int, list[tuple[int, ...]]] = {
    64: [(128, 128, 4, 2, 90)],
    128: [(128, 128, 4, 2, 90)],
}
#: Warps of a compiled WS kernel: the producer warpgroup and two consumer warpgroups.
WS_WARPS = 12
#: Sequence lengths a WS call must be a multiple of (the largest WS block, so every config's
#: blocks are full); under the interpreter, its one config's.
WS_BLOCK = 128
_FWD_KEY = ["seq_bucket", "HEAD_DIM", "VARLEN", "SOFTCAP", "group"]
_attn_fwd_tuned = triton.autotune(
    configs=FWD_CONFIGS, key=_FWD_KEY, prune_configs_by={"early_config_prune": prune_for}
)(_attn_fwd_kernel)
_attn_fwd_tma_tuned = triton.autotune(
    configs=FWD_TMA_CONFIGS, key=_FWD_KEY, prune_configs_by={"early_config_prune": prune_for}
)(_attn_fwd_kernel)
FWD_WS_CONFIGS = _configs(_FWD_WS_TABLE, ws=True)
_attn_fwd_ws_tuned = triton.autotune(
    configs=FWD_WS_CONFIGS, key=_FWD_KEY, prune_configs_by={"early_config_prune": prune_for}
)(_attn_fwd_kernel)


def check_tma(tma: bool, *tensors: torch.Tensor) -> None:
    """ValueError when ``tma`` asks for tensor descriptors these tensors cannot have (TMA's
    16-byte rules). The choice itself is the table's (:func:`.capabilities.use_tma`)."""
    if tma and not aligned16(*tensors):
        raise ValueError(
            "tma: tensor descriptors need 16-byte aligned data and outer strides that are "
            "multiples of 16 bytes"
        )


def ensure_descriptor_allocator() -> None:
    """Device-side tensor descriptors need scratch memory from ``triton.set_allocator``; give
    Triton a torch-backed allocator unless the application has set one."""
    try:  # Triton keeps the allocator in a private ContextVar (3.6 to 3.9 at least)
        from triton.runtime import _allocation

        if not isinstance(_allocation._allocator.get(), _allocation.NullAllocator):
            return
    except (ImportError, AttributeError):  # unknown layout: set ours, as every TMA user must
        pass
    device = "cpu" if runtime.triton_interpret() else "cuda"

    def alloc(size: int, alignment: int, stream: int | None) -> torch.Tensor:
        return torch.empty(size, dtype=torch.int8, device=device)

    triton.set_allocator(alloc)


def ws_block() -> int:
    """What a WS call's sequence lengths must be multiples of (here: GPU or interpreter)."""
    if runtime.triton_interpret():
        return max(INTERPRET_FWD["BLOCK_M"], INTERPRET_FWD["BLOCK_N"])
    return WS_BLOCK


def ws_unfit(
    varlen: bool,
    max_q: int,
    max_k: int,
    head_dim: int,
    window: tuple[int, int],
    *tensors: torch.Tensor,
) -> str | None:
    """Why a forward call cannot take the warp-specialised kernel (None: it can). That kernel
    runs one unmasked loop over full blocks, so the call needs: dense (not varlen) tensors,
    both lengths positive multiples of :func:`ws_block`, a head_dim with WS configs, no window
    and no causal mask (``window`` as the launcher takes it, causal folded in, -1 unbounded),
    and TMA's 16-byte alignment for ``tensors``."""
    block = ws_block()
    if varlen:
        return "varlen sequences end inside blocks"
    if window != (-1, -1):
        return "causal or window masks need the masked loop"
    for name, n in (("seqlen_q", max_q), ("seqlen_k", max_k)):
        if n <= 0 or n % block:
            return f"{name} {n} is not a positive multiple of {block}"
    if head_dim not in _FWD_WS_TABLE:
        return f"no WS configs for head_dim {head_dim} (have {sorted(_FWD_WS_TABLE)})"
    if not aligned16(*tensors):
        return "the tensors are not 16-byte aligned (data or outer strides)"
    return None


#: Per compile key (head_dim, softcap, group, dtype, device): why the WS kernel is not used
#: (None: it compiled to WS_WARPS warps for every config).
_WS_COMPILED: dict[tuple, str | None] = {}


def ws_compile_reason(args: tuple, consts: dict[str, Any], group: int) -> str | None:
    """Compile every WS config for this call's constants once (cached) and check that Triton
    warp-specialised it (:data:`WS_WARPS` warps); the reason when not, or when it fails to
    compile. The interpreter runs the WS code path without specialising: None there."""
    if runtime.triton_interpret():
        return None
    q = args[0]  # the launch arguments: q first, ``group`` among them (a specialised int)
    key = (consts["HEAD_DIM"], consts["SOFTCAP"], group, q.dtype, str(q.device))
    if key not in _WS_COMPILED:
        why = None
        for cfg in prune_for(FWD_WS_CONFIGS, {"BLOCK_D": consts["BLOCK_D"]}):
            try:
                k = _attn_fwd_kernel.warmup(
                    *args, **consts, **cfg.kwargs, num_warps=cfg.num_warps,
                    num_stages=cfg.num_stages, grid=(1,),
                )  # fmt: skip
            except Exception as exc:  # a Triton whose pass rejects the loop: use the other
                why = f"the WS kernel failed to compile: {type(exc).__name__}: {exc}"[:300]
                break
            warps = int(getattr(k.metadata, "num_warps", 0))
            if warps != WS_WARPS:
                why = f"Triton did not warp-specialise the loop ({warps} warps, not {WS_WARPS})"
                break
        _WS_COMPILED[key] = why
    return _WS_COMPILED[key]


def seq_bucket(n: int) -> int:
    """Autotune key bucket of a sequence length: the next power of two, at least 64."""
    return max(64, triton.next_power_of_2(max(int(n), 1)))


def window_args(left: int, right: int) -> tuple[int, int]:
    """(left, right) with -1 -> BIG."""
    return (BIG if left < 0 else left, BIG if right < 0 else right)


def scale_args(softmax_scale: float, softcap: float) -> tuple[float, float]:
    """(qk_scale, softcap) as the kernels take them (base-2 scores)."""
    if softcap > 0:
        return softmax_scale / softcap, softcap * LOG2E
    return softmax_scale * LOG2E, 0.0


class _Launch(NamedTuple):
    """A forward's outputs, allocated, and the kernel arguments that fill them."""

    out: torch.Tensor
    lse: torch.Tensor
    args: tuple
    consts: dict[str, Any]
    batch: int
    heads_q: int
    group: int
    max_q: int
    max_k: int
    head_dim: int
    varlen: bool


def _launch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_q: torch.Tensor | None,
    cu_k: torch.Tensor | None,
    max_q: int,
    max_k: int,
    softmax_scale: float,
    window: tuple[int, int],
    softcap: float,
) -> _Launch:
    """Allocate the outputs and build the kernel arguments of a forward (see :func:`forward`)."""
    varlen = cu_q is not None
    if cu_q is not None:
        batch = cu_q.numel() - 1
        heads_q, head_dim = q.shape[1], q.shape[2]
        heads_kv = k.shape[1]
        lse = torch.full((heads_q, q.shape[0]), float("-inf"), device=q.device)
        # seqlen dim, head dim strides; batch stride unused (0)
        qs, ks, vs = (0, *q.stride()[:2]), (0, *k.stride()[:2]), (0, *v.stride()[:2])
        out = torch.zeros_like(q)  # tokens past cu_q[-1] stay zero
        os_ = (0, *out.stride()[:2])
        ls = (0, lse.stride(0))
    else:
        batch, max_q, heads_q, head_dim = q.shape
        max_k, heads_kv = k.shape[1], k.shape[2]
        lse = torch.empty(batch, heads_q, max_q, dtype=torch.float32, device=q.device)
        out = torch.empty_like(q)
        qs, ks, vs, os_ = q.stride()[:3], k.stride()[:3], v.stride()[:3], out.stride()[:3]
        ls = (lse.stride(0), lse.stride(1))
    qk_scale, cap = scale_args(softmax_scale, softcap)
    wl, wr = window_args(*window)
    dummy = cu_q if varlen else lse
    args = (
        q, k, v, out, lse, dummy, cu_k if varlen else lse,
        *qs, *ks, *vs, *os_, *ls,
        int(max_q), int(max_k), heads_q, heads_q // heads_kv,
        qk_scale, cap, wl, wr, seq_bucket(max_q),
    )  # fmt: skip
    consts = dict(
        HEAD_DIM=head_dim, BLOCK_D=_bucket_d(head_dim), VARLEN=varlen, SOFTCAP=softcap > 0
    )
    return _Launch(
        out, lse, args, consts, batch, heads_q, heads_q // heads_kv, int(max_q), int(max_k),
        head_dim, varlen,
    )  # fmt: skip


def _ws_fallback(launch: _Launch, window: tuple[int, int], *tensors: torch.Tensor) -> str | None:
    """Why this launch cannot run warp-specialised (None: it can): :func:`ws_unfit`, then
    :func:`ws_compile_reason`."""
    why = ws_unfit(
        launch.varlen, launch.max_q, launch.max_k, launch.head_dim, window, *tensors, launch.out
    )
    if why is None:
        ensure_descriptor_allocator()
        why = ws_compile_reason(launch.args, launch.consts, launch.group)
    return why


def ws_fallback(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_q: torch.Tensor | None,
    cu_k: torch.Tensor | None,
    max_q: int,
    max_k: int,
    softmax_scale: float,
    window: tuple[int, int],
    softcap: float,
) -> str | None:
    """Why :func:`forward` with these arguments and ``ws=True`` runs the other kernel (None:
    it runs the warp-specialised one). For benchmark rows and tests: a pure function of the
    call (the compile check is cached), not a record of the last call."""
    launch = _launch(q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale, window, softcap)
    return _ws_fallback(launch, window, q, k, v)


def forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_q: torch.Tensor | None,
    cu_k: torch.Tensor | None,
    max_q: int,
    max_k: int,
    softmax_scale: float,
    window: tuple[int, int],
    softcap: float,
    tma: bool = False,
    ws: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward. Dense: q (B, Sq, Hq, D); varlen: q (T, Hq, D) with cu_q/cu_k.
    ``window`` has causal folded in (-1 unbounded). ``tma``: load through tensor descriptors
    (the table's choice, :func:`.capabilities.use_tma`). ``ws``: the warp-specialised kernel
    (the table's choice, :func:`.capabilities.use_ws`) where the call fits it
    (:func:`ws_unfit`) and it compiles as such (:func:`ws_compile_reason`); otherwise the
    other kernel (:func:`ws_fallback` says why). Returns (out, lse)."""
    launch = _launch(q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale, window, softcap)
    out, lse, args, consts = launch.out, launch.lse, launch.args, launch.consts
    rows = launch.batch * launch.heads_q
    if out.numel() == 0:
        return out, lse.fill_(float("-inf"))
    check_tma(tma, q, k, v, out)
    if ws:
        ws = _ws_fallback(launch, window, q, k, v) is None
    if tma or ws:
        ensure_descriptor_allocator()
    if runtime.triton_interpret():
        cfg = INTERPRET_FWD
        grid = (triton.cdiv(launch.max_q, cfg["BLOCK_M"]), rows)
        _attn_fwd_kernel[grid](
            *args, **consts, **cfg, TMA=tma or ws, WS=ws, num_warps=4, num_stages=1
        )
    else:

        def tuned_grid(meta: dict[str, Any]) -> tuple[int, int]:
            return (triton.cdiv(launch.max_q, meta["BLOCK_M"]), rows)

        kernel = _attn_fwd_ws_tuned if ws else _attn_fwd_tma_tuned if tma else _attn_fwd_tuned
        kernel[tuned_grid](*args, **consts)
    return out, lse


def chosen_config(tma: bool, ws: bool = False) -> dict | None:
    """The config the autotuner picked last for the pointer (``tma`` False), the
    tensor-descriptor or (``ws``) the warp-specialised forward (for benchmark rows)."""
    from millkernels.ops.autotune import autotune_config

    if runtime.triton_interpret():
        return {**INTERPRET_FWD, "TMA": tma or ws, "WS": ws, "interpreter": True}
    if ws:
        return autotune_config(_attn_fwd_ws_tuned)
    return autotune_config(_attn_fwd_tma_tuned if tma else _attn_fwd_tuned)


# ---------------------------------------------------------------------------- analysis


def fwd_signature(dtype: str = "bf16") -> dict[str, str]:
    sig = {n: f"*{dtype}" for n in ("Q", "K", "V", "O")}
    sig.update({"LSE": "*fp32", "CU_Q": "*i32", "CU_K": "*i32"})
    for n in [
        "stride_qb",
        "stride_qs",
        "stride_qh",
        "stride_kb",
        "stride_ks",
        "stride_kh",
        "stride_vb",
        "stride_vs",
        "stride_vh",
        "stride_ob",
        "stride_os",
        "stride_oh",
        "stride_lb",
        "stride_lh",
        "seqlen_q",
        "seqlen_k",
        "heads_q",
        "group",
        "win_left",
        "win_right",
        "seq_bucket",
    ]:
        sig[n] = "i32"
    sig.update({"qk_scale": "fp32", "softcap": "fp32"})
    return sig


def aligned_for_analysis(signature: dict[str, str]) -> list[str]:
    """The arguments a typical launch lets Triton assume 16-divisible.

    Triton specialises every integer argument that is a multiple of 16 (and every 16-byte
    aligned pointer). For head_dim a multiple of 16 the q/k/v/o/dO strides are multiples of
    16 whatever the batch, length or head count, so that is how the kernels compile in
    practice; lengths and lse strides (multiples of seqlen) are left unknown. Analysing
    without these hints would report unvectorised loads and spills no real launch has.
    """
    lse = ("stride_lb", "stride_lh")
    return [
        n
        for n, t in signature.items()
        if t.startswith("*") or (n.startswith("stride_") and n not in lse)
    ]


# Hot-loop counts per iteration and thread, sm_90, Triton 3.6 and 3.9 alike (`millkernels
# analyze`). Fusing the scale into the exponent's FFMA: d128 128x64 w8 (TMA and pointer) FMUL
# 96 -> 66. Softcap as one tanh.approx.f32: d128 varlen TMA 128x64 MUFU 98 -> 66, FMUL 256 -> 98;
# 128x128 MUFU 194 -> 130, FMUL 448 -> 130, registers 255 -> 227 (3.6), 238 -> 229 (3.9).
_FUSED = "the softmax scale rides in the exponent's FFMA (one multiply per row, not per score)"
_ONE_MUFU = "softcap's tanh is one MUFU (tanh.approx.f32) next to the exp2 (was exp + divide)"


def _tma_expect(v: TritonVariant) -> TritonVariant:
    """The scale-fusion and softcap evidence on the d128 TMA variants."""
    c = v.constexprs
    if c.get("HEAD_DIM") != 128 or c["BLOCK_M"] != 128:
        return v
    threads = 32 * v.num_warps
    if c["SOFTCAP"]:  # tanh and exp2 per score, exp2 per row (two rows per thread)
        mufu = 2 * c["BLOCK_M"] * c["BLOCK_N"] // threads + 2
        return replace(v, expect=(Expect("loop.mufu", "<=", mufu, _ONE_MUFU),))
    fmul = c["BLOCK_M"] * c["BLOCK_D"] // threads + 2  # the accumulator's rescale, row scales
    return replace(v, expect=(Expect("loop.op.FMUL", "<=", fmul, _FUSED),))


def _ws_expect(head_dim: int, softcap: bool) -> tuple[Expect, ...]:
    """What the warp-specialised variants must show: Triton specialised the loop (12 warps),
    no spills, no CTA-wide barrier in the consumer loop (the warpgroups sync on named
    barriers only), and the fused scale / one-MUFU softcap counts (d64: 64x128 scores and a
    64x64 accumulator per consumer warpgroup, 34 FMUL; d128: 66)."""
    out = [
        Expect("num_warps", "==", WS_WARPS, "Triton warp-specialised the loop: 1 + 2 groups"),
        Expect("spill_bytes", "==", 0, "the consumers' 232 registers hold their tiles"),
        Expect("loop.barriers", "==", 0, "no CTA-wide barrier in the consumer loop"),
    ]
    if softcap:  # tanh's argument takes a multiply per score: 64 FMUL more
        out.append(Expect("loop.mufu", "<=", 130, _ONE_MUFU))
    else:
        out.append(Expect("loop.op.FMUL", "<=", 34 if head_dim == 64 else 66, _FUSED))
        out.append(Expect("loop.mufu", "<=", 66, "one exp2 per score, one per row"))
    return tuple(out)


def _variants() -> list[TritonVariant]:
    out: list[TritonVariant] = []
    for head_dim in (64, 128):
        rows = {head_dim: _FWD_TABLE[head_dim]}
        out += variants_from_configs(
            _configs(rows),
            fwd_signature(),
            {"HEAD_DIM": head_dim, "BLOCK_D": head_dim, "VARLEN": False, "SOFTCAP": False},
            min_arch=lambda c: c._mk_meta[1],
            divisible_by_16=aligned_for_analysis(fwd_signature()),
        )
    # the tensor-descriptor (TMA) forward, sm_90 only: dense 64, 128 and 256, varlen 128 +
    # softcap; the first config and those only TMA affords (d64: the 2-CTA config)
    tma_cases = ((64, False, False), (128, False, False), (128, True, True), (256, False, False))
    for head_dim, varlen, cap in tma_cases:
        tma_rows = _FWD_TABLE[head_dim][:1] + _FWD_TMA_EXTRA.get(head_dim, [])
        tma_rows += [r for r in _FWD_TABLE[head_dim] if len(r) > 5]
        out += map(_tma_expect, variants_from_configs(
            _configs({head_dim: tma_rows}, True),
            fwd_signature(),
            {"HEAD_DIM": head_dim, "BLOCK_D": head_dim, "VARLEN": varlen, "SOFTCAP": cap},
            min_arch=lambda c: c._mk_meta[1],
            divisible_by_16=aligned_for_analysis(fwd_signature()),
        ))  # fmt: skip
    # the warp-specialised forward, sm_90 only: dense 64 and 128, and 128 with softcap
    for head_dim, cap in ((64, False), (128, False), (128, True)):
        out += [
            replace(v, expect=_ws_expect(head_dim, cap))
            for v in variants_from_configs(
                _configs({head_dim: _FWD_WS_TABLE[head_dim]}, ws=True),
                fwd_signature(),
                {"HEAD_DIM": head_dim, "BLOCK_D": head_dim, "VARLEN": False, "SOFTCAP": cap},
                min_arch=lambda c: c._mk_meta[1],
                divisible_by_16=aligned_for_analysis(fwd_signature()),
            )
        ]
    # varlen + softcap, padded head_dim (80 -> 128): the first config; head_dim 256: the first
    # and the widest (128x32)
    for head_dim, varlen, cap in ((128, True, True), (80, False, False), (256, False, False)):
        bd = _bucket_d(head_dim)
        table_rows = _FWD_TABLE[_table_key(bd)]
        out += variants_from_configs(
            _configs({bd: [table_rows[0], table_rows[-1]] if bd == 256 else table_rows[:1]}),
            fwd_signature(),
            {"HEAD_DIM": head_dim, "BLOCK_D": bd, "VARLEN": varlen, "SOFTCAP": cap},
            min_arch=lambda c: c._mk_meta[1],
            divisible_by_16=aligned_for_analysis(fwd_signature()),
        )
    capped = Expect("registers", "<=", 128, "two CTAs per SM: 2 x 256 threads x 128 registers")
    return [replace(v, expect=(*v.expect, capped)) if v.maxnreg == 128 else v for v in out]


# Known spills, head_dim -> {capability: bytes per thread (stores + loads)}, measured with
# `millkernels analyze` on Triton 3.9: at head_dim 256 on sm_80 the 64x16 tile holds the q tile
# and the fp32 accumulator (64x256 each) in registers next to the mma.sync operands (24 B; sm_90
# does not spill). Allowed so the debt stays visible in the report ("waived") while any growth,
# or a spill anywhere else, fails `analyze --check`.
FWD_SPILL_ALLOWANCE = {256: {80: 24}}

ANALYSIS = (
    TritonAnalysis(
        "attention.fwd",
        _attn_fwd_kernel,
        with_spill_allowance(_variants(), FWD_SPILL_ALLOWANCE, "fwd head_dim 256: q + acc tiles"),
        hot=True,
    ),
)
