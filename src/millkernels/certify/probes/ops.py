"""Probes of millkernels' own ops: attention (forward, paged decode), quantised matmul (w4a16 at
a decode-sized M, fp8_rowwise at a large M) and the custom IPC all-reduce.

Each part checks its result once against the family's PyTorch reference (on a small slice)
before it is timed, and reports a ``*_wrong`` count (elements outside the stated bound; NaN
counts as wrong). A wrong result is not timed: the part records its ``*_wrong`` count (which
the profiles hold to 0, reason ``MK_WRONG_RESULT``) and says plainly why its speed is missing.

A part whose kernel backend cannot serve this machine (Triton missing, no native extension,
fp8 below compute capability 8.9, no peer access between GPUs) records ``not_available`` with
the reason. Timing the PyTorch reference instead would not measure millkernels, so ``auto``
resolving to ``reference`` counts as unavailable too (a ``backend`` param may name it, for
tests). Any other exception fails the probe (an error, never a pass).

Timing: :func:`millkernels.bench.timing.measure` (``triton.testing.do_bench`` medians with L2
flushed before every call; the paged decode replays a CUDA graph, as its benchmark suite does,
its 1 GiB of KV being far larger than L2). The all-reduce follows :mod:`.nccl`: one process per
GPU, timed with ``millkernels.bench.suites.comm.time_call`` inside a CUDA graph (the same number
of calls on every rank, so no rank waits for a call that never comes).

Every size can be overridden through ``ctx.params`` (the tests run each part on the CPU with
tiny shapes: Triton under ``TRITON_INTERPRET=1``, the all-reduce over gloo).
"""

from __future__ import annotations

import functools
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from millkernels.certify.probes.registry import ProbeContext

if TYPE_CHECKING:
    from millkernels.dispatch import CallFacts, CapabilityTable

#: The reason code the profiles give a ``*_wrong`` count above 0.

ATTENTION_METRICS = (
    "attention_fwd_tflops",
    "attention_fwd_wrong",
    "attention_decode_gbps",
    "attention_decode_wrong",
)
QUANT_METRICS = (
    "quant_w4a16_gbps",
    "quant_w4a16_wrong",
    "quant_fp8_rowwise_tflops",
    "quant_fp8_rowwise_wrong",
)
CUSTOM_ALLREDUCE_METRICS = (
    "custom_allreduce_busbw_gbps",
    "custom_allreduce_small_busbw_gbps",
    "custom_allreduce_wrong",
)


class Unavailable(Exception):
    """This part cannot run here; the message says why (recorded, never a pass)."""


def _part(ctx: ProbeContext, metrics: tuple[str, ...], fn: Callable[[], None]) -> None:
    """Run one part; when it is unavailable, say so for each of its metrics."""
    try:
        fn()
    except Unavailable as exc:
        for m in metrics:
            ctx.not_available(m, str(exc))


def _device(ctx: ProbeContext) -> Any:
    import torch

    return torch.device("cuda", 0) if ctx.device == "cuda" else torch.device("cpu")


def _kernel_backend(table: CapabilityTable, op: str, facts: CallFacts, requested: str) -> str:
    """The backend to time: ``requested`` if it can serve the call; under ``auto`` a kernel
    backend (the family's ``auto`` falls back to the PyTorch reference, which is not what this
    probe measures). Raises :class:`Unavailable` with the reasons."""
    from millkernels.dispatch import ENV_VAR, BackendUnavailable, env_override

    try:
        name = table.select(requested, facts, op)
    except BackendUnavailable as exc:
        raise Unavailable(str(exc)) from None
    if name == "reference" and requested == "auto":
        if env_override(table.family) == "reference":
            raise Unavailable(
                f"{ENV_VAR} forces the PyTorch reference for {table.family}: unset it to "
                "measure the kernels"
            )
        why = "; ".join(f"{b}: {table.reason(b, facts)}" for b in table.names() if b != "reference")
        raise Unavailable(f"no kernel backend serves {table.family}.{op} here ({why})")
    return name


