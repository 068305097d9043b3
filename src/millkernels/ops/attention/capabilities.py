"""The attention family's one capability table and every rule behind it.

Ops: ``attention`` and ``attention_varlen`` (training: forward and backward) and
``attention_decode`` (paged KV cache). Every rule takes an :class:`AttentionCall`, built by
:func:`call_facts` from validated arguments. Besides the backend rules (``serves``) this
module owns the launch choices the table makes inside a backend: whether the Triton
training kernels load through tensor descriptors (TMA), :func:`tma_reason`, whether the
Triton forward tries its warp-specialised kernel, :func:`ws_reason`, and which previous
decode rules :data:`DECODE_LEGACY_ENV` brings back for GPU comparisons, :func:`decode_legacy`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from millkernels import runtime
from millkernels.dispatch import BackendSpec, CallFacts, CapabilityTable

TRAINING_OPS = ("attention", "attention_varlen")
DECODE_OP = "attention_decode"
OPS = (*TRAINING_OPS, DECODE_OP)
#: dtypes the kernels take; float32 is served by the reference only (training ops).
KERNEL_DTYPES = ("float16", "bfloat16")
REFERENCE_DTYPES = ("float16", "bfloat16", "float32")
MAX_HEAD_DIM = 256
#: head_dim values the CUDA decode kernel is compiled for (a template per value).
CUDA_DECODE_HEAD_DIMS = (64, 128, 256)
#: The CUDA decode kernel and TMA both move 16 bytes at a time: pointers and strides must allow.
ALIGN_BYTES = 16
#: Opt-in switch for the tensor-descriptor (TMA) training kernels on sm_90+: "1" to use them
#: where the tensors allow. Off by default until GPU measurements show them ahead of the
#: pointer kernels (`millkernels bench attention` reports both).
TMA_ENV = "MILLKERNELS_ATTENTION_TMA"
#: Which Triton backward runs (:func:`backward_mode`): "fused" (the default: dQ by fp32
#: atomics, or a separate dQ pass when ``deterministic``), "split" (head_dim bucket 128 on
#: sm_90: separate dV, dK and dQ passes with 64-row tiles, deterministic) or "legacy" (the
#: separate dK/dV and dQ kernels with their original tables). Until a GPU run compares them.
BWD_ENV = "MILLKERNELS_ATTENTION_BWD"
BWD_MODES = ("fused", "split", "legacy")
#: GQA groups of this many query heads per key/value head or more go to Triton, not to the
#: CUDA decode kernel: its scalar FMA loop issues 210 warp-instructions per 512 bytes of K/V
#: at G=8 (compute-bound where a decode should be memory-bound); Triton's tl.dot tiles use
#: the tensor cores.
CUDA_DECODE_MAX_GROUP = 4
#: Comparison switch for the decode kernels: "all" or a comma list of DECODE_LEGACY_PARTS,
#: each bringing back the previous rule: ``splits`` (every grid split live, the grid sized
#: from the capacity alone), ``stages`` (the Triton K/V loop pipelined at the launch default
#: instead of KV_STAGES), ``cuda_gqa`` (the CUDA kernel serves GQA groups of 4 and more).
DECODE_LEGACY_ENV = "MILLKERNELS_DECODE_LEGACY"
DECODE_LEGACY_PARTS = ("splits", "stages", "cuda_gqa")
#: Opt-in switch for the warp-specialised Triton forward on sm_90+: "1" to use it for calls
#: it fits (full blocks, no mask: :func:`.triton_fwd.ws_unfit`). Off by default until GPU
#: measurements show it ahead (`millkernels bench attention` reports ``triton_ws``).
WS_ENV = "MILLKERNELS_ATTENTION_WS"


@dataclass(frozen=True)
class AttentionCall(CallFacts):
    """The facts of one attention call (``op`` is one of :data:`OPS`).

    ``aligned16``: every data pointer of the call's tensors is 16-byte aligned and every
    stride but the last is a multiple of 16 bytes (the CUDA decode kernel's and TMA's rule).
    ``tma_opt_in``, ``ws_opt_in``: :data:`TMA_ENV`, :data:`WS_ENV` were "1" when the facts
    were taken.
    ``group``: query heads per key/value head (GQA; 1 for MHA).
    """

    head_dim: int = 0
    aligned16: bool = True
    tma_opt_in: bool = False
    ws_opt_in: bool = False
    group: int = 1


def decode_legacy() -> frozenset[str]:
    """The previous decode rules :data:`DECODE_LEGACY_ENV` selects (empty: the current ones).

    Raises ValueError on a part not in :data:`DECODE_LEGACY_PARTS` (or "all")."""
    raw = os.environ.get(DECODE_LEGACY_ENV, "").strip()
    if not raw:
        return frozenset()
    if raw == "all":
        return frozenset(DECODE_LEGACY_PARTS)
    parts = frozenset(p.strip() for p in raw.split(",") if p.strip())
    bad = sorted(parts - set(DECODE_LEGACY_PARTS))
    if bad:
        raise ValueError(
            f"{DECODE_LEGACY_ENV}: expected 'all' or a comma list of {DECODE_LEGACY_PARTS}, "
            f"got {bad}"
        )
    return parts


def aligned16(*tensors: torch.Tensor) -> bool:
    """Whether 16-byte loads can address every tensor: aligned data, outer strides multiples
    of 16 bytes. While torch.compile traces, the data pointers are unknown and only the
    strides are judged (the CUDA decode kernel still refuses a misaligned pointer with a
    ValueError when it runs)."""
    tracing = torch.compiler.is_compiling()
    for t in tensors:
        elem = t.element_size()
        if any((s * elem) % ALIGN_BYTES for s in t.stride()[:-1]):
            return False
        if not tracing and t.data_ptr() % ALIGN_BYTES:
            return False
    return True


def facts_from_values(
    op: str,
    device: str,
    dtype: str,
    head_dim: int,
    *,
    capability: tuple[int, int] | None = None,
    aligned: bool = True,
    group: int = 1,
) -> AttentionCall:
    """The facts from plain values: what :func:`call_facts` reads off the tensors, or what a
    backend choice that must stay constant under torch.compile receives."""
    return AttentionCall(
        op=op,
        device=device,
        dtype=dtype,
        capability=capability,
        head_dim=int(head_dim),
        aligned16=aligned,
        tma_opt_in=os.environ.get(TMA_ENV, "0") == "1",
        group=int(group),
        ws_opt_in=os.environ.get(WS_ENV, "0") == "1",
    )


def call_facts(op: str, q: torch.Tensor, *others: torch.Tensor, group: int = 1) -> AttentionCall:
    """The facts of a call whose query is ``q`` (validated arguments); ``others`` (k, v,
    dO...) count towards ``aligned16`` with ``q``; ``group``: query heads per key/value
    head."""
    where = CallFacts.of_tensor(q)
    return facts_from_values(
        op,
        where["device"],
        where["dtype"],
        q.shape[-1],
        capability=where["capability"],
        aligned=aligned16(q, *others),
        group=group,
    )


# ---------------------------------------------------------------------------- rules


def _sm(cap: tuple[int, int]) -> str:
    return f"sm_{cap[0]}{cap[1]}"


def _triton_device_reason(call: AttentionCall) -> str | None:
    if call.device == "cpu":
        if not runtime.triton_interpret():
            return "CPU tensors need the Triton interpreter (TRITON_INTERPRET=1)"
    elif call.device == "cuda":
        if runtime.triton_interpret():
            return "TRITON_INTERPRET=1 is set, so Triton cannot launch on the GPU"
    else:
        return f"Triton runs on CUDA GPUs (or the CPU interpreter), not on {call.device!r}"
    return None


def _triton_serves(call: AttentionCall) -> str | None:
    if call.op not in OPS:
        return f"unknown attention op {call.op!r}"
    why = _triton_device_reason(call)
    if why:
        return why
    cap = call.capability if call.device == "cuda" else None
    if call.op == DECODE_OP:  # fp16 decode runs on older GPUs too
        if cap is not None and cap < (8, 0) and call.dtype == "bfloat16":
            return f"bf16 needs sm_80 or newer, this GPU is {_sm(cap)}"
        return None
    if cap is not None and cap < (8, 0):
        return f"the Triton kernels need sm_80 or newer; this GPU is {_sm(cap)}"
    if call.dtype not in KERNEL_DTYPES:
        return f"the Triton kernels take float16 or bfloat16, not {call.dtype}"
    if call.head_dim > MAX_HEAD_DIM:
        return f"head_dim {call.head_dim} > {MAX_HEAD_DIM}"
    return None


def _native_decode_missing() -> str | None:
    try:
        import importlib

        native = importlib.import_module("millkernels._C")
    except ImportError as exc:
        return f"the native extension millkernels._C is not built ({exc})"
    if not hasattr(native, "attention_decode"):
        return "millkernels._C was built without the attention_decode kernel (rebuild it)"
    return None


def _cuda_serves(call: AttentionCall) -> str | None:
    if call.op != DECODE_OP:
        return "no CUDA C++ training kernel (use triton)"
    if call.device != "cuda":
        return f"needs CUDA tensors, got device {call.device!r}"
    if call.dtype not in KERNEL_DTYPES:
        return f"the CUDA decode kernel supports float16 and bfloat16, got {call.dtype}"
    if call.head_dim not in CUDA_DECODE_HEAD_DIMS:
        return (
            f"the CUDA decode kernel is compiled for head_dim {CUDA_DECODE_HEAD_DIMS}, got "
            f"{call.head_dim} (use the triton backend)"
        )
    if call.capability is not None and call.capability < (8, 0):
        return f"the CUDA decode kernel needs sm_80 or newer, this GPU is {_sm(call.capability)}"
    if not call.aligned16:
        return (
            "the CUDA decode kernel needs 16-byte aligned data pointers and strides that "
            "are multiples of 8 elements (q, k_cache, v_cache)"
        )
    if call.group >= CUDA_DECODE_MAX_GROUP and "cuda_gqa" not in decode_legacy():
        return (
            f"GQA groups of {CUDA_DECODE_MAX_GROUP}+ query heads per key/value head go to the "
            f"triton backend (tensor cores), this call has {call.group} "
            f"({DECODE_LEGACY_ENV}=cuda_gqa brings the CUDA kernel back)"
        )
    return _native_decode_missing()


def _cuda_available() -> str | None:
    from millkernels._native import cuda_unavailable_reason

    return cuda_unavailable_reason()


def _reference_serves(call: AttentionCall) -> str | None:
    if call.op == DECODE_OP:
        return None
    if call.dtype not in REFERENCE_DTYPES:
        return f"the reference takes float16, bfloat16 or float32, not {call.dtype}"
    return None


def _triton_has_descriptors() -> bool:
    import triton.language as tl

    return hasattr(tl, "make_tensor_descriptor")


def tma_reason(call: AttentionCall) -> str | None:
    """Why the Triton training kernels load without tensor descriptors (TMA) for ``call``;
    None: they use them. TMA needs the opt-in (:data:`TMA_ENV`), a training op, sm_90+ (or
    the interpreter, which emulates descriptors), 16-byte aligned tensors and a Triton with
    ``tl.make_tensor_descriptor``."""
    if not call.tma_opt_in:
        return f"{TMA_ENV} is not 1 (the TMA kernels are opt-in)"
    return _descriptor_reason(call, "TMA kernels")


def _descriptor_reason(call: AttentionCall, what: str) -> str | None:
    """Why tensor-descriptor kernels (``what``) cannot serve ``call``, the opt-in aside."""
    if call.op not in TRAINING_OPS:
        return f"no {what} for {call.op}"
    if not runtime.triton_interpret():
        cap = call.capability if call.device == "cuda" else None
        if cap is None:
            return "needs an sm_90+ GPU (or the Triton interpreter)"
        if cap < (9, 0):
            return f"needs sm_90 or newer, this GPU is {_sm(cap)}"
    if not call.aligned16:
        return "the tensors are not 16-byte aligned (data or outer strides)"
    if not _triton_has_descriptors():
        return "this Triton has no tl.make_tensor_descriptor"
    return None


def use_tma(call: AttentionCall) -> bool:
    """The TMA decision for ``call`` (see :func:`tma_reason`)."""
    return tma_reason(call) is None


def backward_mode() -> str:
    """The Triton backward :data:`BWD_ENV` selects (one of :data:`BWD_MODES`; unset or empty:
    "fused"). Raises ValueError for another value."""
    mode = os.environ.get(BWD_ENV, "").strip().lower() or BWD_MODES[0]
    if mode not in BWD_MODES:
        raise ValueError(f"{BWD_ENV}: expected one of {BWD_MODES}, got {mode!r}")
    return mode


def backward_setting() -> str:
    """The Triton backward on this machine, in words (``millkernels info``; a bad
    :data:`BWD_ENV` is reported, not raised)."""
    try:
        mode = backward_mode()
    except ValueError as exc:
        return f"invalid: {exc}"
    if mode == "legacy":
        return f"legacy ({BWD_ENV}=legacy): separate dK/dV and dQ kernels"
    if mode == "split":
        return (
            f"split ({BWD_ENV}=split): dV, dK and dQ passes with 64-row tiles at head_dim "
            "bucket 128 on sm_90, the fused backward elsewhere"
        )
    return (
        "fused: one dK/dV pass adding dQ with fp32 atomics (deterministic=True: a separate "
        f"dQ pass); {BWD_ENV}=split or legacy selects the others"
    )


def ws_reason(call: AttentionCall) -> str | None:
    """Why the Triton forward does not try its warp-specialised kernel for ``call``; None: it
    does, and the launcher still takes the other kernel for calls that do not fit it
    (:func:`.triton_fwd.ws_unfit`: masks, varlen, partial blocks) or when Triton did not
    specialise it. Needs the opt-in (:data:`WS_ENV`) and what TMA needs (:func:`tma_reason`)
    but its opt-in: the WS kernel loads through tensor descriptors."""
    if not call.ws_opt_in:
        return f"{WS_ENV} is not 1 (the warp-specialised forward is opt-in)"
    return _descriptor_reason(call, "warp-specialised kernels")


def use_ws(call: AttentionCall) -> bool:
    """The warp-specialisation decision for ``call`` (see :func:`ws_reason`)."""
    return ws_reason(call) is None


def _machine_call() -> AttentionCall:
    """A training call on this machine (GPU or interpreter) with aligned bf16 tensors."""
    if runtime.triton_interpret():
        device, cap = "cpu", None
    else:
        device, cap = "cuda", runtime.capability()
    return facts_from_values(TRAINING_OPS[0], device, "bfloat16", 128, capability=cap)


def tma_setting() -> str:
    """The TMA choice on this machine for aligned tensors, in words (``millkernels info``)."""
    why = tma_reason(_machine_call())
    if why is None:
        return "on (training kernels, where q, k, v and dO are 16-byte aligned)"
    return f"off: {why}"


def decode_legacy_setting() -> str:
    """The decode rules in use, in words (``millkernels info``)."""
    try:
        parts = decode_legacy()
    except ValueError as exc:
        return f"invalid: {exc}"
    return "previous: " + ", ".join(sorted(parts)) if parts else "current (none legacy)"


def ws_setting() -> str:
    """The warp-specialisation choice on this machine, in words (``millkernels info``)."""
    why = ws_reason(_machine_call())
    if why is None:
        return "on (forward calls with full blocks and no mask, 16-byte aligned)"
    return f"off: {why}"


TABLE = CapabilityTable(
    family="attention",
    ops=OPS,
    backends=(
        BackendSpec(
            "triton",
            archs="sm_80+ (autotuned per arch; sm_90 wgmma); CPU under TRITON_INTERPRET=1",
            dtypes=KERNEL_DTYPES,
            notes="FlashAttention-2 forward and backward (dQ by atomics; deterministic=True "
            "reproducible), varlen, GQA, windows, "
            "softcap, head_dim multiple of 8 up to 256; paged-KV decode (split-KV); "
            f"tensor-descriptor (TMA) training kernels on sm_90+ with {TMA_ENV}=1; "
            f"warp-specialised forward on sm_90+ with {WS_ENV}=1",
            available=runtime.triton_unavailable_reason,
            serves=_triton_serves,
        ),
        BackendSpec(
            "cuda",
            archs="sm_80, sm_90a (the archs _C was built for)",
            dtypes=KERNEL_DTYPES,
            notes=f"paged-KV decode only, GQA groups below {CUDA_DECODE_MAX_GROUP}",
            available=_cuda_available,
            serves=_cuda_serves,
        ),
        BackendSpec(
            "reference",
            archs="any (PyTorch)",
            dtypes=REFERENCE_DTYPES,
            notes="plain PyTorch in float32; the semantics every backend matches",
            serves=_reference_serves,
        ),
    ),
    auto_rule=(
        "triton when it can serve the call (a GPU with sm_80+, or the CPU interpreter), then "
        "cuda (decode only), then reference (float32 inputs, or no Triton). Not yet backed by "
        "a GPU measurement in benchmarks/results/."
    ),
    choices=lambda: {
        f"TMA kernels ({TMA_ENV})": tma_setting(),
        f"backward ({BWD_ENV})": backward_setting(),
        f"decode legacy rules ({DECODE_LEGACY_ENV})": decode_legacy_setting(),
        f"warp-specialised forward ({WS_ENV})": ws_setting(),
    },
)
