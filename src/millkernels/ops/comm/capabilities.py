"""The comm family's capability table and the ``algo="auto"`` rule (docs/comm-cost-model.md).

Backends (names from :mod:`millkernels.dispatch`):

- ``cuda``: the custom IPC all-reduce (``one_shot``, ``two_shot``) of
  :class:`~millkernels.ops.comm.custom_allreduce.CustomAllReduce`; CUDA tensors of a group
  that has a live ``CustomAllReduce``, fp16/bf16/fp32, at most its ``max_bytes``.
- ``triton``: the quantised all-reduce's quantise / dequantise-accumulate kernels (``quant``
  "int8" or "fp8"); CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``.
- ``reference``: plain ``torch.distributed`` calls (``algo="nccl"``: NCCL on GPUs, gloo on
  CPUs), the one-shot / two-shot algorithms written with ``torch.distributed`` collectives
  (CPU tensors only: on a GPU those names mean the IPC kernels), and the quantised all-reduce
  with torch quantisation.

Call facts: :class:`CommCall`, built by :func:`call_facts` from the validated arguments.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from millkernels import runtime
from millkernels._native import cuda_unavailable_reason
from millkernels.dispatch import BackendSpec, CallFacts, CapabilityTable

OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "broadcast")
ALGOS = ("auto", "nccl", "one_shot", "two_shot")
QUANTS = (None, "int8", "fp8")
CUSTOM_DTYPES = ("float16", "bfloat16", "float32")
QUANT_DTYPES = ("float16", "bfloat16", "float32")
MAX_RANKS = 8  # the IPC kernels' peer table (csrc/comm/custom_allreduce.h kMaxRanks)

# One-shot reads (n-1)*S per rank after one barrier; two-shot reads 2(n-1)/n*S after two.
# With a = the second barrier's cost (~3 us on NVLink, vLLM's published timings) and
# B = ~400 GB/s of NVLink read bandwidth per GPU, two-shot wins above
# S* = a * B * n / ((n-1)(n-2)): ~230 KB at n = 8, ~320 KB at n = 6, ~800 KB at n = 4, and
# never at n = 2 (equal bytes). Predicted by docs/comm-cost-model.md, not yet measured here.
_SECOND_BARRIER_S = 3e-6
_LINK_BYTES_PER_S = 400e9


@dataclass(frozen=True, kw_only=True)
class CommCall(CallFacts):
    """One collective: ``nbytes`` of the input, ``world`` the group size, ``algo`` the resolved
    algorithm ("nccl", "one_shot", "two_shot"), ``quant`` None / "int8" / "fp8",
    ``reduce_op`` the reduction, ``custom_max_bytes`` the ``max_bytes`` of the group's live
    CustomAllReduce (None: the group has none)."""

    nbytes: int
    world: int
    algo: str
    quant: str | None = None
    reduce_op: str = "sum"
    custom_max_bytes: int | None = None


def call_facts(
    op: str,
    x: torch.Tensor,
    world: int,
    algo: str,
    *,
    quant: str | None = None,
    reduce_op: str = "sum",
    custom_max_bytes: int | None = None,
) -> CommCall:
    """The facts the table decides on for collective ``op`` over ``x``."""
    return CommCall(
        op=op,
        **CallFacts.of_tensor(x),
        nbytes=x.numel() * x.element_size(),
        world=world,
        algo=algo,
        quant=quant,
        reduce_op=reduce_op,
        custom_max_bytes=custom_max_bytes,
    )


def one_shot_limit(world: int) -> int | None:
    """Largest message (bytes) for which ``auto`` picks one-shot over two-shot (None: always)."""
    if world <= 2:
        return None
    s = _SECOND_BARRIER_S * _LINK_BYTES_PER_S * world / ((world - 1) * (world - 2))
    return int(s) // 16 * 16


def auto_algo(call: CommCall) -> str:
    """The ``algo="auto"`` rule: the IPC kernels when the group has a ``CustomAllReduce`` that
    can serve the call (one-shot up to :func:`one_shot_limit`, then two-shot up to its
    ``max_bytes``), else NCCL (gloo on a CPU). Quantisation is never chosen automatically: it
    changes the result."""
    if call.op == "all_reduce" and call.device == "cuda" and call.custom_max_bytes is not None:
        trial = dataclasses.replace(call, algo="one_shot")
        if _cuda_serves(trial) is None and cuda_unavailable_reason() is None:
            return ipc_algo(call)
    return "nccl"


def ipc_algo(call: CommCall) -> str:
    """The IPC algorithm for the message: one-shot up to :func:`one_shot_limit`, then two-shot
    (what ``auto`` picks on the cuda backend)."""
    limit = one_shot_limit(call.world)
    return "one_shot" if limit is None or call.nbytes <= limit else "two_shot"


def _cuda_serves(call: CommCall) -> str | None:
    if call.quant:
        return "the IPC kernels do not quantise (quant runs on triton or reference)"
    if call.op != "all_reduce":
        return f"the IPC kernels implement all_reduce only, not {call.op}"
    if call.algo not in ("one_shot", "two_shot"):
        return f"algo {call.algo!r} is not an IPC algorithm (one_shot, two_shot)"
    if call.device != "cuda":
        return "needs CUDA tensors"
    if call.dtype not in CUSTOM_DTYPES:
        return f"dtype {call.dtype} is not one of {CUSTOM_DTYPES}"
    if call.reduce_op != "sum":
        return f"the IPC kernels only sum, not {call.reduce_op!r}"
    if call.custom_max_bytes is None:
        return (
            "no live CustomAllReduce for this group: create one on every rank first "
            "(millkernels.comm.CustomAllReduce(group, max_bytes=...))"
        )
    if call.nbytes > call.custom_max_bytes:
        return f"{call.nbytes} B is over the CustomAllReduce's max_bytes={call.custom_max_bytes}"
    return None


def _triton_serves(call: CommCall) -> str | None:
    if not call.quant:
        return "the Triton kernels only serve the quantised all-reduce (quant='int8'/'fp8')"
    if call.device == "cpu" and not runtime.triton_interpret():
        return "CPU tensors need the Triton interpreter (TRITON_INTERPRET=1)"
    if call.device == "cuda" and runtime.triton_interpret():
        return "TRITON_INTERPRET=1 is set, so Triton cannot launch on the GPU"
    return None


def _reference_serves(call: CommCall) -> str | None:
    if call.algo in ("one_shot", "two_shot") and call.device == "cuda":
        return (
            f"on CUDA tensors {call.algo} is the IPC kernel (cuda backend); the "
            "torch.distributed form of it serves CPU tensors only"
        )
    return None


TABLE = CapabilityTable(
    family="comm",
    ops=OPS,
    backends=(
        BackendSpec(
            "cuda",
            archs="sm_80, sm_90a; ranks on one node (CUDA IPC), 2..8 ranks",
            dtypes=CUSTOM_DTYPES,
            notes="one-shot / two-shot IPC all-reduce, fixed reduction order, CUDA graphs; "
            "needs a CustomAllReduce per group; NCCL beyond max_bytes",
            available=cuda_unavailable_reason,
            serves=_cuda_serves,
        ),
        BackendSpec(
            "triton",
            archs="any CUDA GPU (fp8: sm_89+); CPU under TRITON_INTERPRET=1",
            dtypes=QUANT_DTYPES,
            notes="quantised all-reduce: int8/fp8 e4m3 shards with per-128 absmax scales",
            available=runtime.triton_unavailable_reason,
            serves=_triton_serves,
        ),
        BackendSpec(
            "reference",
            archs="any (torch.distributed: NCCL, gloo)",
            dtypes=("any torch.distributed supports",),
            notes="algo nccl everywhere; one_shot/two_shot via collectives on CPU tensors; "
            "quantised all-reduce with torch quantisation",
            serves=_reference_serves,
        ),
    ),
    auto_rule=(
        "algo='auto': the IPC kernels (cuda) when the group has a CustomAllReduce and the "
        "tensor fits its max_bytes (one-shot up to ~a*B*n/((n-1)(n-2)) bytes: always at n=2, "
        "~800 KB at n=4, ~230 KB at n=8; then two-shot), else NCCL / gloo (reference). quant "
        "is opt-in only; its kernels run on triton where it can launch, else reference. "
        "Predicted by docs/comm-cost-model.md; not yet backed by benchmarks/results/."
    ),
)
