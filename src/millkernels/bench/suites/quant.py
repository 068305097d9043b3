"""Suite ``quant``: quantised matmul against ``torch.matmul`` in bf16 (cuBLAS) and
``torch._scaled_mm`` (fp8), on Llama-3 8B / 70B projection shapes and 8192x8192.

Per (shape, M): a ``torch`` bf16 row (the baseline), then each scheme on each usable backend
(the whole ``quant.matmul``: for fp8 that includes quantising the activations), each checked
against the reference before it is timed. For fp8_tensor / fp8_rowwise also the GEMM alone
(activations quantised beforehand) against ``torch._scaled_mm`` with the same scales
(``op=fp8_gemm``). Small M (<= 64) rows are weight-streaming bound: their ceiling is ``copy``
(GB/s over the bytes of x, the quantised weight and the output); larger M rows count TFLOP/s
against the bf16 / fp8 matmul ceiling. GPU timings flush L2 (``triton.testing.do_bench``).

fp8_block GEMM alone at a few (shape, M) points (``quant.fp8_variants``): each Triton fp8
GEMM, ``triton`` (current), ``triton_legacy``, ``triton_tma`` (Hopper), and ``triton_nosplit``
where the current kernel splits K (small M), against the ``triton_legacy`` row as baseline.

At M in ``VARIANT_MS`` (1 and 16) the integer schemes also get rows of kernel variants kept
for comparison (``backend`` ``triton_legacy``: one I2F per weight, split-K partials summed in
torch; ``cuda_pipe``: the CUDA kernel with a cp.async weight pipeline, ``cuda_wide``: that
kernel with two strips per block sharing x, w4a16), with the same baseline.

Options: ``quant.shapes`` (list of (model, proj, N, K)), ``quant.ms``, ``quant.schemes``,
``quant.backends`` (default: triton and cuda on a GPU; reference only on a CPU, where
interpreted Triton is too slow to time).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

from millkernels import runtime
from millkernels.bench.context import BenchContext
from millkernels.bench.registry import suite
from millkernels.bench.rows import Row

# (model, projection, N = out_features, K = in_features). Llama-3: hidden 4096 / 8192,
# intermediate 14336 / 28672, 8 KV heads of 128 (qkv fused; gate and up fused).
SHAPES = (
    ("llama3-8b", "qkv", 6144, 4096),
    ("llama3-8b", "o", 4096, 4096),
    ("llama3-8b", "gate_up", 28672, 4096),
    ("llama3-8b", "down", 4096, 14336),
    ("llama3-70b", "qkv", 10240, 8192),
    ("llama3-70b", "o", 8192, 8192),
    ("llama3-70b", "gate_up", 57344, 8192),
    ("llama3-70b", "down", 8192, 28672),
    ("square", "8192", 8192, 8192),
)
QUICK_SHAPES = (SHAPES[0], SHAPES[3], SHAPES[8])
MS = (1, 2, 4, 8, 16, 32, 64, 128, 512, 4096)
QUICK_MS = (1, 16, 128, 4096)
CPU_SHAPES = (("tiny", "proj", 72, 256),)
CPU_MS = (1, 17)
SCHEMES = ("w4a16", "w8a16", "fp8_tensor", "fp8_rowwise", "fp8_block")
SMALL_M = 64  # rows up to here are bandwidth rows (GB/s vs the copy ceiling)
#: (model, proj, M) where the fp8_block GEMM variants are timed (few rows: the campaign's
#: bench step has a fixed budget)
FP8_VARIANTS = (
    ("llama3-8b", "qkv", 1),
    ("llama3-8b", "qkv", 4096),
    ("square", "8192", 16),
    ("square", "8192", 4096),
)
# M of the kernel-variant rows (triton_legacy: the I2F kernel with split-K summed in torch;
# cuda_pipe / cuda_wide: the cp.async-pipelined CUDA kernel, one / two strips per block),
# beside triton / cuda and the torch baseline
VARIANT_MS = (1, 16)


def shapes(gpu: bool, quick: bool) -> tuple[tuple[str, str, int, int], ...]:
    """(model, projection, N, K) cases (also the pytest-benchmark suite's)."""
    if not gpu:
        return CPU_SHAPES
    return QUICK_SHAPES if quick else SHAPES


def batch_sizes(gpu: bool, quick: bool) -> tuple[int, ...]:
    """The M (rows of x) timed per shape."""
    if not gpu:
        return CPU_MS[:1] if quick else CPU_MS
    return QUICK_MS if quick else MS


def _ceiling(ctx: BenchContext, m: int, fp8: bool) -> str:
    """copy (GB/s) for small M; else the bf16 / fp8 matmul ceiling (fp32 on a CPU)."""
    if m <= SMALL_M:
        return "copy"
    if not ctx.gpu:
        return "matmul_fp32"
    return "matmul_fp8" if fp8 else "matmul_bf16"


def _rel_err(out: Any, ref: Any) -> float:
    return float((out.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30))


def _matmul_nt(x: Any, w: Any) -> Any:
    """The bf16 baseline: ``x @ w^T`` for a (N, K) weight, as a linear layer computes it."""
    return x @ w.t()


def _scaled_mm(xq, xs, wq, ws, mode: str):
    """torch._scaled_mm with our scales: A (M, K) row-major, B = W^T column-major."""
    import torch

    if mode == "token":
        sa, sb = xs.reshape(-1, 1), ws.reshape(1, -1)
    else:
        sa, sb = xs.reshape(()), ws.reshape(())
    return torch._scaled_mm(xq, wq.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)


@suite("quant", order=40, description="quantised matmul (w4a16/w8a16/fp8) vs cuBLAS bf16")
def quant_suite(ctx: BenchContext) -> Iterator[Row]:
    import torch

    from millkernels.bench import counts
    from millkernels.bench.ceilings import fp8_reason
    from millkernels.ops import quant
    from millkernels.ops.quant import api, reference, triton_fp8, triton_weight_only

    cases = ctx.option("quant.shapes", shapes(ctx.gpu, ctx.quick))
    ms = ctx.option("quant.ms", batch_sizes(ctx.gpu, ctx.quick))
    schemes = ctx.option("quant.schemes", SCHEMES)
    if ctx.gpu:  # the reference dequantises per call: not a kernel worth timing
        wanted = ctx.option("quant.backends", ("triton", "cuda"))
    else:  # interpreted Triton takes ~0.1-1 s a call and its timing means nothing
        wanted = ctx.option("quant.backends", ("reference",))
        if "triton" not in wanted:
            ctx.skip("triton on a CPU", "interpreter timing is meaningless (quant.backends)")
    dev = ctx.device
    scaled_mm_why = fp8_reason() if ctx.gpu else "no CUDA GPU"

    for model, proj, n, k in cases:
        w = torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02
        qws = {s: quant.quantize(w, s, group_size=128) for s in schemes}
        for m in ms:
            shape = {"model": model, "proj": proj, "m": m, "n": n, "k": k}
            x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
            flops = counts.matmul_flops(m, n, k)
            base_bytes = counts.matmul_bytes(m, n, k, "bf16")
            base_t = ctx.measure(functools.partial(_matmul_nt, x, w))
            yield ctx.row(
                op="quant_matmul", shape=shape, dtype="bf16", backend="torch", timing=base_t,
                flops=flops, bytes=base_bytes,
                ceiling=_ceiling(ctx, m, False),
            )  # fmt: skip
            for scheme in schemes:
                qw = qws[scheme]
                facts = api.call_facts(x, scheme, qw.group_size, k)
                nbytes = m * k * 2 + qw.nbytes() + m * n * 2
                ref_of = functools.cache(functools.partial(reference.matmul, x, qw))
                for backend in quant.TABLE.names():
                    if backend not in wanted:
                        continue
                    why = quant.TABLE.reason(backend, facts)
                    if why:
                        ctx.skip(f"{scheme} {backend} {shape}", why)
                        continue
                    call = functools.partial(quant.matmul, x, qw, backend=backend)
                    if not _passes(ctx, call, ref_of, f"{scheme} {backend} {shape}"):
                        continue
                    t = ctx.measure(call)
                    config = None
                    if backend == "triton" and ctx.gpu:
                        mod = triton_fp8 if qw.is_fp8 else triton_weight_only
                        config = mod.tuned_config()
                    fp8 = qw.is_fp8
                    yield ctx.row(
                        op="quant_matmul", shape=shape, dtype=scheme, backend=backend, timing=t,
                        flops=flops, bytes=nbytes,
                        ceiling=_ceiling(ctx, m, fp8),
                        baseline="torch", baseline_timing=base_t, config=config,
                        extra={"split_k": triton_weight_only.choose_split(m, n, k, x.device)}
                        if not fp8
                        else {
                            "act_quant": reference.ACT_MODE[scheme],
                            "split_k": triton_fp8.choose_split(
                                m, n, k, runtime.device_sms(x.device)
                            ),
                        },
                    )  # fmt: skip
                if not qw.is_fp8 and m in VARIANT_MS:
                    yield from _variant_rows(
                        ctx, x, qw, shape, flops, nbytes, base_t, wanted, ref_of
                    )
                if scheme in ("fp8_tensor", "fp8_rowwise") and "triton" in wanted:
                    yield from _fp8_gemm_rows(ctx, x, qw, shape, flops, nbytes, scaled_mm_why)
                variants = ctx.option("quant.fp8_variants", FP8_VARIANTS)
                if scheme == "fp8_block" and "triton" in wanted and (model, proj, m) in variants:
                    yield from _fp8_variant_rows(ctx, x, qw, shape, flops, nbytes)
        if ctx.gpu:
            torch.cuda.empty_cache()


def _variants(x: Any, qw: Any, wanted: Any) -> dict[str, Any]:
    """Row name -> call, for the kernel variants this call can run (see VARIANT_MS)."""
    from millkernels.ops.quant import TABLE, api, triton_weight_only

    facts = api.call_facts(x, qw.scheme, qw.group_size, qw.in_features)
    n = qw.out_features
    out: dict[str, Any] = {}
    if "triton" in wanted and TABLE.reason("triton", facts) is None and qw.perm is None:
        out["triton_legacy"] = functools.partial(
            triton_weight_only.matmul, x, qw.qweight, qw.scales, qw.zeros, None, bits=qw.bits,
            group_size=qw.group_size, n=n, variant="legacy",
        )  # fmt: skip
    if "cuda" in wanted and TABLE.reason("cuda", facts) is None and qw.perm is None:
        from millkernels.ops.quant import cuda

        out["cuda_pipe"] = functools.partial(
            cuda.matmul, x, qw.qweight, qw.scales, qw.zeros, None, group_size=qw.group_size,
            n=n, path="pipe",
        )  # fmt: skip
        out["cuda_wide"] = functools.partial(
            cuda.matmul, x, qw.qweight, qw.scales, qw.zeros, None, group_size=qw.group_size,
            n=n, path="wide",
        )  # fmt: skip
    return out


def _passes(ctx: BenchContext, call: Any, ref_of: Any, label: str) -> bool:
    """Run ``call`` once against ``ref_of()`` (relative error < 1e-2) before it is timed; an
    exception is a failed check too."""
    try:
        err = _rel_err(call(), ref_of())
        return ctx.check(err < 1e-2, f"{label}: rel err {err:.3g}")
    except Exception as exc:
        return ctx.check(False, f"{label} raised {exc!r}")


def _variant_rows(ctx, x, qw, shape, flops, nbytes, base_t, wanted, ref_of) -> Iterator[Row]:
    """Rows of the kernel variants kept for comparison, each checked before it is timed."""
    for name, call in _variants(x, qw, wanted).items():
        if not _passes(ctx, call, ref_of, f"{qw.scheme} {name} {shape}"):
            continue
        yield ctx.row(
            op="quant_matmul", shape=shape, dtype=qw.scheme, backend=name,
            timing=ctx.measure(call), flops=flops, bytes=nbytes,
            ceiling=_ceiling(ctx, shape["m"], False),
            baseline="torch", baseline_timing=base_t,
        )  # fmt: skip


def _fp8_gemm_rows(ctx, x, qw, shape, flops, nbytes, scaled_mm_why) -> Iterator[Row]:
    """The fp8 GEMM alone (activations quantised beforehand) vs torch._scaled_mm."""
    import torch

    from millkernels.ops.quant import TABLE, api, reference, triton_fp8

    if TABLE.reason("triton", api.call_facts(x, qw.scheme, 0, qw.in_features)):
        return
    mode = reference.ACT_MODE[qw.scheme]
    xq, xs = triton_fp8.act_quant(x, mode)
    code = 0 if mode == "tensor" else 1
    base_t = None
    if scaled_mm_why is None:
        try:
            base = _scaled_mm(xq, xs, qw.qweight, qw.scales, mode)
        except Exception as exc:  # e.g. a torch without rowwise scaling
            ctx.skip(f"torch._scaled_mm {qw.scheme} {shape}", repr(exc))
        else:
            base_t = ctx.measure(lambda: _scaled_mm(xq, xs, qw.qweight, qw.scales, mode))
            yield ctx.row(
                op="fp8_gemm", shape=shape, dtype=qw.scheme, backend="torch_scaled_mm",
                timing=base_t, flops=flops, bytes=nbytes,
                ceiling=_ceiling(ctx, shape["m"], True),
            )  # fmt: skip
    else:
        ctx.skip(f"torch._scaled_mm {qw.scheme} {shape}", scaled_mm_why)
        base = None
    out = triton_fp8.gemm(xq, xs, qw.qweight, qw.scales, None, torch.bfloat16, code)
    if base is not None:
        err = _rel_err(out, base)
        if not ctx.check(err < 1e-2, f"fp8_gemm {qw.scheme} {shape}: vs _scaled_mm {err:.3g}"):
            return
    t = ctx.measure(
        lambda: triton_fp8.gemm(xq, xs, qw.qweight, qw.scales, None, torch.bfloat16, code)
    )
    yield ctx.row(
        op="fp8_gemm", shape=shape, dtype=qw.scheme, backend="triton", timing=t, flops=flops,
        bytes=nbytes,
        ceiling=_ceiling(ctx, shape["m"], True),
        baseline="torch_scaled_mm" if base_t else None, baseline_timing=base_t,
        config=triton_fp8.tuned_config() if ctx.gpu else None,
    )  # fmt: skip


def _fp8_variant_rows(ctx, x, qw, shape, flops, nbytes) -> Iterator[Row]:
    """The fp8_block GEMM alone on each Triton kernel (legacy is the baseline)."""
    import torch

    from millkernels.ops.quant import TABLE, api, triton_fp8

    if TABLE.reason("triton", api.call_facts(x, qw.scheme, 0, qw.in_features)):
        return
    xq, xs = triton_fp8.act_quant(x, "group")
    m, n, k = shape["m"], shape["n"], shape["k"]
    split = triton_fp8.choose_split(m, n, k, runtime.device_sms(x.device))
    cases: list[tuple[str, str, int | None]] = [
        ("triton_legacy", "legacy", None),
        ("triton", "current", None),
    ]
    if ctx.gpu and torch.cuda.get_device_capability(x.device) >= (9, 0) and k % 16 == 0:
        cases.append(("triton_tma", "tma", None))
    else:
        ctx.skip(f"fp8_gemm triton_tma {shape}", "needs sm_90 and K a multiple of 16")
    if split > 1:
        cases.append(("triton_nosplit", "current", 1))
    ref = None
    base_t = None
    for backend, kernels, force in cases:

        def run(kernels=kernels, force=force):
            return triton_fp8.gemm(
                xq, xs, qw.qweight, qw.scales, None, torch.bfloat16, 2,
                kernels=kernels, split=force if kernels == "current" else None,
            )  # fmt: skip

        out = run()
        if ref is None:
            ref = out
        elif not ctx.check(
            _rel_err(out, ref) < 1e-2, f"fp8_gemm {backend} {shape}: vs triton_legacy"
        ):
            continue
        t = ctx.measure(run)
        if base_t is None:
            base_t = t
        yield ctx.row(
            op="fp8_gemm", shape=shape, dtype=qw.scheme, backend=backend, timing=t,
            flops=flops, bytes=nbytes,
            ceiling=_ceiling(ctx, m, True),
            baseline=None if t is base_t else "triton_legacy",
            baseline_timing=None if t is base_t else base_t,
            config=triton_fp8.tuned_config(kernels) if ctx.gpu else None,
            extra={"split_k": split if backend == "triton" else 1},
        )  # fmt: skip
