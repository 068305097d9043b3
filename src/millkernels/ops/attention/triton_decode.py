"""Triton paged-KV decode attention (flash-decoding): split-KV partials, then an LSE combine.

``_decode_split_kernel`` runs one program per (sequence, key/value head, split). It loads the
query rows of every query head that shares the key/value head (GQA: each KV page is read once
for the whole group), walks its share of the sequence ``BLOCK_N`` tokens at a time, finds each
token's page through the block table, and keeps an online softmax in the log2 domain. With one
split it normalises and writes the output directly; with several it writes a float32 partial
output and its log-sum-exp, and ``_decode_combine_kernel`` merges the splits of each query head.

The grid's split count and the tokens per split come from :mod:`.decode_plan` (shared with
the CUDA kernel). Each program reads ``cache_seqlens`` itself and computes how many splits its
sequence uses (``_live_splits``: about ``split_tokens`` tokens each); programs past them exit
at once, and a sequence with one live split is written directly (the combine skips its rows).
The K/V loop is software-pipelined ``KV_STAGES`` deep: the loads of later tiles are issued
asynchronously (cp.async, LDGSTS in the SASS) while the current tile is computed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from millkernels.ops.analysis_spec import Expect, TritonAnalysis, TritonVariant
from millkernels.ops.attention import decode_plan
from millkernels.ops.attention.capabilities import decode_legacy
from millkernels.ops.triton_common import cast, dot

LOG2E = 1.4426950408889634
LOG2E_C = tl.constexpr(LOG2E)
NUM_WARPS = 4
#: Pipeline depth of the K/V loop (tl.range num_stages). Triton's pipeliner puts the page-table
#: load (an indirection level) a stage ahead of the K/V loads it addresses, so 3 or 4 stages give
#: K and V one shared-memory buffer each and a full wait (sm_90 SASS: DEPBAR.LE SB0, 0x0 in the
#: loop); 5 gives two buffers each, the next tile's copies in flight while this one is computed
#: (DEPBAR.LE SB0, 0x3; d128 bf16: 160 registers, 74 KB shared, 3 CTAs per SM, no spills on
#: Triton 3.6 and 3.9). The previous kernel got the launch default (3) implicitly: kept for
#: comparison as MILLKERNELS_DECODE_LEGACY=stages.
KV_STAGES = 5
LEGACY_KV_STAGES = 3


@triton.jit
def _live_splits(seqlen, split_tokens, num_splits):
    """Splits a sequence of ``seqlen`` tokens uses: ceil(seqlen / split_tokens) within
    [1, num_splits], or all of them when split_tokens is 0 (decode_plan.live_splits)."""
    want = tl.cdiv(seqlen, tl.maximum(split_tokens, 1))
    live = tl.maximum(tl.minimum(want, num_splits), 1)
    return tl.where(split_tokens > 0, live, num_splits)


@triton.jit
def _decode_split_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    bt_ptr,
    lens_ptr,
    out_ptr,
    lse_ptr,
    po_ptr,
    plse_ptr,
    scale,
    softcap,
    stride_qb,
    stride_qh,
    stride_kb,
    stride_ks,
    stride_kh,
    stride_vb,
    stride_vs,
    stride_vh,
    stride_btb,
    stride_ob,
    stride_oh,
    heads_kv,
    block_size,
    num_splits,
    split_tokens,
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    D_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SOFTCAP: tl.constexpr,
    SINGLE_SPLIT: tl.constexpr,
    KV_STAGES: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    split = tl.program_id(1)
    b = pid_bh // heads_kv
    h = pid_bh % heads_kv
    b64 = b.to(tl.int64)
    seqlen = tl.load(lens_ptr + b)
    live = _live_splits(seqlen, split_tokens, num_splits)
    if split >= live:
        return

    g = tl.arange(0, GROUP_PAD)
    d = tl.arange(0, D_PAD)
    g_ok = g < GROUP
    d_ok = d < HEAD_DIM
    heads = h * GROUP + g  # the query heads of this key/value head
    q_off = b64 * stride_qb + heads.to(tl.int64)[:, None] * stride_qh + d[None, :]
    q = tl.load(q_ptr + q_off, mask=g_ok[:, None] & d_ok[None, :], other=0.0)

    chunk = tl.cdiv(tl.cdiv(seqlen, live), BLOCK_N) * BLOCK_N
    lo = split * chunk
    hi = tl.minimum(lo + chunk, seqlen)

    m_i = tl.full((GROUP_PAD,), float("-inf"), tl.float32)
    l_i = tl.zeros((GROUP_PAD,), tl.float32)
    acc = tl.zeros((GROUP_PAD, D_PAD), tl.float32)
    n = tl.arange(0, BLOCK_N)
    bt_row = bt_ptr + b64 * stride_btb
    for start in tl.range(lo, hi, BLOCK_N, num_stages=KV_STAGES):
        t = start + n
        t_ok = t < hi
        page = tl.load(bt_row + t // block_size, mask=t_ok, other=0).to(tl.int64)
        slot = (t % block_size).to(tl.int64)
        kv_mask = t_ok[:, None] & d_ok[None, :]
        k_off = page[:, None] * stride_kb + slot[:, None] * stride_ks + h * stride_kh + d[None, :]
        k = tl.load(k_ptr + k_off, mask=kv_mask, other=0.0)
        v_off = page[:, None] * stride_vb + slot[:, None] * stride_vs + h * stride_vh + d[None, :]
        v = tl.load(v_ptr + v_off, mask=kv_mask, other=0.0)

        s = dot(q, tl.trans(k), tl.zeros((GROUP_PAD, BLOCK_N), tl.float32)) * scale
        if SOFTCAP:
            # softcap * tanh(s / softcap), tanh(y) = 1 - 2 / (exp(2y) + 1): exact at +-inf
            s = softcap * (1.0 - 2.0 / (tl.exp(2.0 * s / softcap) + 1.0))
        s = tl.where(t_ok[None, :], s * LOG2E_C, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        # p stays float32 (tf32 on the tensor cores, 4x finer than bf16): a decode tile is
        # memory-bound, and it costs no registers (compile report: 160 -> 160 at d128 bf16)
        acc = dot(p, v.to(tl.float32), acc * alpha[:, None])
        m_i = m_new

    has = l_i > 0.0
    out = acc / tl.where(has, l_i, 1.0)[:, None]
    lse = tl.where(
        has, (m_i + tl.log2(tl.where(has, l_i, 1.0))) * 0.6931471805599453, float("-inf")
    )
    row = b64 * heads_kv * GROUP + heads.to(tl.int64)  # (batch, heads_q) row index
    o_mask = g_ok[:, None] & d_ok[None, :]
    if SINGLE_SPLIT or live == 1:
        o_off = b64 * stride_ob + heads.to(tl.int64)[:, None] * stride_oh + d[None, :]
        tl.store(out_ptr + o_off, cast(out, out_ptr.dtype.element_ty), mask=o_mask)
        tl.store(lse_ptr + row, lse, mask=g_ok)
    else:
        prow = row * num_splits + split
        tl.store(po_ptr + prow[:, None] * HEAD_DIM + d[None, :], out, mask=o_mask)
        tl.store(plse_ptr + prow, lse, mask=g_ok)


@triton.jit
def _decode_combine_kernel(
    po_ptr,
    plse_ptr,
    out_ptr,
    lse_ptr,
    lens_ptr,
    heads_q,
    stride_ob,
    stride_oh,
    num_splits,
    split_tokens,
    HEAD_DIM: tl.constexpr,
    D_PAD: tl.constexpr,
    SPLITS_PAD: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # b * heads_q + head
    b = row // heads_q
    hq = row % heads_q
    live = _live_splits(tl.load(lens_ptr + b), split_tokens, num_splits)
    if live == 1:  # the split kernel wrote this row
        return
    s = tl.arange(0, SPLITS_PAD)
    d = tl.arange(0, D_PAD)
    s_ok = s < live
    d_ok = d < HEAD_DIM
    lse = tl.load(plse_ptr + row * num_splits + s, mask=s_ok, other=float("-inf"))
    m = tl.max(lse, 0)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp(lse - m_safe)  # 0 for empty splits
    total = tl.sum(w, 0)
    po = tl.load(
        po_ptr + (row * num_splits + s)[:, None] * HEAD_DIM + d[None, :],
        mask=s_ok[:, None] & d_ok[None, :],
        other=0.0,
    )
    out = tl.sum(po * w[:, None], 0) / tl.where(total > 0.0, total, 1.0)
    tl.store(
        out_ptr + b * stride_ob + hq * stride_oh + d,
        cast(out, out_ptr.dtype.element_ty),
        mask=d_ok,
    )
    tl.store(
        lse_ptr + row,
        tl.where(total > 0.0, m_safe + tl.log(tl.where(total > 0.0, total, 1.0)), float("-inf")),
    )


def block_n(head_dim: int) -> int:
    """Tokens per loop step: 64 up to head_dim 128, 32 above (keeps K and V tiles in registers)."""
    return 64 if head_dim <= 128 else 32


def num_splits(batch: int, heads_kv: int, capacity: int, device: torch.device) -> int:
    """Grid splits per sequence (:func:`.decode_plan.num_splits`); a program handles every
    query head of one key/value head."""
    sms = decode_plan.sm_count(device)
    return decode_plan.num_splits(batch, heads_kv, heads_kv, capacity, sms, 1)


def kv_stages() -> int:
    """The K/V loop's pipeline depth: :data:`KV_STAGES`, or :data:`LEGACY_KV_STAGES` with
    the legacy ``stages`` rule."""
    return LEGACY_KV_STAGES if "stages" in decode_legacy() else KV_STAGES


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
    """Launch the decode kernels on validated inputs; returns ``(out, lse)``.

    ``splits`` overrides the grid's split count (tests use it to cover the combine)."""
    batch, heads_q, head_dim = q.shape
    _, block_size, heads_kv, _ = k_cache.shape
    group = heads_q // heads_kv
    capacity = block_table.shape[1] * block_size
    if splits is None:
        splits = num_splits(batch, heads_kv, capacity, q.device)
    tokens = decode_plan.split_tokens(q.device)
    out, lse, po, plse = decode_plan.buffers(q, splits)
    if batch == 0:
        return out, lse
    d_pad = max(16, triton.next_power_of_2(head_dim))
    _decode_split_kernel[(batch * heads_kv, splits)](
        q, k_cache, v_cache, block_table, cache_seqlens, out, lse, po, plse,
        float(softmax_scale), float(softcap),
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        block_table.stride(0), out.stride(0), out.stride(1),
        heads_kv, block_size, splits, tokens,
        GROUP=group,
        GROUP_PAD=max(16, triton.next_power_of_2(group)),
        HEAD_DIM=head_dim,
        D_PAD=d_pad,
        BLOCK_N=block_n(head_dim),
        SOFTCAP=softcap > 0,
        SINGLE_SPLIT=splits == 1,
        KV_STAGES=kv_stages(),
        num_warps=NUM_WARPS,
    )  # fmt: skip
    if splits > 1:
        _decode_combine_kernel[(batch * heads_q,)](
            po, plse, out, lse, cache_seqlens, heads_q, out.stride(0), out.stride(1), splits,
            tokens,
            HEAD_DIM=head_dim, D_PAD=d_pad, SPLITS_PAD=max(2, triton.next_power_of_2(splits)),
            num_warps=NUM_WARPS,
        )  # fmt: skip
    return out, lse


