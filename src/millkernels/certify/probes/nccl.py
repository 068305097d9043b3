"""Intra-node NCCL all-reduce bus bandwidth through ``torch.distributed`` (one process per
GPU, spawned by the probe process). busbw = algbw x 2(n-1)/n, algbw = bytes / time (nccl-tests'
definitions). The result is checked first with inputs of exactly known sum."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from millkernels.certify.probes.registry import ProbeContext


def _worker(rank: int, world: int, nbytes: int, iters: int, tmp: str) -> None:
    import torch
    import torch.distributed as dist

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"file://{tmp}/store", rank=rank, world_size=world)
    try:
        x = torch.full((nbytes // 4,), float(rank + 1), device="cuda")
        dist.all_reduce(x)
        want = world * (world + 1) / 2
        wrong = int((x != want).sum())
        x.zero_()
        for _ in range(5):
            dist.all_reduce(x)
        torch.cuda.synchronize()
        dist.barrier()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(iters):
            dist.all_reduce(x)
        e.record()
        e.synchronize()
        secs = s.elapsed_time(e) / 1e3 / iters
        out = [None] * world
        dist.all_gather_object(out, {"secs": secs, "wrong": wrong})
        if rank == 0:
            Path(tmp, "result.json").write_text(json.dumps(out))
    finally:
        dist.destroy_process_group()


def allreduce(ctx: ProbeContext) -> None:
    import torch
    import torch.multiprocessing as mp

    n = torch.cuda.device_count()
    if n < 2:
        ctx.not_available("nccl_allreduce_busbw_gbps", "needs two or more GPUs", gpu=None)
        return
    nbytes = int(ctx.param("bytes", 256 << 20, 1 << 30))
    iters = int(ctx.param("iters", 10, 30))
    with tempfile.TemporaryDirectory(prefix="mk-nccl-") as tmp:
        mp.spawn(_worker, args=(n, nbytes, iters, tmp), nprocs=n, join=True)
        per_rank = json.loads(Path(tmp, "result.json").read_text())
    wrong = sum(r["wrong"] for r in per_rank)
    if wrong:
        raise RuntimeError(f"NCCL all-reduce gave {wrong} wrong elements (inputs of known sum)")
    secs = max(r["secs"] for r in per_rank)
    algbw = nbytes / secs / 1e9
    ctx.measure("nccl_allreduce_busbw_gbps", algbw * 2 * (n - 1) / n, "GB/s", gpu=None)
    ctx.info.update(gpus=n, bytes=nbytes, iters=iters, algbw_gbps=round(algbw, 2))
