"""Bad input in one process: no process group, the capability table, the native binding's
checks. The multi-rank checks (debug mode, local errors) run in test_comm_collectives'
2-rank group (comm_workers.battery_errors)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from millkernels.ops import comm


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
    call = {"op": "all_reduce", "device": "cpu", "dtype": "float32", "nbytes": 4, "world": 2,
            "algo": "nccl", "quant": "int8", "custom": None}  # fmt: skip
    assert "quantise" in table.reason("cuda", call) or table.reason("cuda", call)
    assert table.reason("reference", call) is None


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
