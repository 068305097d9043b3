"""Bad input in one process: no process group, the capability table, the native binding's
checks. The multi-rank checks (debug mode, local errors) run in test_comm_collectives'
2-rank group (comm_workers.battery_errors)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.distributed as dist

from millkernels.dispatch import CallFacts
from millkernels.ops import comm
from millkernels.ops.comm.capabilities import CommCall, call_facts


@pytest.mark.skipif(dist.is_initialized(), reason="a process group exists in this process")
@pytest.mark.parametrize(
    "call",
    [
        lambda: comm.all_reduce(torch.ones(3)),
        lambda: comm.all_gather(torch.ones(3)),
        lambda: comm.reduce_scatter(torch.ones(4)),
        lambda: comm.all_to_all(torch.ones(4)),
        lambda: comm.broadcast(torch.ones(3)),
        lambda: comm.CustomAllReduce(),
    ],
)
def test_no_process_group(call) -> None:
    with pytest.raises(RuntimeError, match="no process group is initialised"):
        call()


def test_capability_table_registered() -> None:
    from millkernels.ops import tables

    table = tables()["comm"]
    assert table.names() == ("cuda", "triton", "reference")
    call = call_facts("all_reduce", torch.ones(1), 2, "nccl", quant="int8")
    assert "quantise" in table.spec("cuda").serves(call)
    assert table.reason("reference", call) is None


def test_call_facts_are_typed() -> None:
    x = torch.randn(3, 5, dtype=torch.bfloat16)
    call = call_facts("all_reduce", x, 4, "one_shot", reduce_op="max", custom_max_bytes=64)
    assert isinstance(call, CommCall) and isinstance(call, CallFacts)
    assert (call.op, call.device, call.dtype, call.capability) == (
        "all_reduce",
        "cpu",
        "bfloat16",
        None,
    )
    assert (call.nbytes, call.world, call.algo, call.quant) == (30, 4, "one_shot", None)
    assert (call.reduce_op, call.custom_max_bytes) == ("max", 64)


def test_cuda_rule_reads_the_custom_allreduce_limit() -> None:
    """The IPC rule decides on the group's CustomAllReduce max_bytes, a plain fact."""
    from millkernels.ops.comm.capabilities import _cuda_serves

    big = CommCall(op="all_reduce", device="cuda", dtype="float32", nbytes=4096, world=2,
                   algo="one_shot", custom_max_bytes=1024)  # fmt: skip
    assert "over the CustomAllReduce's max_bytes=1024" in _cuda_serves(big)
    assert _cuda_serves(dataclasses.replace(big, nbytes=1024)) is None
    assert "no live CustomAllReduce" in _cuda_serves(
        dataclasses.replace(big, custom_max_bytes=None)
    )


def test_one_shot_limit_follows_cost_model() -> None:
    from millkernels.ops.comm.capabilities import one_shot_limit

    assert one_shot_limit(2) is None  # equal bytes: one-shot always
    assert 700_000 < one_shot_limit(4) < 900_000
    assert 200_000 < one_shot_limit(8) < 260_000
    assert one_shot_limit(8) < one_shot_limit(6) < one_shot_limit(4)


@pytest.mark.native
def test_native_validation_reaches_size_checks_on_cpu() -> None:
    """The binding checks sizes, dtypes and ranks before it needs a GPU (CPU views)."""
    from millkernels._native import require_native, view

    native = require_native()
    x = torch.ones(1025, dtype=torch.float32)
    y = torch.empty_like(x)
    layout = native.comm_ipc_layout(4096)
    assert layout["total_bytes"] >= 4 * 4096 and layout["max_ranks"] == 8
    slot = int(layout["slot_bytes"])
    args = ([0, 0], 0, 4096, slot, 36, False)
    with pytest.raises(ValueError, match="max_bytes"):
        native.comm_custom_allreduce(view(y), view(x), *args)
    small, out = torch.ones(7), torch.empty(7)
    with pytest.raises(ValueError, match="CUDA"):
        native.comm_custom_allreduce(view(out), view(small), *args)
    with pytest.raises(ValueError, match="dtype"):
        native.comm_custom_allreduce(view(out.int()), view(small.int()), *args)
    with pytest.raises(ValueError, match="numel|elements"):
        native.comm_custom_allreduce(view(torch.empty(6)), view(small), *args)
    with pytest.raises(ValueError, match="rank"):
        native.comm_custom_allreduce(view(out), view(small), [0] * 9, 0, 4096, slot, 36, False)
    with pytest.raises(ValueError, match="rank"):
        native.comm_custom_allreduce(view(out), view(small), [0, 0], 2, 4096, slot, 36, False)
    with pytest.raises(ValueError, match="blocks"):
        native.comm_custom_allreduce(view(out), view(small), [0, 0], 0, 4096, slot, 0, False)
