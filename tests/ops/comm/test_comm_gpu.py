"""GPU tests of the custom IPC all-reduce (marked gpu / multi_gpu): several processes sharing
one GPU (IPC handles between processes on one device), one GPU per process through
comm.all_reduce, and CUDA graph capture; every result compared bit for bit with the
fixed-order float32 reference."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import comm_workers


def _assert_ok(res: dict) -> None:
    assert "battery crashed" not in res, res["battery crashed"]
    bad = {k: next(e for e in v if e) for k, v in res.items() if any(v)}
    assert not bad, "\n".join(f"--- {k}:\n{e}" for k, e in list(bad.items())[:3])


@pytest.mark.gpu
@pytest.mark.native
@pytest.mark.parametrize("world", [2, 3])
def test_ipc_all_reduce_processes_sharing_one_gpu(world: int) -> None:
    res = comm_workers.run_group(
        world, "battery_gpu_ipc", timeout_s=300, env={"COMM_TEST_DEVICE": "same"}
    )
    assert "ipc under CUDA graph capture" in res and len(res) >= 30
    _assert_ok(res)


@pytest.mark.gpu
@pytest.mark.multi_gpu
@pytest.mark.native
def test_ipc_all_reduce_one_gpu_per_rank_nccl() -> None:
    import torch

    world = min(torch.cuda.device_count(), 8)
    res = comm_workers.run_group(
        world,
        "battery_gpu_api+battery_gpu_ipc",
        timeout_s=300,
        env={"COMM_TEST_DEVICE": "rank", "COMM_TEST_BACKEND": "nccl"},
    )
    _assert_ok(res)