def _checked(ctx: ProbeContext, part: str, speed_metric: str, wrong: int, why: str) -> bool:
    """Record ``<part>_wrong``; when anything is wrong, say why ``speed_metric`` is not timed.
    True when the part may go on to be timed."""
    ctx.measure(f"{part}_wrong", wrong, "elements")
    if wrong:
        ctx.not_available(speed_metric, f"not timed: {why}")
    return not wrong


def _timing(ctx: ProbeContext, fn: Callable[[], Any], dev: Any, cuda_graph: bool = False) -> Any:
    from millkernels.bench.timing import measure

    rep = float(ctx.param("rep_ms", 50.0, 200.0))
    warm = float(ctx.param("warmup_ms", 10.0, 25.0))
    return measure(
        fn,
        device=dev.type,
        rep_ms=rep,
        warmup_ms=warm,
        cuda_graph=cuda_graph and dev.type == "cuda",
    )


def count_wrong(err: Any, bound: Any) -> int:
    """Elements with ``err > bound``; NaN counts as wrong."""
    return int((~(err <= bound)).sum().item())


# ------------------------------------------------------------------------------ attention


def attention(ctx: ProbeContext) -> None:
    """``attention_fwd_tflops`` (bf16, head_dim 128; 4*B*H*Sq*Sk*D FLOPs, half when causal),
    ``attention_decode_gbps`` (paged KV, bytes of every cached K/V row plus q and out) and their
    ``*_wrong`` counts (flash-attention's 2x rule on a slice)."""
    dev = _device(ctx)
    _part(ctx, ATTENTION_METRICS[:2], lambda: _attention_fwd(ctx, dev))
    _part(ctx, ATTENTION_METRICS[2:], lambda: _attention_decode(ctx, dev))


def flash_wrong(out: Any, out_lowp: Any, ref32: Any) -> tuple[int, float, float]:
    """(wrong elements, max error, allowed error): an element is wrong when it is further from
    ``ref32`` than :func:`millkernels.testing.flash_allowed_error` allows."""
    from millkernels.testing import flash_allowed_error

    err = (out.double() - ref32.double()).abs()
    allowed = flash_allowed_error(out_lowp, ref32, out.dtype)
    return count_wrong(err, allowed), float(err.max().item()), allowed


def _attention_fwd(ctx: ProbeContext, dev: Any) -> None:
    import torch

    from millkernels.bench.counts import attention_flops, tflops
    from millkernels.ops.attention import api, capabilities, reference

    # batch x seqlen x heads x head_dim; standard: 4 x 4096 x 16 x 128 (0.55 TFLOP a call)
    b, s, h, d = (int(x) for x in ctx.param("fwd_shape", [2, 2048, 16, 128], [4, 4096, 16, 128]))
    causal = bool(ctx.params.get("causal", False))
    dtype = getattr(torch, ctx.params.get("dtype", "bfloat16"))
    q, k, v = (torch.randn(b, s, h, d, device=dev, dtype=dtype) for _ in range(3))
    facts = capabilities.call_facts("attention", q)
    name = _kernel_backend(
        capabilities.TABLE, "attention", facts, ctx.params.get("backend", "auto")
    )

    def run() -> Any:
        return api.attention(q, k, v, causal=causal, backend=name)

    out = run()  # compiles and autotunes
    hc = min(h, int(ctx.params.get("check_heads", 2)))  # batch 0, the first heads
    sl = (slice(0, 1), slice(None), slice(0, hc))
    qs, ks, vs = q[sl], k[sl], v[sl]
    ref32, _ = reference.attention_ref(qs.float(), ks.float(), vs.float(), causal=causal)
    ref_lp, _ = reference.attention_ref(qs, ks, vs, causal=causal, compute_dtype=None)
    wrong, err, allowed = flash_wrong(out[sl], ref_lp, ref32)
    info = {
        "shape": [b, s, h, d],
        "causal": causal,
        "dtype": str(dtype).removeprefix("torch."),
        "backend": name,
        "checked": f"batch 0, heads 0..{hc - 1}, all rows",
        "max_error": err,
        "allowed_error": allowed,
    }
    ctx.info["attention_fwd"] = info
    why = f"{wrong} output elements are wrong (max error {err:.3g} > allowed {allowed:.3g})"
    if not _checked(ctx, "attention_fwd", "attention_fwd_tflops", wrong, why):
        return
    t = _timing(ctx, run, dev)
    flops = attention_flops(b, h, s, s, d, causal=causal)
    ctx.measure("attention_fwd_tflops", tflops(flops, t.median_us), "TFLOP/s")
    info.update(median_us=t.median_us, p20_us=t.p20_us, p80_us=t.p80_us, samples=t.n)
    if name == "triton":
        from millkernels.ops.attention import triton_fwd

        tma = capabilities.use_tma(capabilities.call_facts("attention", q, k, v))
        info["config"] = triton_fwd.chosen_config(tma)


