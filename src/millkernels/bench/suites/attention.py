"""Suite ``attention``: forward and forward+backward of ``millkernels.attention`` against
PyTorch SDPA with each backend (flash, efficient, cuDNN; math only for small shapes),
FlexAttention, and flash-attn when installed.

Shapes on a GPU follow the FlashAttention-3 paper: batch x seqlen = 16k tokens,
heads x head_dim = 2048, seqlen 512 to 16k, head_dim 64, 128 and 256, causal and not, bf16.
On a CPU: one tiny shape (a smoke test of the plumbing, not a measurement).
TFLOP/s: 4 * batch * heads * seqlen_q * seqlen_k * head_dim forward (half when causal),
backward 2.5x forward (:func:`millkernels.bench.counts.attention_flops`).

Before a backend is timed on a (head_dim, causal) pair its output is checked against the
fp32 reference with the flash-attention rule on a small slice of the inputs (one sequence
of at most 512 tokens); a wrong result is a failed check and the case is not timed.
Each row's baseline is the fastest SDPA backend measured in the same run. ``triton_tma`` is
the Triton backend with the tensor-descriptor forward switched on (sm_90+; opt-in for users
through ``MILLKERNELS_ATTENTION_TMA=1`` until these rows show it ahead); ``triton_ws`` the
warp-specialised forward (``MILLKERNELS_ATTENTION_WS=1``; non-causal forward rows only, its
config says whether it ran or why it fell back).

Options: ``attention.seqlens``, ``attention.head_dims``, ``attention.causal`` (tuple of
bools), ``attention.directions`` (``fwd``, ``fwd_bwd``), ``attention.backends`` (subset of
ours and baselines by name), ``attention.dtype`` ("bf16"/"fp16").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from millkernels.bench.context import BenchContext
from millkernels.bench.counts import attention_flops
from millkernels.bench.registry import suite
from millkernels.bench.rows import Row

TOKENS = 16384
HIDDEN = 2048
GPU_SEQLENS = (512, 1024, 2048, 4096, 8192, 16384)
GPU_SEQLENS_QUICK = (1024, 8192)
CHECK_LEN = 512  # tokens of the correctness slice
REFERENCE_MAX_LEN = 2048  # the reference materialises (seqlen x seqlen) scores per head


def _sdpa_backends() -> dict[str, Any]:
    from torch.nn.attention import SDPBackend

    names = {
        "sdpa_flash": "FLASH_ATTENTION",
        "sdpa_efficient": "EFFICIENT_ATTENTION",
        "sdpa_cudnn": "CUDNN_ATTENTION",
        "sdpa_math": "MATH",
    }
    return {k: getattr(SDPBackend, v) for k, v in names.items() if hasattr(SDPBackend, v)}


def _sdpa(which: Any, causal: bool) -> Callable:
    import torch
    from torch.nn.attention import sdpa_kernel

    def run(q, k, v):
        with sdpa_kernel(which):
            out = torch.nn.functional.scaled_dot_product_attention(
                q.transpose(1, 2),
                k.transpose(1, 2),
                v.transpose(1, 2),
                is_causal=causal,
                enable_gqa=k.shape[2] != q.shape[2],
            )
        return out.transpose(1, 2)

    return run


def _flex(causal: bool, seqlen: int, device: str) -> Callable:
    import torch
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    compiled = torch.compile(flex_attention, dynamic=False)
    mask = None
    if causal:
        mask = create_block_mask(
            lambda b, h, q, kv: q >= kv, None, None, seqlen, seqlen, device=device
        )

    def run(q, k, v):
        out = compiled(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=mask)
        return out.transpose(1, 2)

    return run


def _flash_attn(causal: bool) -> Callable:
    from flash_attn import flash_attn_func

    return lambda q, k, v: flash_attn_func(q, k, v, causal=causal)


def _ours(backend: str, causal: bool) -> Callable:
    from millkernels.ops.attention import attention

    return lambda q, k, v: attention(q, k, v, causal=causal, backend=backend)


def _with_env(fn: Callable, name: str, value: str) -> Callable:
    """``fn`` with the environment variable ``name`` set to ``value`` for the whole call."""
    import os

    def run(*args):
        old = os.environ.get(name)
        os.environ[name] = value
        try:
            return fn(*args)
        finally:
            if old is None:
                del os.environ[name]
            else:
                os.environ[name] = old

    return run


#: Our Triton variants timed beside ``triton``: name -> the opt-in switch each sets.
_OPT_IN = {"triton_tma": "MILLKERNELS_ATTENTION_TMA", "triton_ws": "MILLKERNELS_ATTENTION_WS"}


def _candidates(ctx: BenchContext, causal: bool, seqlen: int) -> dict[str, Callable | str]:
    """name -> callable, or the reason it is left out."""
    from millkernels.ops.attention import TABLE
    from millkernels.ops.attention.capabilities import call_facts

    out: dict[str, Callable | str] = {}
    for name, which in _sdpa_backends().items():
        if name == "sdpa_math" and ctx.gpu and seqlen > REFERENCE_MAX_LEN:
            out[name] = f"the math backend materialises the scores (seqlen {seqlen})"
        else:
            out[name] = _sdpa(which, causal)
    if not ctx.gpu:
        out["flex"] = "FlexAttention is timed on GPUs only (its CPU path compiles C++ per shape)"
    else:
        try:
            out["flex"] = _flex(causal, seqlen, ctx.device)
        except Exception as exc:  # an old torch without flex_attention
            out["flex"] = f"FlexAttention unavailable: {type(exc).__name__}: {exc}"
    try:
        out["flash_attn"] = _flash_attn(causal)
    except ImportError:
        out["flash_attn"] = "flash-attn is not installed"
    out["flashinfer"] = "FlashInfer prefill is not wired into this suite yet"
    import torch

    probe = torch.empty(1, 1, 1, 64, dtype=torch.bfloat16, device=ctx.device)
    for backend in TABLE.names():
        why = TABLE.reason(backend, call_facts("attention", probe))
        if why:
            out[backend] = why
        elif backend == "reference" and ctx.gpu and seqlen > REFERENCE_MAX_LEN:
            out[backend] = f"the reference materialises the scores (seqlen {seqlen})"
        else:
            out[backend] = _ours(backend, causal)
    if callable(out.get("triton")):
        if ctx.gpu and torch.cuda.get_device_capability()[0] < 9:
            out["triton_tma"] = "tensor descriptors (TMA) need sm_90"
            out["triton_ws"] = "the warp-specialised forward needs sm_90"
        else:
            out["triton_tma"] = _with_env(_ours("triton", causal), _OPT_IN["triton_tma"], "1")
            out["triton_ws"] = _with_env(_ours("triton", causal), _OPT_IN["triton_ws"], "1")
        if causal:  # it would time the masked kernel it falls back to
            out["triton_ws"] = "the warp-specialised forward serves unmasked calls only"
    return out


def shapes(
    gpu: bool, quick: bool, seqlens: Sequence[int] = (), head_dims: Sequence[int] = ()
) -> list[tuple[int, int, int, int]]:
    """(batch, seqlen, heads, head_dim) cases (also the pytest-benchmark suite's): batch x
    seqlen = 16k tokens and heads x head_dim = 2048 on a GPU; one tiny shape on a CPU."""
    if gpu:
        seqlens = seqlens or (GPU_SEQLENS_QUICK if quick else GPU_SEQLENS)
        dims = head_dims or ((128,) if quick else (64, 128, 256))
        return [(max(1, TOKENS // s), s, HIDDEN // d, d) for d in dims for s in seqlens]
    return [(1, s, 2, d) for d in head_dims or (64,) for s in seqlens or (32,)]


def causals(gpu: bool) -> tuple[bool, ...]:
    """Masks timed by default: both on a GPU, non-causal only on a CPU."""
    return (False, True) if gpu else (False,)


def _shapes(ctx: BenchContext) -> list[tuple[int, int, int, int]]:
    seqlens = ctx.option("attention.seqlens", ())
    return shapes(ctx.gpu, ctx.quick, seqlens, ctx.option("attention.head_dims", ()))


def _check(ctx: BenchContext, name: str, fn: Callable, q, k, v, causal: bool) -> bool:
    """The flash rule on one sequence of at most CHECK_LEN tokens."""
    from millkernels.ops.attention.reference import attention_ref
    from millkernels.testing import flash_tolerance_ok

    n = min(CHECK_LEN, q.shape[1])
    qs, ks, vs = (t[:1, :n].contiguous() for t in (q, k, v))
    try:
        out = fn(qs, ks, vs)
    except Exception as exc:
        ctx.skip(name, f"raised {type(exc).__name__}: {str(exc)[:200]}")
        return False
    ref, _ = attention_ref(qs, ks, vs, causal=causal)
    pt, _ = attention_ref(qs, ks, vs, causal=causal, compute_dtype=None)
    ok, err, base = flash_tolerance_ok(out, pt, ref)
    return ctx.check(ok, f"{name}: max error {err:.3g} > 2 x PyTorch's {base:.3g} + 1e-5")


@suite("attention", order=30, description="attention fwd / fwd+bwd TFLOP/s vs SDPA, Flex")
def attention_suite(ctx: BenchContext) -> Iterator[Row]:
    import torch

    from millkernels.ops.attention import capabilities, triton_bwd, triton_fwd

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[ctx.option("attention.dtype", "bf16")]
    dname = "bf16" if dtype == torch.bfloat16 else "fp16"
    masks = ctx.option("attention.causal", causals(ctx.gpu))
    directions = ctx.option("attention.directions", ("fwd", "fwd_bwd"))
    wanted = ctx.option("attention.backends", None)
    checked: dict[tuple[str, int, bool], bool] = {}
    for batch, seqlen, heads, head_dim in _shapes(ctx):
        shape = {"batch": batch, "seqlen": seqlen, "heads": heads, "head_dim": head_dim}
        q, k, v = (
            torch.randn(batch, seqlen, heads, head_dim, device=ctx.device, dtype=dtype)
            for _ in range(3)
        )
        for causal in masks:
            cands = _candidates(ctx, causal, seqlen)
            for direction in directions:
                flops = attention_flops(
                    batch, heads, seqlen, seqlen, head_dim, causal=causal, direction=direction
                )
                timed: dict[str, Any] = {}
                configs: dict[str, dict] = {}
                for name, fn in cands.items():
                    if wanted is not None and name not in wanted:
                        continue
                    what = f"{name} d{head_dim} causal={causal} seqlen={seqlen} {direction}"
                    if name == "triton_ws" and direction != "fwd":
                        fn = "the warp-specialised kernel is a forward (see its fwd rows)"
                    if isinstance(fn, str):
                        ctx.skip(what, fn)
                        continue
                    key = (name, head_dim, causal)
                    if key not in checked:
                        checked[key] = _check(ctx, name, fn, q, k, v, causal)
                    if not checked[key]:
                        continue
                    run = _timed_call(fn, q, k, v, direction)
                    if name in _OPT_IN:
                        run = _with_env(run, _OPT_IN[name], "1")
                    try:
                        timed[name] = ctx.measure(run)
                    except Exception as exc:  # e.g. out of memory for one baseline
                        ctx.skip(what, f"raised {type(exc).__name__}: {str(exc)[:200]}")
                        continue
                    if name == "triton_ws":  # what it ran, or why not
                        win = (-1, 0) if causal else (-1, -1)
                        why = triton_fwd.ws_fallback(
                            q, k, v, None, None, q.shape[1], k.shape[1],
                            q.shape[-1] ** -0.5, win, 0.0,
                        )  # fmt: skip
                        configs[name] = {"fwd": triton_fwd.chosen_config(True, ws=why is None)}
                        configs[name]["ws_fallback"] = why
                    elif name in ("triton", "triton_tma"):
                        facts = capabilities.call_facts("attention", q, k, v)
                        tma = name == "triton_tma" or capabilities.use_tma(facts)
                        configs[name] = {"fwd": triton_fwd.chosen_config(tma)}
                        if direction != "fwd":
                            configs[name].update(triton_bwd.chosen_configs(tma))
                sdpa = {n: t for n, t in timed.items() if n.startswith("sdpa_")}
                best = min(sdpa, key=lambda n: sdpa[n].median_us) if sdpa else None
                for name, t in timed.items():
                    yield ctx.row(
                        op=f"attention_{direction}",
                        shape={**shape, "causal": causal},
                        dtype=dname,
                        backend=name,
                        timing=t,
                        flops=flops,
                        baseline=None if best is None or name == best else best,
                        baseline_timing=None if best is None or name == best else sdpa[best],
                        config=configs.get(name),
                    )


def _timed_call(fn: Callable, q, k, v, direction: str) -> Callable[[], Any]:
    import torch

    if direction == "fwd":
        return lambda: fn(q, k, v)
    qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))
    dout = torch.randn_like(q)

    def fwd_bwd():
        out = fn(qg, kg, vg)
        return torch.autograd.grad(out, (qg, kg, vg), dout)

    return fwd_bwd


# ---------------------------------------------------------------------------- backward only

#: (batch, seqlen, heads_q, heads_kv, head_dim, causal) timed by ``attention_bwd`` on a GPU:
#: 16k tokens at d128, and a GQA call whose grid (1 x 4 kv heads x 32 key blocks) is below
#: one wave of an H100, so the fused backward splits each group across programs.
BWD_GPU_CASES = (
    (8, 2048, 16, 16, 128, False),
    (8, 2048, 16, 16, 128, True),
    (2, 8192, 16, 16, 128, True),
    (1, 4096, 32, 4, 128, True),
)
BWD_CPU_CASES = ((1, 32, 2, 1, 64, True),)


def _bwd_candidates(ctx: BenchContext, causal: bool, gqa: bool) -> dict[str, Callable | str]:
    """The backward's variants (fused, deterministic, legacy, split) and SDPA's backends."""
    from functools import partial

    from millkernels.ops.attention import attention

    out: dict[str, Callable | str] = {}
    for name, which in _sdpa_backends().items():
        if name == "sdpa_math" and ctx.gpu:
            out[name] = "the math backend is timed on small shapes only"
        elif gqa:
            out[name] = "SDPA rows are MHA-only here (GQA would time a repeat of k and v)"
        else:
            out[name] = _sdpa(which, causal)
    fused = partial(attention, causal=causal, backend="triton")
    out["triton"] = fused
    out["triton_deterministic"] = partial(fused, deterministic=True)
    out["triton_legacy"] = fused  # the caller sets BWD_ENV around its backward
    out["triton_split"] = fused  # the same, BWD_ENV=split
    return out


@suite(
    "attention_bwd",
    order=31,
    description="attention backward only: fused vs split vs legacy vs SDPA",
)
def attention_bwd_suite(ctx: BenchContext) -> Iterator[Row]:
    """The backward alone (forward run once, outside the timing): the fused Triton backward
    (atomic dQ), its deterministic mode, the split backward (64-row dV / dK / dQ passes at
    head_dim 128), the legacy kernels and SDPA's backends."""
    import torch

    from millkernels.ops.attention import triton_bwd
    from millkernels.ops.attention.capabilities import BWD_ENV

    if ctx.gpu and torch.cuda.get_device_capability()[0] < 9:
        ctx.skip("attention_bwd", "the fused backward's tables are sm_90's")
        return
    dtype = torch.bfloat16
    for batch, seqlen, hq, hkv, d, causal in BWD_GPU_CASES if ctx.gpu else BWD_CPU_CASES:
        shape = {"batch": batch, "seqlen": seqlen, "heads": hq, "heads_kv": hkv, "head_dim": d}
        q = torch.randn(batch, seqlen, hq, d, device=ctx.device, dtype=dtype)
        k, v = (torch.randn(batch, seqlen, hkv, d, device=ctx.device, dtype=dtype) for _ in "kv")
        flops = attention_flops(batch, hq, seqlen, seqlen, d, causal=causal, direction="bwd")
        timed: dict[str, Any] = {}
        configs: dict[str, dict] = {}
        for name, fn in _bwd_candidates(ctx, causal, hq != hkv).items():
            what = f"{name} {shape} causal={causal} bwd"
            if isinstance(fn, str):
                ctx.skip(what, fn)
                continue
            run = _backward_call(fn, q, k, v)
            mode = {"triton_legacy": "legacy", "triton_split": "split"}.get(name, "fused")
            if mode != "fused":
                run = _with_env(run, BWD_ENV, mode)
            try:
                timed[name] = ctx.measure(run)
            except Exception as exc:
                ctx.skip(what, f"raised {type(exc).__name__}: {str(exc)[:200]}")
                continue
            if name.startswith("triton"):
                configs[name] = triton_bwd.chosen_configs(
                    False, mode=mode, deterministic=name != "triton"
                )
        sdpa = {n: t for n, t in timed.items() if n.startswith("sdpa_")}
        best = min(sdpa, key=lambda n: sdpa[n].median_us) if sdpa else None
        legacy = timed.get("triton_legacy")
        for name, t in timed.items():
            base = best if best is not None and name != best else None
            base_t = sdpa[best] if base is not None and best is not None else None
            if base is None and name != "triton_legacy" and legacy is not None:
                base, base_t = "triton_legacy", legacy  # GQA rows: against the old kernels
            yield ctx.row(
                op="attention_bwd",
                shape={**shape, "causal": causal},
                dtype="bf16",
                backend=name,
                timing=t,
                flops=flops,
                baseline=base,
                baseline_timing=base_t,
                config=configs.get(name),
            )


def _backward_call(fn: Callable, q, k, v) -> Callable[[], Any]:
    """The backward of one forward of ``fn`` (run here, once), repeatable."""
    import torch

    qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))
    dout = torch.randn_like(q)
    out = fn(qg, kg, vg)
    return lambda: torch.autograd.grad(out, (qg, kg, vg), dout, retain_graph=True)
