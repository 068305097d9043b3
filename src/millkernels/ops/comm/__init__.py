"""Collective communication over torch.distributed: all-reduce (NCCL / gloo, CUDA IPC one-shot
and two-shot kernels, int8 / fp8 quantised), all-gather, reduce-scatter, all-to-all and
broadcast (benchmarked nccl-tests style by ``millkernels bench comm``)."""

from millkernels.ops.comm.api import (
    DEBUG_ENV,
    all_gather,
    all_reduce,
    all_to_all,
    broadcast,
    reduce_scatter,
)
from millkernels.ops.comm.capabilities import TABLE
from millkernels.ops.comm.custom_allreduce import CustomAllReduce
from millkernels.ops.comm.quantized import error_bound

__all__ = [
    "DEBUG_ENV",
    "TABLE",
    "CustomAllReduce",
    "all_gather",
    "all_reduce",
    "all_to_all",
    "broadcast",
    "error_bound",
    "reduce_scatter",
]
