"""The probes family's capability table: which backend runs which memory probe.

Call facts: :class:`ProbesCall`, built by :func:`call_facts` from a validated buffer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from millkernels import runtime
from millkernels._native import cuda_unavailable_reason
from millkernels.dispatch import BackendSpec, CallFacts, CapabilityTable

OPS = ("mem_copy", "mem_read", "mem_write", "pattern_write", "pattern_check")
_PATTERN_OPS = ("pattern_write", "pattern_check")


@dataclass(frozen=True, kw_only=True)
class ProbesCall(CallFacts):
    """One probe over a buffer of ``words`` 32-bit words (``dtype`` is the word view's)."""

    words: int


def call_facts(op: str, words: torch.Tensor) -> ProbesCall:
    """The facts the table decides on for probe ``op`` over the flat word view ``words``."""
    return ProbesCall(op=op, **CallFacts.of_tensor(words), words=words.numel())


def _cuda_serves(call: ProbesCall) -> str | None:
    return None if call.device == "cuda" else "needs CUDA tensors"


def _triton_serves(call: ProbesCall) -> str | None:
    if call.op in _PATTERN_OPS:
        return "the pattern test has no Triton kernel (use cuda or reference)"
    if call.device == "cpu" and not runtime.triton_interpret():
        return "CPU tensors need the Triton interpreter (TRITON_INTERPRET=1)"
    if call.device == "cuda" and runtime.triton_interpret():
        return "TRITON_INTERPRET=1 is set, so Triton cannot launch on the GPU"
    return None


TABLE = CapabilityTable(
    family="probes",
    ops=OPS,
    backends=(
        BackendSpec(
            "cuda",
            archs="sm_80, sm_90a (the archs _C was built for)",
            dtypes=("any (32-bit words)",),
            notes="16-byte vector accesses, grid-stride loops",
            available=cuda_unavailable_reason,
            serves=_cuda_serves,
        ),
        BackendSpec(
            "triton",
            archs="any CUDA GPU; CPU under TRITON_INTERPRET=1",
            dtypes=("any (32-bit words)",),
            notes="copy, read and write only",
            available=runtime.triton_unavailable_reason,
            serves=_triton_serves,
        ),
        BackendSpec("reference", archs="any (PyTorch)", dtypes=("any (32-bit words)",)),
    ),
    auto_rule=(
        "cuda when the extension is built and the buffer is on a GPU (the probes measure the "
        "hardware with hand-written 16-byte vector kernels), then triton, then reference. "
        "Not yet backed by a GPU measurement in benchmarks/results/."
    ),
)
