"""The quant family's capability table: which backend serves which quantised matmul.

Call facts: :class:`QuantCall`, built by :func:`call_facts` from the validated arguments.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from millkernels import runtime
from millkernels._native import cuda_unavailable_reason
from millkernels.dispatch import BackendSpec, CallFacts, CapabilityTable, env_override
from millkernels.ops.analysis_spec import CudaHot, Expect
from millkernels.ops.quant.formats import FP8_SCHEMES, SCHEMES

FP8_MIN_CAPABILITY = (8, 9)  # e4m3 tensor cores: Ada (8.9) and Hopper (9.0)
DTYPES = ("float16", "bfloat16")
FP8_KERNELS_ENV = "MILLKERNELS_FP8_KERNELS"
#: The Triton fp8 GEMMs :data:`FP8_KERNELS_ENV` chooses between (``triton_fp8``).
FP8_KERNELS = {
    "current": (
        "scalar B block scales, A scales through the pipeline, folded promotion, split K for "
        "M <= 64 (default)"
    ),
    "legacy": "the previous GEMM (per-column B-scale gathers, no split K), for comparison",
    "tma": "persistent grid with TMA descriptors (sm_90+; K a multiple of 16), no split K",
}

#: Kernels of the Triton weight-only matmul (``triton_weight_only.matmul(variant=...)``):
#: ``fused`` (magic-number dequantisation, split K reduced in the kernel) and ``legacy`` (one
#: I2F per weight, split-K partials summed in torch), kept until a GPU run compares them.
TRITON_VARIANTS = ("fused", "legacy")
#: Environment switch for the variant ``backend="triton"`` uses (default ``fused``).
TRITON_VARIANT_ENV = "MILLKERNELS_QUANT_TRITON_VARIANT"

#: ``backend="auto"`` picks cuda for M <= CUDA_AUTO_MAX_M rows. 0 (never) until the GPU
#: campaign (benchmarks/gpu_campaign.sh, quant suite rows cuda / cuda_pipe / cuda_wide vs
#: triton) shows the CUDA kernel faster; that campaign decides the value (at most cuda.MAX_M
#: = 16).
CUDA_AUTO_MAX_M = 0
#: The CUDA kernel path ``backend="cuda"`` uses ("auto": the mma.sync kernel; "pipe": the
#: cp.async-pipelined one; "wide": that with two strips per block). Left at "auto" until a
#: GPU run compares them.
CUDA_DEFAULT_PATH = "auto"


def triton_variant() -> str:
    """The Triton weight-only variant: ``MILLKERNELS_QUANT_TRITON_VARIANT`` or ``fused``.
    Raises ValueError for a value that is not one of :data:`TRITON_VARIANTS`."""
    v = os.environ.get(TRITON_VARIANT_ENV, "").strip() or TRITON_VARIANTS[0]
    if v not in TRITON_VARIANTS:
        raise ValueError(f"{TRITON_VARIANT_ENV}: expected one of {TRITON_VARIANTS}, got {v!r}")
    return v


@dataclass(frozen=True, kw_only=True)
class QuantCall(CallFacts):
    """One quantised matmul: ``dtype`` is x's; ``group_size`` is canonical (in_features for
    per-channel); ``m`` the rows of x (all leading dimensions flattened), None under
    ``torch.compile`` (one graph may serve many M; the CUDA binding checks M <= 16 itself)."""

    scheme: str
    group_size: int
    in_features: int
    m: int | None


def call_facts(x: torch.Tensor, scheme: str, group_size: int, in_features: int) -> QuantCall:
    """The facts the table decides on for ``matmul(x, <weight of scheme ...>)``."""
    m = x.numel() // max(in_features, 1)
    return quant_call(x.device, x.dtype, scheme, group_size, in_features, m)


def quant_call(
    device: torch.device,
    dtype: torch.dtype,
    scheme: str,
    group_size: int,
    in_features: int,
    m: int | None,
) -> QuantCall:
    """:func:`call_facts` from plain values (what ``torch.compile`` can treat as constants)."""
    dev = device.type
    return QuantCall(
        op="matmul",
        device=dev,
        dtype=str(dtype).removeprefix("torch."),
        capability=runtime.capability(device) if dev == "cuda" else None,
        scheme=scheme,
        group_size=group_size,
        in_features=in_features,
        m=m,
    )


def fp8_reason(call: QuantCall) -> str | None:
    """Why an fp8 scheme cannot run for this call (a GPU below cc 8.9), or None."""
    cap = call.capability
    fp8 = call.scheme in FP8_SCHEMES
    if fp8 and call.device == "cuda" and cap is not None and tuple(cap) < FP8_MIN_CAPABILITY:
        return (
            f"{call.scheme} needs fp8 (compute capability >= 8.9); this GPU is sm_{cap[0]}{cap[1]}"
        )
    return None


def cuda_first(call: QuantCall) -> bool:
    """The auto rule's CUDA clause: 1 <= M <= :data:`CUDA_AUTO_MAX_M` and cuda can serve."""
    m = call.m
    return m is not None and 1 <= m <= CUDA_AUTO_MAX_M and TABLE.reason("cuda", call) is None


def resolve(call: QuantCall, backend: str) -> str:
    """``TABLE.select(backend, call)``, after the fp8 check no backend waives (a ValueError
    naming ``qweight``: the weight's scheme cannot run on this GPU at all); ``"auto"`` (without
    ``MILLKERNELS_BACKEND``) takes cuda first when :func:`cuda_first` holds."""
    why = fp8_reason(call)
    if why:
        raise ValueError(f"qweight: {why}")
    if backend == "auto" and env_override(TABLE.family) is None and cuda_first(call):
        return "cuda"
    return TABLE.select(backend, call, call.op)


