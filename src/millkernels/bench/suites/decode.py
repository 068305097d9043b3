"""Suite ``attention_decode``: paged-KV decode GB/s against the measured copy bandwidth.

Shapes: batch 1..64, context 512..8192 (every sequence at the full context), block sizes 16
and 64, 32 query heads over 8 key/value heads (GQA), head_dim 128, bf16; plus 2K live tokens
in a 32K-token block table (the split count must follow the live length, not the capacity).
Bytes counted are the fewest a decode must move: every cached K and V row once, q read and out
written once.

On a few shapes (:data:`LEGACY_SHAPES`) the triton and cuda backends are also timed with
``MILLKERNELS_DECODE_LEGACY=all`` (rows ``triton-legacy`` / ``cuda-legacy``): the previous
split rule, pipeline depth and the CUDA kernel for GQA groups of 4+, against the current ones;
``cuda-gqa`` rows time the CUDA kernel at this group of 4 with the current split rule.

Baselines measured in the same run: PyTorch SDPA on the same KV already gathered into a dense
(batch, heads_kv, context, head_dim) tensor (``enable_gqa``; the gather is not timed, so this is
what a dense cache would cost), and FlashInfer's paged decode when installed (flash-attn's
paged KV needs pages of 256 tokens, so it is listed as skipped for these block sizes).

Every backend is checked against the float32 reference (flash-attention's 2x rule) before it
is timed. Timing replays a CUDA graph of the call (no validation, no dispatch inside a replay,
as in a serving loop); cases whose KV fits in L2 say so in ``notes``.

Options: ``attention_decode.shapes`` (list of (batch, context, block_size) tuples, or
(batch, context, block_size, capacity) with a block table of ``capacity`` tokens),
``attention_decode.backends`` (subset of the family's backends).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from functools import partial
from typing import Any

from millkernels import runtime
from millkernels.bench.context import BenchContext
from millkernels.bench.registry import suite
from millkernels.bench.rows import Row

HEADS_Q, HEADS_KV, HEAD_DIM = 32, 8, 128
FULL_SHAPES: list[tuple[int, ...]] = [
    (batch, context, block)
    for batch in (1, 8, 64)
    for context in (512, 2048, 4096, 8192)
    for block in (16, 64)
]
#: 2K live tokens per sequence in a 32K-token table (the capacity sizes the grid, not the work):
#: at batch 1 the previous rule ran 64 splits, 32 of them empty; batch 8 does not fit in L2.
CAPACITY_SHAPES: list[tuple[int, ...]] = [(1, 2048, 16, 32768), (8, 2048, 16, 32768)]
QUICK_SHAPES: list[tuple[int, ...]] = [(1, 512, 16), (8, 2048, 16), (64, 4096, 16), (64, 4096, 64)]
CPU_SHAPES: list[tuple[int, ...]] = [(2, 48, 16)]
#: Shapes also timed with the previous rules (MILLKERNELS_DECODE_LEGACY=all); few, for time.
LEGACY_SHAPES = {(1, 512, 16), (64, 4096, 16), *CAPACITY_SHAPES, *CPU_SHAPES}
LEGACY_ENV = "MILLKERNELS_DECODE_LEGACY"
#: KV smaller than this stays in a 50 MB L2 across graph replays.
L2_BYTES = 50 << 20


def shapes(gpu: bool, quick: bool) -> list[tuple[int, ...]]:
    """(batch, context, block_size) cases (also the pytest-benchmark suite's); the suite adds
    :data:`CAPACITY_SHAPES` on a GPU."""
    return CPU_SHAPES if not gpu else QUICK_SHAPES if quick else FULL_SHAPES


def heads(gpu: bool) -> tuple[int, int]:
    """(query heads, key/value heads): Llama-style GQA on a GPU, a small GQA on a CPU."""
    return (HEADS_Q, HEADS_KV) if gpu else (4, 2)


def _inputs(
    batch: int, context: int, block: int, device: str, heads_q: int, heads_kv: int, capacity: int
):
    """Pages for ``context`` tokens per sequence in random order; the table has room for
    ``capacity`` tokens, its entries past the live pages -1 (never read)."""
    import torch

    blocks_per_seq = -(-context // block)
    num_blocks = batch * blocks_per_seq
    dtype = torch.bfloat16
    q = torch.randn(batch, heads_q, HEAD_DIM, device=device, dtype=dtype)
    k = torch.randn(num_blocks, block, heads_kv, HEAD_DIM, device=device, dtype=dtype)
    v = torch.randn(num_blocks, block, heads_kv, HEAD_DIM, device=device, dtype=dtype)
    perm = torch.randperm(num_blocks, device=device).to(torch.int32)
    table = torch.full((batch, max(-(-capacity // block), blocks_per_seq)), -1, dtype=torch.int32)
    table = table.to(device)
    table[:, :blocks_per_seq] = perm.reshape(batch, blocks_per_seq)
    lens = torch.full((batch,), context, dtype=torch.int32, device=device)
    return q, k, v, table, lens


def _legacy_settings(backend: str) -> tuple[str, ...]:
    """MILLKERNELS_DECODE_LEGACY values a backend is timed under on :data:`LEGACY_SHAPES`:
    the current rules, all previous ones, and for cuda the current split rule with the
    kernel's GQA 4+ path (``cuda_gqa``: the table no longer offers it, so ``cuda`` alone
    would time nothing at the suite's group of 4)."""
    if backend == "reference":
        return ("",)
    return ("", "cuda_gqa", "all") if backend == "cuda" else ("", "all")


@contextlib.contextmanager
def _legacy(value: str) -> Iterator[None]:
    """``MILLKERNELS_DECODE_LEGACY`` set to ``value`` ("" unset) inside the block."""
    old = os.environ.pop(LEGACY_ENV, None)
    if value:
        os.environ[LEGACY_ENV] = value
    try:
        yield
    finally:
        os.environ.pop(LEGACY_ENV, None)
        if old is not None:
            os.environ[LEGACY_ENV] = old


def decode_bytes(batch: int, context: int, heads_q: int, heads_kv: int, itemsize: int = 2) -> int:
    """K and V rows once, q read and out written once, plus the block table and lengths."""
    kv = 2 * batch * context * heads_kv * HEAD_DIM * itemsize
    qo = 2 * batch * heads_q * HEAD_DIM * itemsize
    return kv + qo + batch * 4


def _flashinfer_runner(q, k, v, table, lens, block: int) -> Any:
    """A callable running FlashInfer's paged decode on the same cache, or a reason string."""
    try:
        import flashinfer
    except ImportError:
        return "flashinfer is not installed"
    import torch

    try:
        batch, blocks = table.shape
        indptr = torch.arange(0, batch + 1, device=q.device, dtype=torch.int32) * blocks
        indices = table.reshape(-1)
        last = ((lens - 1) % block + 1).to(torch.int32)
        workspace = torch.empty(128 << 20, dtype=torch.uint8, device=q.device)
        wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(workspace, "NHD")
        wrapper.plan(
            indptr, indices, last, q.shape[1], k.shape[2], q.shape[2], block,
            q_data_type=q.dtype, kv_data_type=k.dtype,
        )  # fmt: skip
        wrapper.run(q, (k, v))
        return lambda: wrapper.run(q, (k, v))
    except Exception as exc:  # an API difference between FlashInfer versions
        return f"flashinfer failed: {type(exc).__name__}: {exc}"


@suite("attention_decode", order=40, description="paged-KV decode GB/s vs copy, SDPA, FlashInfer")
def attention_decode_suite(ctx: BenchContext) -> Iterator[Row]:
    import torch
    import torch.nn.functional as F

    from millkernels.ops import tables
    from millkernels.ops.attention.api import attention_decode
    from millkernels.ops.attention.capabilities import DECODE_OP, call_facts
    from millkernels.ops.attention.reference import attention_decode_reference
    from millkernels.testing import flash_tolerance_ok

    table_ = tables()["attention"]
    cases = ctx.option(
        "attention_decode.shapes",
        shapes(ctx.gpu, ctx.quick) + (CAPACITY_SHAPES if ctx.gpu else []),
    )
    wanted = ctx.option("attention_decode.backends", table_.names())
    heads_q, heads_kv = heads(ctx.gpu)
    graph = ctx.gpu
    ctx.skip("flash-attn paged decode", "flash-attn's paged KV needs block_size % 256 == 0")
    for case in cases:
        batch, context, block = case[:3]
        capacity = case[3] if len(case) > 3 else context
        args = _inputs(batch, context, block, ctx.device, heads_q, heads_kv, capacity)
        q, k, v, table, lens = args
        shape = {
            "batch": batch, "context": context, "block_size": block,
            "heads_q": heads_q, "heads_kv": heads_kv, "head_dim": HEAD_DIM,
        }  # fmt: skip
        if capacity > context:
            shape["capacity"] = capacity
        work = decode_bytes(batch, context, heads_q, heads_kv)
        kv_bytes = 2 * batch * context * heads_kv * HEAD_DIM * 2
        notes = None
        if ctx.gpu and kv_bytes < L2_BYTES:
            notes = "KV fits in L2 and graph replays do not flush it: above-HBM rates possible"
        ref32, _ = attention_decode_reference(*args, out_dtype=torch.float32)
        ref_lp, _ = attention_decode_reference(*args, upcast=False)

        # baseline: SDPA over the same KV gathered into dense tensors (gather not timed)
        live = table[:, : -(-context // block)].long()
        dense_k = k[live].reshape(batch, -1, heads_kv, HEAD_DIM)[:, :context]
        dense_v = v[live].reshape(batch, -1, heads_kv, HEAD_DIM)[:, :context]
        dk, dv = dense_k.transpose(1, 2).contiguous(), dense_v.transpose(1, 2).contiguous()
        q4 = q[:, :, None, :]

        def sdpa(q4=q4, dk=dk, dv=dv):
            return F.scaled_dot_product_attention(q4, dk, dv, enable_gqa=True)

        try:
            base_out = sdpa()[:, :, 0]
            ok, err, _ = flash_tolerance_ok(base_out, ref_lp, ref32)
            ctx.check(ok, f"sdpa {shape}: error {err:.3g}")
            base_t = ctx.measure(sdpa, cuda_graph=graph)
            yield ctx.row(
                op="attention_decode", shape=shape, dtype="bf16", backend="sdpa",
                timing=base_t, bytes=work, notes=notes,
            )  # fmt: skip
        except Exception as exc:
            ctx.skip(f"sdpa {shape}", f"{type(exc).__name__}: {exc}")
            base_t = None
        del dk, dv, dense_k, dense_v

        runner = _flashinfer_runner(q, k, v, table, lens, block) if ctx.gpu else "needs a GPU"
        if isinstance(runner, str):
            ctx.skip(f"flashinfer {shape}", runner)
        else:
            ok, err, _ = flash_tolerance_ok(runner(), ref_lp, ref32)
            if ctx.check(ok, f"flashinfer {shape}: error {err:.3g}"):
                t = ctx.measure(runner, cuda_graph=graph)
                yield ctx.row(
                    op="attention_decode", shape=shape, dtype="bf16", backend="flashinfer",
                    timing=t, bytes=work, baseline="sdpa" if base_t else None,
                    baseline_timing=base_t, notes=notes,
                )  # fmt: skip

        legacy_too = tuple(case) in LEGACY_SHAPES
        for backend in table_.names():
            if backend not in wanted or (backend == "reference" and ctx.gpu):
                continue  # the reference syncs (cannot be graph-captured): it is the check
            for legacy in _legacy_settings(backend) if legacy_too else ("",):
                label = {"": backend, "all": f"{backend}-legacy"}.get(legacy, f"{backend}-gqa")
                with _legacy(legacy):
                    facts = call_facts(DECODE_OP, q, k, v, group=heads_q // heads_kv)
                    reason = table_.reason(backend, facts)
                    if reason:
                        ctx.skip(f"{label} {shape}", reason)
                        continue
                    try:
                        out = attention_decode(*args, backend=backend)
                        ok, err, _ = flash_tolerance_ok(out, ref_lp, ref32)
                    except Exception as exc:
                        ctx.check(False, f"{label} {shape} raised {type(exc).__name__}: {exc}")
                        continue
                    if not ctx.check(ok, f"{label} {shape}: error {err:.3g}"):
                        continue
                    run = partial(attention_decode, *args, backend=backend)
                    t = ctx.measure(run, cuda_graph=graph)
                    config = _config(backend, batch, heads_q, heads_kv, table.shape[1] * block, q)
                yield ctx.row(
                    op="attention_decode", shape=shape, dtype="bf16", backend=label, timing=t,
                    bytes=work, baseline="sdpa" if base_t else None, baseline_timing=base_t,
                    config=config, notes=notes,
                )  # fmt: skip
        if ctx.gpu:
            torch.cuda.empty_cache()


def _config(backend: str, batch: int, heads_q: int, heads_kv: int, capacity: int, q) -> dict:
    """The launch choices of a row (under the legacy switch the row was timed with)."""
    from millkernels.ops.attention import decode_plan
    from millkernels.ops.attention.capabilities import decode_legacy

    common = {
        "split_tokens": decode_plan.split_tokens(q.device),
        "legacy": ",".join(sorted(decode_legacy())) or None,
    }
    if backend == "triton":
        from millkernels.ops.attention import triton_decode

        return {
            "splits": triton_decode.num_splits(batch, heads_kv, capacity, q.device),
            "block_n": triton_decode.block_n(q.shape[-1]),
            "num_warps": triton_decode.NUM_WARPS,
            "kv_stages": triton_decode.kv_stages(),
            **common,
        }
    if backend == "cuda":
        from millkernels.ops.attention import cuda_decode

        sms = runtime.sm_count(q.device.index or 0)
        return {
            "splits": cuda_decode.num_splits(batch, heads_q, heads_kv, capacity, sms),
            "heads_per_cta": cuda_decode.heads_per_cta(heads_q // heads_kv),
            **common,
        }
    return {}
