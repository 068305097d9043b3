"""The attention family's one capability table (attention, attention_varlen, attention_decode).

Calls carry a facts dict with at least ``op`` ("attention", "attention_varlen" or
"attention_decode"), ``device`` ("cuda", "cpu", ...), ``dtype`` (a torch dtype),
``head_dim`` and ``arch`` (the GPU's compute capability tuple, None off a GPU). Decode calls
are answered by :func:`millkernels.ops.attention.decode.decode_reason`, owned by the decode
module; this module only routes them.
"""

from __future__ import annotations

from typing import Any

import torch

from millkernels import runtime
from millkernels.dispatch import BackendSpec, CapabilityTable

TRAINING_OPS = ("attention", "attention_varlen")
#: dtypes the kernels take; float32 is served by the reference only.
KERNEL_DTYPES = (torch.float16, torch.bfloat16)
REFERENCE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256


def _decode_reason(backend: str, call: dict[str, Any]) -> str | None:
    try:
        from millkernels.ops.attention.decode import decode_reason
    except ImportError as exc:
        return f"attention_decode is not available: {exc}"
    return decode_reason(backend, call)


def _triton_serves(call: dict[str, Any]) -> str | None:
    if call["op"] == "attention_decode":
        return _decode_reason("triton", call)
    if call["op"] not in TRAINING_OPS:
        return f"unknown attention op {call['op']!r}"
    device = call["device"]
    if device == "cpu":
        if not runtime.triton_interpret():
            return "CPU tensors need the Triton interpreter (TRITON_INTERPRET=1)"
    elif device == "cuda":
        if runtime.triton_interpret():
            return "TRITON_INTERPRET=1 is set, so Triton cannot launch on the GPU"
        arch = call.get("arch")
        if arch is not None and tuple(arch) < (8, 0):
            return f"the Triton kernels need sm_80 or newer; this GPU is sm_{arch[0]}{arch[1]}"
    else:
        return f"Triton runs on CUDA GPUs (or the CPU interpreter), not on {device!r}"
    if call["dtype"] not in KERNEL_DTYPES:
        return f"the Triton kernels take float16 or bfloat16, not {call['dtype']}"
    if call["head_dim"] > MAX_HEAD_DIM:
        return f"head_dim {call['head_dim']} > {MAX_HEAD_DIM}"
    return None


def _cuda_serves(call: dict[str, Any]) -> str | None:
    if call["op"] == "attention_decode":
        return _decode_reason("cuda", call)
    return "no CUDA C++ training kernel (use triton)"


def _cuda_available() -> str | None:
    from millkernels._native import cuda_unavailable_reason

    return cuda_unavailable_reason()


def _reference_serves(call: dict[str, Any]) -> str | None:
    if call["op"] == "attention_decode":
        return _decode_reason("reference", call)
    if call["dtype"] not in REFERENCE_DTYPES:
        return f"the reference takes float16, bfloat16 or float32, not {call['dtype']}"
    return None


TABLE = CapabilityTable(
    family="attention",
    ops=("attention", "attention_varlen", "attention_decode"),
    backends=(
        BackendSpec(
            "triton",
            archs="sm_80+ (autotuned per arch; sm_90 wgmma); CPU under TRITON_INTERPRET=1",
            dtypes=("float16", "bfloat16"),
            notes="FlashAttention-2 forward and deterministic backward, varlen, GQA, windows, "
            "softcap, head_dim multiple of 8 up to 256",
            available=runtime.triton_unavailable_reason,
            serves=_triton_serves,
        ),
        BackendSpec(
            "cuda",
            archs="sm_80, sm_90a (the archs _C was built for)",
            dtypes=("float16", "bfloat16"),
            notes="paged-KV decode only",
            available=_cuda_available,
            serves=_cuda_serves,
        ),
        BackendSpec(
            "reference",
            archs="any (PyTorch)",
            dtypes=("float16", "bfloat16", "float32"),
            notes="plain PyTorch in float32; the semantics every backend matches",
            serves=_reference_serves,
        ),
    ),
    auto_rule=(
        "triton when it can serve the call (a GPU with sm_80+, or the CPU interpreter), then "
        "cuda (decode only), then reference (float32 inputs, or no Triton). Not yet backed by "
        "a GPU measurement in benchmarks/results/."
    ),
)


def call_facts(op: str, q: torch.Tensor, **extra: Any) -> dict[str, Any]:
    """The facts dict for a call whose query is ``q``."""
    arch = runtime.capability(q.device) if q.device.type == "cuda" else None
    return {
        "op": op,
        "device": q.device.type,
        "dtype": q.dtype,
        "head_dim": int(q.shape[-1]),
        "arch": arch,
        **extra,
    }
