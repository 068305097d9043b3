"""``millkernels bench comm``: nccl-tests' flags and table for millkernels' collectives.

Run it under torchrun (one process per GPU, or several CPU processes with gloo)::

    torchrun --nproc-per-node 8 -m millkernels bench comm --op all_reduce -b 8 -e 1G -f 2
    torchrun --nproc-per-node 4 -m millkernels bench comm --device cpu -b 8 -e 1M --format json

The process group comes from the standard rank variables (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT as torchrun sets them; else SLURM_PROCID / SLURM_NTASKS /
SLURM_LOCALID, else OMPI_COMM_WORLD_*); with none of them it runs as one rank. Exit codes:
0 ok, 1 some result was wrong, 2 usage error, 3 could not run.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from datetime import timedelta

EXIT_OK, EXIT_WRONG, EXIT_USAGE, EXIT_COULD_NOT_RUN = 0, 1, 2, 3


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would sys.exit(2); let main return it
        raise _UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    from millkernels.bench.suites.comm import DTYPES, OPS

    p = _Parser(
        prog="millkernels bench comm",
        description="Collective bandwidth and correctness, nccl-tests style (run under torchrun).",
    )
    p.add_argument("--op", default="all_reduce", choices=OPS, help="the collective")
    p.add_argument("-b", "--minbytes", default="32M", help="smallest size (K/M/G suffixes)")
    p.add_argument("-e", "--maxbytes", default="32M", help="largest size")
    p.add_argument("-f", "--stepfactor", type=float, default=2.0, help="size multiplier")
    p.add_argument("-i", "--stepbytes", default="0", help="size increment when -f 1")
    p.add_argument("-n", "--iters", type=int, default=20, help="timed calls per size")
    p.add_argument("-w", "--warmup_iters", type=int, default=5, help="warm-up calls per size")
    p.add_argument("-c", "--check", type=int, default=1, choices=(0, 1), help="count #wrong")
    p.add_argument("-d", "--dtype", "--datatype", default="float", choices=sorted(DTYPES))
    p.add_argument("-o", "--redop", default="sum", choices=("sum", "max", "min", "prod"))
    p.add_argument("-r", "--root", type=int, default=0, help="broadcast root (group rank)")
    p.add_argument("--algo", default="auto", choices=("auto", "nccl", "one_shot", "two_shot"))
    p.add_argument("--quant", default="none", choices=("none", "int8", "fp8"))
    p.add_argument("-G", "--graph", action="store_true", help="time calls inside a CUDA graph")
    p.add_argument("--format", default="table", choices=("table", "json"))
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument("--backend", default="auto", choices=("auto", "nccl", "gloo"))
    p.add_argument("--max-bytes-custom", default=None, help="CustomAllReduce max_bytes")
    return p


def rank_env(env: dict[str, str] | None = None) -> tuple[int, int, int] | None:
    """(rank, world, local_rank) from the standard launcher variables, or None."""
    env = dict(os.environ if env is None else env)
    for r, w, lr in (
        ("RANK", "WORLD_SIZE", "LOCAL_RANK"),
        ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
        ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
    ):
        if r in env and w in env:
            return int(env[r]), int(env[w]), int(env.get(lr, "0"))
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init(device: str, backend: str) -> bool:
    """Initialise the default group unless it exists; True when this call created it."""
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    ranks = rank_env()
    timeout = timedelta(seconds=float(os.environ.get("MILLKERNELS_COMM_TIMEOUT_S", "300")))
    if ranks is None:
        dist.init_process_group(
            backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1,
            timeout=timeout,
        )  # fmt: skip
        return True
    rank, world, local = ranks
    if device == "cuda":
        torch.cuda.set_device(local % max(torch.cuda.device_count(), 1))
    if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        raise RuntimeError(
            "MASTER_ADDR and MASTER_PORT must be set (torchrun sets them; under Slurm export "
            "the first node's address and a port)"
        )
    dist.init_process_group(
        backend, init_method="env://", rank=rank, world_size=world, timeout=timeout
    )
    return True


def comm_bench_main(argv: list[str]) -> int:
    """Run the benchmark with nccl-tests-style ``argv``; returns the exit code."""
    from millkernels.bench.suites import comm as bench

    try:
        a = build_parser().parse_args(argv)
        s = bench.Settings(
            op=a.op,
            min_bytes=bench.parse_size(a.minbytes),
            max_bytes=bench.parse_size(a.maxbytes),
            factor=a.stepfactor,
            step=bench.parse_size(a.stepbytes),
            dtype=a.dtype,
            redop=a.redop,
            root=a.root,
            algo=a.algo,
            quant=None if a.quant == "none" else a.quant,
            iters=a.iters,
            warmup=a.warmup_iters,
            graph=a.graph,
            check=bool(a.check),
            fmt=a.format,
        )
        bench.size_list(s.min_bytes, s.max_bytes, s.factor, s.step)
        if s.iters < 1 or s.warmup < 0:
            raise _UsageError("-n must be >= 1 and -w >= 0")
        if s.op != "all_reduce" and (s.algo not in ("auto", "nccl") or s.quant):
            raise _UsageError(f"--algo {s.algo} / --quant apply to --op all_reduce only")
        if s.op == "reduce_scatter" and s.redop != "sum" and s.quant:
            raise _UsageError("--quant takes -o sum only")
    except SystemExit as exc:  # -h / --help
        return int(exc.code or 0)
    except (_UsageError, ValueError) as exc:
        print(f"bench comm: {exc}", file=sys.stderr)
        return EXIT_USAGE

    import torch

    device = a.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        print("bench comm: --device cuda, but no CUDA GPU is visible", file=sys.stderr)
        return EXIT_COULD_NOT_RUN
    if s.graph and device != "cuda":
        print("bench comm: --graph needs CUDA (--device cuda)", file=sys.stderr)
        return EXIT_USAGE
    backend = a.backend if a.backend != "auto" else ("nccl" if device == "cuda" else "gloo")
    try:
        created = _init(device, backend)
    except Exception as exc:
        print(f"bench comm: could not initialise torch.distributed: {exc}", file=sys.stderr)
        return EXIT_COULD_NOT_RUN
    try:
        return _run(s, a, device)
    finally:
        if created:
            import torch.distributed as dist

            dist.destroy_process_group()


def _run(s, a, device_type: str) -> int:
    import torch
    import torch.distributed as dist

    from millkernels.bench.suites import comm as bench
    from millkernels.dispatch import BackendUnavailable

    group = dist.group.WORLD
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", torch.cuda.current_device()) if device_type == "cuda" else "cpu"
    if bench.spec(s.op).rooted and not 0 <= s.root < world:
        if rank == 0:
            print(f"bench comm: -r {s.root} is not a rank of {world}", file=sys.stderr)
        return EXIT_USAGE
    custom = None
    if (
        device_type == "cuda"
        and s.op == "all_reduce"
        and not s.quant
        and s.algo in ("auto", "one_shot", "two_shot")
    ):
        from millkernels.ops.comm.custom_allreduce import DEFAULT_MAX_BYTES, CustomAllReduce

        if a.max_bytes_custom is not None:
            limit = bench.parse_size(a.max_bytes_custom)
        elif s.algo == "auto":
            limit = min(DEFAULT_MAX_BYTES, max(s.max_bytes, 16))
        else:
            limit = max(16, -(-s.max_bytes // 16) * 16)
        try:
            custom = CustomAllReduce(group, max_bytes=limit)
        except Exception as exc:
            if s.algo != "auto":
                print(f"bench comm: rank {rank}: CustomAllReduce: {exc}", file=sys.stderr)
                return EXIT_COULD_NOT_RUN
            if rank == 0:
                print(f"# no CustomAllReduce ({exc}); auto uses NCCL", file=sys.stderr)
    out = sys.stdout
    try:
        head = bench.header(s, group, device)
        if rank == 0 and s.fmt == "table":
            print(head, file=out, flush=True)
        log = (lambda m: print(m, file=sys.stderr)) if rank == 0 else (lambda m: None)
        rows = bench.run_sizes(s, group, device, log)
    except (BackendUnavailable, ValueError, TypeError) as exc:
        print(f"bench comm: rank {rank}: {exc}", file=sys.stderr)
        return EXIT_COULD_NOT_RUN
    finally:
        if custom is not None:
            custom.close()
    if rank == 0:
        if s.fmt == "json":
            print(bench.format_json(rows), file=out, flush=True)
            print(f"# Avg bus bandwidth    : {bench.average_busbw(rows):.6g}", file=sys.stderr)
        else:
            print(bench.format_table(rows), file=out, flush=True)
    wrong = sum(r["wrong"] + (r.get("inplace_wrong") or 0) for r in rows)
    return EXIT_WRONG if wrong else EXIT_OK


def main() -> None:  # python -m millkernels.bench.suites.comm_cli ...
    sys.exit(comm_bench_main(sys.argv[1:]))


if __name__ == "__main__":
    main()