def _attention_decode(ctx: ProbeContext, dev: Any) -> None:
    import torch

    from millkernels.bench.counts import gbps
    from millkernels.ops.attention import capabilities
    from millkernels.ops.attention.api import attention_decode
    from millkernels.ops.attention.capabilities import DECODE_OP, call_facts
    from millkernels.ops.attention.reference import attention_decode_reference

    # batch, context, block size, heads_q, heads_kv, head_dim: the decode target shape
    # (batch 64, context 4096, block 16; GQA 32/8, head_dim 128): 1 GiB of bf16 KV.
    default = [64, 4096, 16, 32, 8, 128]
    batch, context, block, heads_q, heads_kv, d = (
        int(x) for x in ctx.param("decode_shape", default, default)
    )
    dtype = torch.bfloat16
    per_seq = -(-context // block)
    num_blocks = batch * per_seq
    q = torch.randn(batch, heads_q, d, device=dev, dtype=dtype)
    kc = torch.randn(num_blocks, block, heads_kv, d, device=dev, dtype=dtype)
    vc = torch.randn(num_blocks, block, heads_kv, d, device=dev, dtype=dtype)
    table = torch.randperm(num_blocks, device=dev).to(torch.int32).reshape(batch, per_seq)
    lens = torch.full((batch,), context, dtype=torch.int32, device=dev)
    facts = call_facts(DECODE_OP, q, kc, vc, group=heads_q // heads_kv)
    name = _kernel_backend(
        capabilities.TABLE, "attention_decode", facts, ctx.params.get("backend", "auto")
    )

    def run() -> Any:
        return attention_decode(q, kc, vc, table, lens, backend=name)

    out = run()
    nb = min(batch, int(ctx.params.get("check_batch", 2)))
    args = (q[:nb], kc, vc, table[:nb], lens[:nb])
    ref32, _ = attention_decode_reference(*args, out_dtype=torch.float32)
    ref_lp, _ = attention_decode_reference(*args, upcast=False)
    wrong, err, allowed = flash_wrong(out[:nb], ref_lp, ref32)
    info = {
        "shape": {
            "batch": batch,
            "context": context,
            "block_size": block,
            "heads_q": heads_q,
            "heads_kv": heads_kv,
            "head_dim": d,
        },
        "backend": name,
        "checked": f"sequences 0..{nb - 1}",
        "max_error": err,
        "allowed_error": allowed,
    }
    ctx.info["attention_decode"] = info
    why = f"{wrong} output elements are wrong (max error {err:.3g} > allowed {allowed:.3g})"
    if not _checked(ctx, "attention_decode", "attention_decode_gbps", wrong, why):
        return
    # Graph replays (no validation or dispatch per call, as in a serving loop); the KV is far
    # larger than L2, so replays stream it from HBM.
    t = _timing(ctx, run, dev, cuda_graph=True)
    nbytes = (2 * batch * context * heads_kv * d + 2 * batch * heads_q * d) * 2 + batch * 4
    ctx.measure("attention_decode_gbps", gbps(nbytes, t.median_us), "GB/s")
    info.update(bytes=nbytes, median_us=t.median_us, p20_us=t.p20_us, samples=t.n)


# ------------------------------------------------------------------------------ quant


def quant(ctx: ProbeContext) -> None:
    """``quant_w4a16_gbps`` at M = 16 and ``quant_fp8_rowwise_tflops`` at M = 8192, with their
    ``*_wrong`` counts (against dequantise-then-fp32-matmul, the quant tests' bound).

    w4a16 at M = 16 is reported in GB/s of bytes streamed (packed weights, scales, zeros, x and
    out), not TFLOP/s: it does 64 FLOP per weight byte against H100's ~295 FLOP/B ridge point, so
    it is bound by memory and its TFLOP/s would say little. fp8_rowwise at 8192^3 is bound by
    compute: TFLOP/s (2*M*N*K over the whole call, activation quantisation included)."""
    dev = _device(ctx)
    _part(ctx, QUANT_METRICS[:2], lambda: _quant_w4a16(ctx, dev))
    _part(ctx, QUANT_METRICS[2:], lambda: _quant_fp8(ctx, dev))


def quant_wrong(out: Any, x: Any, qw: Any) -> tuple[int, float]:
    """(wrong elements, max error) of ``out`` = x @ W^T against dequantise-then-fp32-matmul,
    per element ``|out - ref| <= ulp(dtype) * |ref| + 2**-12 * (|x| @ |W|^T) + 1e-6`` (the bound
    of tests/ops/quant: one output rounding plus float32 / fp8 tensor-core accumulation)."""
    import torch

    from millkernels.ops.quant import reference

    ulp = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}[x.dtype]
    w = qw.dequantize(torch.float32).to(x.device)
    if qw.is_fp8:
        mode = reference.ACT_MODE[qw.scheme]
        xf = reference.act_dequant(*reference.act_quant(x, mode), mode)
    else:
        xf = x.float()
    ref = xf @ w.t()
    bound = ulp * ref.abs() + 2.0**-12 * (xf.abs() @ w.abs().t()) + 1e-6
    err = (out.float() - ref).abs()
    return count_wrong(err, bound), float(err.nan_to_num(float("inf")).max().item())


def _quant_setup(ctx: ProbeContext, dev: Any, scheme: str, mnk: list[int]) -> tuple:
    import torch

    from millkernels.ops.quant import api, capabilities
    from millkernels.ops.quant.formats import quantize

    m, n, k = (int(v) for v in mnk)
    x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
    group = int(ctx.params.get("group_size", 128))
    facts = api.call_facts(x, scheme, k if scheme.startswith("fp8") else group, k)
    name = _kernel_backend(capabilities.TABLE, "matmul", facts, ctx.params.get("backend", "auto"))
    w = torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02
    qw = quantize(w, scheme, group_size=group) if scheme == "w4a16" else quantize(w, scheme)
    del w
    return m, n, k, x, qw, name


def _quant_w4a16(ctx: ProbeContext, dev: Any) -> None:
    from millkernels.bench.counts import gbps, tensor_bytes
    from millkernels.ops.quant.api import matmul

    # M = 16 (a decode batch), N = K = 8192 (the public w4a16 anchor's shape): 33.6 MB of int4
    mnk = ctx.param("w4a16_mnk", [16, 8192, 8192], [16, 8192, 8192])
    m, n, k, x, qw, name = _quant_setup(ctx, dev, "w4a16", mnk)

    def run() -> Any:
        return matmul(x, qw, backend=name)

    out = run()
    wrong, err = quant_wrong(out, x, qw)
    info = {"shape": [m, n, k], "group_size": qw.group_size, "backend": name, "max_error": err}
    ctx.info["quant_w4a16"] = info
    why = f"{wrong} of {out.numel()} output elements are outside the bound (max error {err:.3g})"
    if not _checked(ctx, "quant_w4a16", "quant_w4a16_gbps", wrong, why):
        return
    t = _timing(ctx, run, dev)
    nbytes = qw.nbytes() + tensor_bytes(x, out)
    ctx.measure("quant_w4a16_gbps", gbps(nbytes, t.median_us), "GB/s")
    info.update(bytes=nbytes, weight_bytes=qw.nbytes(), median_us=t.median_us, samples=t.n)
    if name == "triton":
        from millkernels.ops.quant import triton_weight_only

        info["config"] = triton_weight_only.tuned_config()


def _quant_fp8(ctx: ProbeContext, dev: Any) -> None:
    from millkernels.bench.counts import matmul_flops, tflops
    from millkernels.ops.quant.api import matmul

    # 8192^3: the public per-token x per-channel fp8 anchor's shape (1.1 TFLOP a call)
    mnk = ctx.param("fp8_mnk", [8192, 8192, 8192], [8192, 8192, 8192])
    m, n, k, x, qw, name = _quant_setup(ctx, dev, "fp8_rowwise", mnk)

    def run() -> Any:
        return matmul(x, qw, backend=name)

    out = run()
    rows = min(m, int(ctx.params.get("check_rows", 64)))  # rows are independent (per-token)
    wrong, err = quant_wrong(out[:rows], x[:rows], qw)
    info = {"shape": [m, n, k], "backend": name, "checked_rows": rows, "max_error": err}
    ctx.info["quant_fp8_rowwise"] = info
    why = f"{wrong} of {rows * n} checked elements are outside the bound (max error {err:.3g})"
    if not _checked(ctx, "quant_fp8_rowwise", "quant_fp8_rowwise_tflops", wrong, why):
        return
    t = _timing(ctx, run, dev)
    ctx.measure("quant_fp8_rowwise_tflops", tflops(matmul_flops(m, n, k), t.median_us), "TFLOP/s")
    info.update(median_us=t.median_us, samples=t.n)
    if name == "triton":
        from millkernels.ops.quant import triton_fp8

        info["config"] = triton_fp8.tuned_config()


# ------------------------------------------------------------------------------ all-reduce


def _ar_worker(
    rank: int,
    world: int,
    device: str,
    sizes: list[list[Any]],
    iters: int,
    warmup: int,
    tmp: str,
) -> None:
    import torch
    import torch.distributed as dist

    from millkernels.bench.suites import comm as cb
    from millkernels.ops.comm import api

    if device == "cuda":
        torch.cuda.set_device(rank)
        dev, backend = torch.device("cuda", rank), "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    dist.init_process_group(backend, init_method=f"file://{tmp}/store", rank=rank, world_size=world)
    custom = None
    try:
        if device == "cuda":
            from millkernels.ops.comm import CustomAllReduce

            custom = CustomAllReduce(max_bytes=max(int(nb) for _, nb in sizes))
        dtype = torch.bfloat16
        settings = cb.Settings(iters=iters, warmup=warmup, graph=device == "cuda")
        out: dict[str, Any] = {}
        for label, nbytes in sizes:
            count = int(nbytes) // 2
            x = cb.known_input(rank, count, dtype, dev)
            want = sum(cb.known_input(r, count, torch.float64, dev) for r in range(world))
            y = torch.empty_like(x)
            for algo in ("one_shot", "two_shot"):
                api.all_reduce(x, out=y, algo=algo)  # exact: small integers in bf16
                wrong = int((y.double() != want).sum().item())
                call = functools.partial(api.all_reduce, x, out=y, algo=algo)
                us = cb.time_call(call, settings, None, dev)
                out[f"{label}/{algo}"] = {"bytes": count * 2, "us": us, "wrong": wrong}
        everyone: list[Any] = [None] * world
        dist.all_gather_object(everyone, out)
        if rank == 0:
            Path(tmp, "result.json").write_text(json.dumps(everyone))
    finally:
        if custom is not None:
            custom.close()
        dist.destroy_process_group()


def custom_unavailable(n: int) -> str | None:
    """Why the IPC all-reduce cannot run over ``n`` GPUs here (None: it can)."""
    import torch

    from millkernels._native import cuda_unavailable_reason
    from millkernels.ops.comm.capabilities import MAX_RANKS

    if n < 2:
        return "needs two or more GPUs"
    if n > MAX_RANKS:
        return f"the IPC kernels take at most {MAX_RANKS} GPUs; this node has {n}"
    why = cuda_unavailable_reason()
    if why:
        return why
    for i in range(n):
        for j in range(n):
            if i != j and not torch.cuda.can_device_access_peer(i, j):
                return f"GPU {i} cannot map GPU {j}'s memory (no peer access): CUDA IPC needs it"
    return None


def custom_allreduce(ctx: ProbeContext) -> None:
    """``custom_allreduce_small_busbw_gbps`` (512 KiB, latency-bound) and
    ``custom_allreduce_busbw_gbps`` (32 MiB): bf16, the better of one-shot and two-shot at each
    size, busbw = S/t x 2(n-1)/n with t the slowest rank's mean over a CUDA graph of calls.
    ``custom_allreduce_wrong``: elements of either algorithm, any size, any rank, that differ
    from the exactly known sum."""
    import torch
    import torch.multiprocessing as mp

    if ctx.device == "cuda":
        n = torch.cuda.device_count()
        why = custom_unavailable(n)
    else:  # the same algorithms over gloo (tests of the probe's plumbing)
        n, why = int(ctx.params.get("world", 2)), None
    if why:
        for m in CUSTOM_ALLREDUCE_METRICS:
            ctx.not_available(m, why, gpu=None)
        return
    sizes = [
        ["small", int(ctx.param("small_bytes", 512 << 10, 512 << 10))],
        ["large", int(ctx.param("large_bytes", 32 << 20, 32 << 20))],
    ]
    iters = int(ctx.param("iters", 20, 50))
    warmup = int(ctx.param("warmup", 5, 10))
    with tempfile.TemporaryDirectory(prefix="mk-custom-ar-") as tmp:
        mp.spawn(_ar_worker, args=(n, ctx.device, sizes, iters, warmup, tmp), nprocs=n, join=True)
        per_rank = json.loads(Path(tmp, "result.json").read_text())
    wrong = sum(r[key]["wrong"] for r in per_rank for key in r)
    ctx.measure("custom_allreduce_wrong", wrong, "elements", gpu=None)
    factor = 2 * (n - 1) / n
    detail: dict[str, Any] = {}
    for label, metric in (
        ("small", "custom_allreduce_small_busbw_gbps"),
        ("large", "custom_allreduce_busbw_gbps"),
    ):
        best = 0.0
        for algo in ("one_shot", "two_shot"):
            key = f"{label}/{algo}"
            us = max(r[key]["us"] for r in per_rank)
            nbytes = per_rank[0][key]["bytes"]
            busbw = nbytes / (us * 1e-6) / 1e9 * factor
            detail[key] = {"bytes": nbytes, "us": us, "busbw_gbps": busbw}
            best = max(best, busbw)
        if wrong:
            ctx.not_available(metric, f"not reported: {wrong} elements were wrong", gpu=None)
        else:
            ctx.measure(metric, best, "GB/s", gpu=None)
    ctx.info.update(gpus=n, iters=iters, results=detail, dtype="bfloat16")
