"""The comm family's custom ops (via ``family_op``): the local, tensor-only steps of the
quantised all-reduce, each dispatching the backend :func:`millkernels.ops.comm.api.all_reduce`
resolved ("triton" or "reference") to its launcher (``triton_quant``, ``reference``).

Ops (``torch.ops.millkernels.*``):

- ``comm_quantize_rows(x, world, group_size, quant, backend) -> buf`` (world, row bytes) int8;
- ``comm_dequant_accumulate_requantize(received, group_size, quant, backend) -> send``
  (1, row bytes) int8;
- ``comm_dequantize_into(gathered, out, group_size, quant, backend)``: writes ``out``.

Why only these: the collectives themselves take a ``torch.distributed`` process group (and
the IPC all-reduce the group's live :class:`CustomAllReduce`), framework objects that cannot
be custom-op arguments; they stay plain functions (``api``, ``reference``,
``custom_allreduce``) that call these ops between their ``torch.distributed`` calls.
"""

from __future__ import annotations

import torch

from millkernels.ops.comm import reference
from millkernels.ops.custom_op import family_op


def _launcher(backend: str):
    if backend == "triton":
        from millkernels.ops.comm import triton_quant

        return triton_quant
    return reference


@family_op("millkernels::comm_quantize_rows")
def quantize_rows(
    x: torch.Tensor, world: int, group_size: int, quant: str, backend: str
) -> torch.Tensor:
    """Flat ``x`` quantised into the (world, row bytes) int8 wire buffer (reference.py)."""
    return _launcher(backend).quantize_rows(x, world, group_size, quant)


@quantize_rows.register_fake
def _(x, world, group_size, quant, backend):
    _, _, row = reference.shard_layout(x.numel(), world, group_size)
    return x.new_empty((world, row), dtype=torch.int8)


@family_op("millkernels::comm_dequant_accumulate_requantize")
def dequant_accumulate_requantize(
    received: torch.Tensor, group_size: int, quant: str, backend: str
) -> torch.Tensor:
    """The received shards summed in rank order in float32, requantised: one wire row."""
    return _launcher(backend).dequant_accumulate_requantize(received, group_size, quant)


@dequant_accumulate_requantize.register_fake
def _(received, group_size, quant, backend):
    return received.new_empty((1, received.shape[1]))


@family_op("millkernels::comm_dequantize_into", mutates_args=("out",))
def dequantize_into(
    gathered: torch.Tensor, out: torch.Tensor, group_size: int, quant: str, backend: str
) -> None:
    """``out`` := the first ``out.numel()`` dequantised values of the gathered rows."""
    if backend == "triton" and out.is_contiguous():
        _launcher(backend).dequantize_into(gathered, out.reshape(-1), group_size, quant)
        return
    vals = reference.dequantize_rows(gathered, group_size, quant).reshape(-1)[: out.numel()]
    out.copy_(vals.view(out.shape).to(out.dtype))


@dequantize_into.register_fake
def _(gathered, out, group_size, quant, backend):
    return None