def fp8_kernels() -> str:
    """The Triton fp8 GEMM to launch: :data:`FP8_KERNELS_ENV` (default ``current``).

    Raises ValueError for a value not in :data:`FP8_KERNELS`."""
    raw = os.environ.get(FP8_KERNELS_ENV, "").strip() or "current"
    if raw not in FP8_KERNELS:
        raise ValueError(
            f"{FP8_KERNELS_ENV}: expected one of {', '.join(FP8_KERNELS)}, got {raw!r}"
        )
    return raw


def fp8_kernels_setting() -> str:
    """The fp8 GEMM choice in words (``millkernels info``)."""
    try:
        name = fp8_kernels()
    except ValueError as exc:
        return str(exc)
    return f"{name}: {FP8_KERNELS[name]}"


def _triton_serves(call: QuantCall) -> str | None:
    why = fp8_reason(call)
    if why:
        return why
    if call.device == "cpu" and not runtime.triton_interpret():
        return "CPU tensors need the Triton interpreter (TRITON_INTERPRET=1)"
    if call.device == "cuda" and runtime.triton_interpret():
        return "TRITON_INTERPRET=1 is set, so Triton cannot launch on the GPU"
    if call.device not in ("cpu", "cuda"):
        return f"device {call.device} is not supported"
    if call.dtype not in DTYPES:
        return f"x dtype {call.dtype} is not float16/bfloat16"
    if call.scheme not in FP8_SCHEMES:
        g, k = call.group_size, call.in_features
        if g != k and g % 16:
            return f"group_size {g} is not a multiple of 16 (the smallest K tile)"
    return None


def _cuda_serves(call: QuantCall) -> str | None:
    why = fp8_reason(call)
    if why:
        return why
    if call.scheme != "w4a16":
        return f"the CUDA kernel is w4a16 only, not {call.scheme}"
    if call.device != "cuda":
        return "needs CUDA tensors"
    if call.dtype not in DTYPES:
        return f"x dtype {call.dtype} is not float16/bfloat16"
    if call.m is not None and call.m > 16:
        return f"M={call.m} rows: the CUDA kernel serves M <= 16"
    g, k = call.group_size, call.in_features
    if k % 32 or g % 32:
        return f"in_features {k} and group_size {g} must be multiples of 32"
    return None


def _reference_serves(call: QuantCall) -> str | None:
    return fp8_reason(call)


TABLE = CapabilityTable(
    family="quant",
    ops=("matmul",),
    backends=(
        BackendSpec(
            "triton",
            archs="sm_80+ (w4a16/w8a16); sm_89+ (fp8, wgmma on sm_90); CPU under the interpreter",
            dtypes=DTYPES,
            notes=(
                f"schemes {', '.join(SCHEMES)}; integer group sizes: multiples of 16 or -1; "
                "split-K for M <= 64; M-bucketed autotuning"
            ),
            available=runtime.triton_unavailable_reason,
            serves=_triton_serves,
        ),
        BackendSpec(
            "cuda",
            archs="sm_80, sm_90a (the archs _C was built for)",
            dtypes=DTYPES,
            notes=(
                "w4a16, M <= 16, K and group size multiples of 32: 16-byte weight loads, "
                "lop3 magic-number int4 conversion, mma.sync tensor cores (an fp32-FMA path "
                "for M <= 2 via ops.quant.cuda.matmul(path='fma'); a 3-stage cp.async weight "
                "pipeline via path='pipe'), split K; repacked once "
                "per weight; the K split is reduced inside the kernel (one launch). Not yet run "
                "on a GPU: reached only when named"
            ),
            available=cuda_unavailable_reason,
            serves=_cuda_serves,
        ),
        BackendSpec(
            "reference",
            archs="any (PyTorch: dequantise, then a float32 matmul)",
            dtypes=DTYPES,
            notes="every scheme and group size; fp8 still needs cc >= 8.9 on a GPU",
            serves=_reference_serves,
        ),
    ),
    auto_rule=(
        "cuda for 1 <= M <= CUDA_AUTO_MAX_M (now 0: never, until the GPU campaign's quant rows "
        "show cuda / cuda_pipe / cuda_wide faster than triton at small M), else triton when it "
        "can serve "
        "the call (GPU, or CPU under the interpreter), else the reference. Not yet backed by a "
        "GPU measurement in benchmarks/results/."
    ),
    choices=lambda: {f"fp8 GEMM kernels ({FP8_KERNELS_ENV})": fp8_kernels_setting()},
)

# csrc/quant/w4a16.cu: `millkernels analyze --check` fails if these spill, or if the pipe
# kernel's loop loses its evidence (sm_90a and sm_80 SASS: no I2F / MUFU, the instructions of
# the integer-division sequence; LDGSTS: the cp.async weight copies)
_PIPE_EXPECT = (
    Expect("spill_bytes", "==", 0, "no register spills"),
    Expect("loop.i2f", "==", 0, "no integer division in the loop (I2F.U32.RP of its sequence)"),
    Expect("loop.mufu", "==", 0, "no integer division in the loop (MUFU.RCP of its sequence)"),
    Expect("loop.async_copies", ">=", 1, "weights stream through cp.async (LDGSTS)"),
)
ANALYSIS = (
    CudaHot(
        ("w4a16_small_m_kernel", "w4a16_pipe_kernel", "w4_repack_kernel"),
        expect={"w4a16_pipe_kernel": _PIPE_EXPECT},
    ),
)