# ---------------------------------------------------------------------------- analysis

_POINTERS = ("q_ptr", "k_ptr", "v_ptr", "bt_ptr", "lens_ptr", "out_ptr", "lse_ptr", "po_ptr")
_STRIDES = (
    "stride_qb", "stride_qh", "stride_kb", "stride_ks", "stride_kh", "stride_vb",
    "stride_vs", "stride_vh", "stride_btb", "stride_ob", "stride_oh",
)  # fmt: skip
_DIV16 = (*_POINTERS, "plse_ptr", *_STRIDES)


_NO_SPILL = Expect("spill_bytes", "==", 0, "the K/V tiles and the accumulator fit in registers")
_ASYNC_KV = Expect(
    "loop.async_copies",
    ">",
    0,
    "the K/V loop is pipelined: the next tiles load asynchronously (LDGSTS) during compute",
)


def _split_variants() -> list[TritonVariant]:
    out = []
    shapes = [(d, g, False) for d, g in ((64, 4), (128, 4), (128, 8), (256, 4))]
    shapes.append((128, 4, True))  # the legacy pipeline depth (MILLKERNELS_DECODE_LEGACY=stages)
    for dtype in ("bf16", "fp16"):
        for head_dim, group, legacy in shapes:
            sig = {
                "q_ptr": f"*{dtype}", "k_ptr": f"*{dtype}", "v_ptr": f"*{dtype}",
                "bt_ptr": "*i32", "lens_ptr": "*i32", "out_ptr": f"*{dtype}",
                "lse_ptr": "*fp32", "po_ptr": "*fp32", "plse_ptr": "*fp32",
                "scale": "fp32", "softcap": "fp32",
                **dict.fromkeys(_STRIDES, "i32"),
                "heads_kv": "i32", "block_size": "i32", "num_splits": "i32",
                "split_tokens": "i32",
            }  # fmt: skip
            stages = LEGACY_KV_STAGES if legacy else KV_STAGES
            for single in (False, True):
                consts = {
                    "GROUP": group,
                    "GROUP_PAD": max(16, group),
                    "HEAD_DIM": head_dim,
                    "D_PAD": head_dim,
                    "BLOCK_N": block_n(head_dim),
                    "SOFTCAP": False,
                    "SINGLE_SPLIT": single,
                    "KV_STAGES": stages,
                }
                label = f"{dtype} d{head_dim} g{group} {'single' if single else 'split'}"
                out.append(
                    TritonVariant(
                        sig,
                        consts,
                        NUM_WARPS,
                        label=f"{label} stages{stages}",
                        divisible_by_16=_DIV16,
                        expect=(_NO_SPILL, _ASYNC_KV),
                    )
                )
    return out


ANALYSIS = (
    TritonAnalysis("attention.decode_split", _decode_split_kernel, _split_variants(), hot=True),
    TritonAnalysis(
        "attention.decode_combine",
        _decode_combine_kernel,
        [
            TritonVariant(
                {
                    "po_ptr": "*fp32",
                    "plse_ptr": "*fp32",
                    "out_ptr": f"*{dtype}",
                    "lse_ptr": "*fp32",
                    "lens_ptr": "*i32",
                    "heads_q": "i32",
                    "stride_ob": "i32",
                    "stride_oh": "i32",
                    "num_splits": "i32",
                    "split_tokens": "i32",
                },
                {"HEAD_DIM": 128, "D_PAD": 128, "SPLITS_PAD": 16},
                NUM_WARPS,
                label=f"{dtype} d128 s16",
                expect=(_NO_SPILL,),
            )
            for dtype in ("bf16", "fp16")
        ],
        hot=True,
    ),
)
