"""Multi-process harness for the comm tests: spawn a gloo group on loopback, run a battery of
checks on every rank, return {check name: [per-rank failure or None]}.

Process start is slow (torch + Triton import, ~3 s per process on 2 cores), so one spawned
group runs many checks. Every group has a deadline (the parent kills it) and a gloo timeout,
so nothing hangs.
"""

from __future__ import annotations

import os
import queue
import socket
import time
import traceback
from collections.abc import Callable
from datetime import timedelta

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_group(world: int, battery: str, timeout_s: float = 150.0, env: dict | None = None):
    """Run ``battery`` (function names in this module, joined by "+") on ``world`` gloo ranks.

    Returns {check: [None or error text, one per rank]}. Raises RuntimeError when a rank
    crashed or the group ran past ``timeout_s`` (the processes are killed).
    """
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_entry, args=(r, world, port, battery, q, env or {}), daemon=True)
        for r in range(world)
    ]
    for p in procs:
        p.start()
    results: dict[int, dict] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(results) < world:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{battery} on {world} ranks ran past {timeout_s} s")
            try:
                rank, res = q.get(timeout=min(left, 1.0))
                results[rank] = res
            except queue.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(
                        f"{battery}: a rank died (exit {dead[0].exitcode})"
                    ) from None
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
    merged: dict[str, list] = {}
    for rank in range(world):
        for name, err in results[rank].items():
            merged.setdefault(name, [None] * world)[rank] = err
    return merged


def _entry(rank, world, port, battery, q, env) -> None:
    os.environ.update(env)
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch.distributed as dist

    torch.manual_seed(1234 + rank)
    device = os.environ.get("COMM_TEST_DEVICE")  # "same": all ranks on cuda:0; "rank": cuda:rank
    if device:
        torch.cuda.set_device(0 if device == "same" else rank)
    dist.init_process_group(
        os.environ.get("COMM_TEST_BACKEND", "gloo"),
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
    checks: dict[str, str | None] = {}
    prefix = ""

    def check(name: str, fn: Callable[[], None]) -> None:
        t0 = time.perf_counter()
        try:
            fn()
            checks[prefix + name] = None
        except Exception:
            checks[prefix + name] = traceback.format_exc(limit=6)
        if os.environ.get("COMM_TEST_TIMES") and rank == 0:
            print(f"{time.perf_counter() - t0:7.2f} s  {prefix}{name}", flush=True)

    # "battery_main@2+battery_main@3": run on the first 2 ranks, then the first 3 (sub-groups
    # of one spawned world: process start is the slow part). Without "@k": every rank.
    items = [(b.partition("@")[0], int(b.partition("@")[2] or world)) for b in battery.split("+")]
    groups = {k: dist.new_group(list(range(k))) for k in sorted({k for _, k in items}) if k < world}
    global _G
    for name, k in items:
        _G = groups.get(k, dist.group.WORLD)
        prefix = f"w{k} " if "@" in battery else ""
        if rank >= k:
            continue
        try:
            globals()[name](rank, k, check)
        except Exception:
            checks[prefix + "battery crashed"] = traceback.format_exc()
        dist.barrier(group=_G)
    _G = dist.group.WORLD
    q.put((rank, checks))
    dist.destroy_process_group()


# ----------------------------------------------------------------------- helpers

_G = None  # the process group the running battery uses (a sub-group of the spawned world)


class _BoundComm:
    """``millkernels.ops.comm`` with ``group=_G`` filled in for the collectives."""

    _OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "broadcast")

    def __getattr__(self, name: str):
        import functools

        from millkernels.ops import comm

        fn = getattr(comm, name)
        return functools.partial(fn, group=_G) if name in self._OPS else fn


def _bound_comm() -> _BoundComm:
    return _BoundComm()


def _same_everywhere(t: torch.Tensor, what: str) -> None:
    """Assert ``t``'s bytes are identical on every rank."""
    import torch.distributed as dist

    from millkernels.ops.comm.api import comm_device

    world = dist.get_world_size(_G)
    raw = t.detach().contiguous().view(-1).view(torch.uint8)
    dev = comm_device(_G)  # an NCCL group gathers on the GPU
    everyone = [torch.empty_like(raw, device=dev) for _ in range(world)]
    dist.all_gather(everyone, raw.to(dev), group=_G)
    everyone = [e.cpu() for e in everyone]
    raw = raw.cpu()
    for r, other in enumerate(everyone):
        assert torch.equal(other, raw), f"{what}: rank {r}'s result differs from this rank's"


def _gather_inputs(x: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    from millkernels.ops.comm.api import comm_device

    dev = comm_device(_G)
    parts = [torch.empty_like(x, device=dev) for _ in range(dist.get_world_size(_G))]
    dist.all_gather(parts, x.contiguous().to(dev), group=_G)
    return torch.stack(parts).to(x.device)


def _known(rank: int, n: int, dtype: torch.dtype, start: int = 0) -> torch.Tensor:
    return ((rank + torch.arange(start, start + n)) % 7 + 1).to(dtype)


def _poisoned_like(x: torch.Tensor, shape=None) -> torch.Tensor:
    from millkernels.testing import poison

    return poison(torch.empty(shape if shape is not None else x.shape, dtype=x.dtype))


SIZES = (1, 7, 1_000_003)


# ----------------------------------------------------------------------- batteries


def battery_main(rank: int, world: int, check) -> None:
    """Every op and algo on the CPU against references, in and out of place, sizes 1, 7,
    1,000,003; quantised all-reduce within its bound; identical results on all ranks."""
    for n in SIZES:
        _main_size(rank, world, check, n)


def _main_size(rank: int, world: int, check, n: int) -> None:
    comm = _bound_comm()
    from millkernels.ops.comm.quantized import error_bound, group_absmax

    exact_in = _known(rank, n, torch.float32)
    exact = _gather_inputs(exact_in.double()).sum(0)
    rand = torch.randn(n)
    rand_all = _gather_inputs(rand.double())
    for algo in ("nccl", "one_shot", "two_shot", "auto"):

        def exact_case(algo=algo):
            out = _poisoned_like(exact_in)
            got = comm.all_reduce(exact_in, algo=algo, out=out)
            assert got is out
            assert torch.equal(got.double(), exact), "integer sums must be exact"
            y = exact_in.clone()
            assert comm.all_reduce(y, algo=algo, out=y) is y  # in place
            assert torch.equal(y.double(), exact)
            assert torch.equal(exact_in, _known(rank, n, torch.float32)), "input modified"

        check(f"all_reduce exact {algo} n={n}", exact_case)

        def random_case(algo=algo):
            got = comm.all_reduce(rand, algo=algo)
            ref = rand_all.sum(0)
            tol = 1e-6 * rand_all.abs().sum(0) + 1e-30
            assert ((got.double() - ref).abs() <= tol).all(), "float32 sum out of tolerance"
            if algo in ("one_shot", "two_shot"):
                _same_everywhere(got, f"{algo} n={n}")

        check(f"all_reduce random {algo} n={n}", random_case)

    if n != 1_000_003:
        for dtype in (torch.bfloat16, torch.float16):

            def lowp(dtype=dtype):
                x = rand.to(dtype)
                xs = _gather_inputs(x.double())
                ref = xs.sum(0)
                one = comm.all_reduce(x, algo="one_shot")
                two = comm.all_reduce(x, algo="two_shot")
                # float32 accumulation in rank order, one rounding: both algos agree
                assert torch.equal(one, two), "one_shot and two_shot differ"
                u = 2.0**-8 if dtype == torch.bfloat16 else 2.0**-11
                bound = u * ref.abs() + 1e-6 * xs.abs().sum(0)
                assert ((one.double() - ref).abs() <= bound).all()
                _same_everywhere(one, f"{dtype} one_shot")

            check(f"all_reduce {dtype} one/two-shot n={n}", lowp)

        for op, fn in (("max", "amax"), ("min", "amin"), ("prod", "prod")):

            def other_op(op=op, fn=fn):
                got = comm.all_reduce(exact_in, op=op)
                ref = getattr(_gather_inputs(exact_in.double()), fn)(0)
                assert torch.equal(got.double(), ref)

            check(f"all_reduce op={op} n={n}", other_op)

    # COMM_TEST_BIG_QUANT="2:int8,fp8;3:int8": the 1M-element quantised cases per world
    per_world = dict(
        item.split(":") for item in os.environ.get("COMM_TEST_BIG_QUANT", "").split(";") if item
    )
    big_quant = per_world.get(str(world), "int8,fp8").split(",")
    for quant in ("int8", "fp8"):
        if n == 1_000_003 and quant not in big_quant:
            continue  # the interpreter's 1M-element quantisation costs ~3 s per rank
        dtypes = (torch.bfloat16,) if n == 1_000_003 else (torch.bfloat16, torch.float32)
        for dtype in dtypes:
            backends = ("auto",) if n == 1_000_003 else ("auto", "reference")

            def quant_case(quant=quant, dtype=dtype, backends=backends):
                x = (rand * (1 + 10 * (torch.arange(n) % 3 == 0))).to(dtype)
                xs = _gather_inputs(x.double())
                exact = xs.sum(0)
                amax = sum(group_absmax(xs[r], world) for r in range(world))
                bound = error_bound(amax, exact, quant, dtype)
                for backend in backends:
                    if backend == "reference":
                        os.environ["MILLKERNELS_BACKEND"] = "comm=reference"
                    try:
                        out = _poisoned_like(x)
                        got = comm.all_reduce(x, quant=quant, out=out)
                    finally:
                        os.environ.pop("MILLKERNELS_BACKEND", None)
                    err = (got.double() - exact).abs()
                    worst = (err / bound).max().item()
                    assert worst <= 1.0, f"{backend}: error {worst:.3f} x the stated bound"
                    _same_everywhere(got, f"quant {quant} {backend}")
                y = x.clone()
                comm.all_reduce(y, quant=quant, out=y)
                assert torch.equal(y, got), "in place differs from out of place"

            check(f"all_reduce quant={quant} {dtype} n={n}", quant_case)

    def gather_case(n=n):
        x = _known(rank, n, torch.float32)
        out = _poisoned_like(x, (world * n,))
        got = comm.all_gather(x, out=out)
        ref = torch.cat([_known(r, n, torch.float32) for r in range(world)])
        assert torch.equal(got, ref)
        buf = _poisoned_like(x, (world * n,))
        buf[rank * n : (rank + 1) * n] = x
        comm.all_gather(buf[rank * n : (rank + 1) * n], out=buf)  # in place
        assert torch.equal(buf, ref)
        x2 = _known(rank, 2 * n, torch.bfloat16).view(2, n)
        assert torch.equal(comm.all_gather(x2), torch.cat([
            _known(r, 2 * n, torch.bfloat16).view(2, n) for r in range(world)]))  # fmt: skip

    check(f"all_gather n={n}", gather_case)

    def scatter_case(n=n // world or 1):  # ~1M elements in all at the largest
        x = _known(rank, world * n, torch.float32)
        ref = sum(_known(r, world * n, torch.float64) for r in range(world))
        mine = ref[rank * n : (rank + 1) * n]
        got = comm.reduce_scatter(x, out=_poisoned_like(x, (n,)))
        assert torch.equal(got.double(), mine)
        y = x.clone()
        comm.reduce_scatter(y, out=y[rank * n : (rank + 1) * n])  # in place
        assert torch.equal(y[rank * n : (rank + 1) * n].double(), mine)
        got_max = comm.reduce_scatter(x.view(world, n), op="max")
        ref_max = torch.stack([_known(r, world * n, torch.float64) for r in range(world)])
        assert torch.equal(got_max.double().view(-1), ref_max.amax(0)[rank * n : (rank + 1) * n])

    check(f"reduce_scatter n={max(n // world, 1)}x{world}", scatter_case)

    def a2a_case(n=n // world or 1):
        x = _known(rank, world * n, torch.float32)
        got = comm.all_to_all(x, out=_poisoned_like(x))
        ref = torch.cat([_known(q, n, torch.float32, rank * n) for q in range(world)])
        assert torch.equal(got, ref)
        y = x.clone()
        comm.all_to_all(y, out=y)  # in place
        assert torch.equal(y, ref)

    check(f"all_to_all n={max(n // world, 1)}x{world}", a2a_case)

    def bcast_case(n=n):
        src = world - 1
        x = _known(rank, n, torch.float32)
        out = comm.broadcast(x, src=src, out=_poisoned_like(x))
        assert torch.equal(out, _known(src, n, torch.float32))
        assert torch.equal(x, _known(rank, n, torch.float32)), "out-of-place modified x"
        comm.broadcast(x, src=src)
        assert torch.equal(x, _known(src, n, torch.float32))

    check(f"broadcast n={n}", bcast_case)


def battery_errors(rank: int, world: int, check) -> None:
    """Bad input raises clear errors (locally, and on every rank in debug mode), and the group
    stays usable afterwards (nothing desynchronised, nothing hangs)."""
    import pytest

    from millkernels.dispatch import BackendUnavailable
    from millkernels.ops.comm.api import DEBUG_ENV
    from millkernels.ops.comm.capabilities import CommCall

    comm = _bound_comm()

    x = torch.ones(7)

    def local_errors():
        with pytest.raises(ValueError, match="x: a gloo group takes tensors on cpu"):
            comm.all_reduce(torch.ones(3, device="meta"))
        with pytest.raises(ValueError, match="quant"):
            comm.all_reduce(x, quant="int4")
        with pytest.raises(TypeError, match="x: quant='int8' takes"):
            comm.all_reduce(torch.ones(7, dtype=torch.int32), quant="int8")
        with pytest.raises(ValueError, match="algo"):
            comm.all_reduce(x, algo="ring")
        with pytest.raises(ValueError, match="algo"):
            comm.all_reduce(x, algo="one_shot", quant="fp8")
        with pytest.raises(ValueError, match="op"):
            comm.all_reduce(x, op="avg")
        with pytest.raises(ValueError, match="op"):
            comm.all_reduce(x, op="max", algo="two_shot")
        with pytest.raises(ValueError, match="quant_group"):
            comm.all_reduce(x, quant="int8", quant_group=100)
        with pytest.raises(ValueError, match="out: expected shape"):
            comm.all_reduce(x, out=torch.empty(8))
        with pytest.raises(TypeError, match="out: expected dtype"):
            comm.all_reduce(x, out=torch.empty(7, dtype=torch.float64))
        with pytest.raises(TypeError, match="x: expected a torch.Tensor"):
            comm.all_reduce([1.0, 2.0])
        with pytest.raises(ValueError, match="divisible by the group size"):
            comm.reduce_scatter(torch.ones(world * 3 + 1))
        with pytest.raises(ValueError, match="divisible by the group size"):
            comm.all_to_all(torch.ones(world * 3 + 1))
        with pytest.raises(ValueError, match="src"):
            comm.broadcast(x, src=world)
        with pytest.raises(TypeError, match="group"):
            comm.all_reduce(x, group="world")
        with pytest.raises(RuntimeError, match="no CUDA GPU|native extension"):
            comm.CustomAllReduce(None, max_bytes=1 << 20)
        # nothing above reached a collective: the group still works
        assert torch.equal(comm.all_reduce(torch.ones(3)), torch.full((3,), float(world)))

    check("local errors", local_errors)

    def custom_limits():
        from millkernels.ops.comm.custom_allreduce import check_custom_call

        big = torch.empty(1025, dtype=torch.float32)
        with pytest.raises(ValueError, match="over this CustomAllReduce's max_bytes=4096"):
            check_custom_call(big, "one_shot", 4096, 0)
        with pytest.raises(ValueError, match="over"):
            check_custom_call(big, "two_shot", 4096, 0)
        with pytest.raises(ValueError, match="expected a tensor on cuda"):
            check_custom_call(big, "auto", 4096, 0)  # auto: NCCL beyond max, then the device
        with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
            check_custom_call(big.to(torch.int32), "one_shot", 1 << 20, 0)
        # one_shot on CUDA tensors needs the IPC backend: not available here, named reason
        assert comm.TABLE.reason("cuda", CommCall(op="all_reduce", algo="one_shot", device="cuda",
                                  dtype="float32", nbytes=4, world=world))  # fmt: skip

    check("custom path limits", custom_limits)

    def debug_shapes():
        os.environ[DEBUG_ENV] = "1"
        try:
            with pytest.raises(ValueError, match="arguments differ") as e:
                comm.all_reduce(torch.ones(5 + rank))
            assert "rank 0: float32[5]" in str(e.value) and "rank 1: float32[6]" in str(e.value)
            with pytest.raises(ValueError, match="arguments differ"):
                comm.all_gather(torch.ones(4, dtype=torch.float32 if rank else torch.float16))
            with pytest.raises(ValueError, match="arguments differ"):
                comm.all_reduce(torch.ones(4), algo="two_shot" if rank else "one_shot")
            # rank 0's call is invalid: it raises its own error, the others say so
            bad = torch.ones(4, dtype=torch.int32 if rank == 0 else torch.float32)
            with pytest.raises((TypeError, ValueError)) as e:
                comm.all_reduce(bad, quant="int8")
            if rank:
                assert "rank(s) [0]" in str(e.value)
            # an agreeing call passes the check and runs
            assert torch.equal(comm.all_reduce(torch.ones(3)), torch.full((3,), float(world)))
        finally:
            os.environ.pop(DEBUG_ENV, None)

    check("debug mode: differing shapes, dtypes, options", debug_shapes)

    def backend_unavailable():
        os.environ["MILLKERNELS_BACKEND"] = "comm=cuda"
        try:
            with pytest.raises(BackendUnavailable, match="cuda"):
                comm.all_reduce(x, quant="int8")
        finally:
            os.environ.pop("MILLKERNELS_BACKEND", None)

    check("forced backend that cannot serve", backend_unavailable)


def battery_bench(rank: int, world: int, check) -> None:
    """The benchmark's rows: #wrong 0 for every op, busbw = algbw x factor."""

    from millkernels.bench.suites import comm as bench

    for op in bench.OPS:
        for dtype in ("float", "bfloat16"):

            def case(op=op, dtype=dtype):
                s = bench.Settings(op=op, min_bytes=8, max_bytes=4096, factor=8, dtype=dtype,
                                   iters=2, warmup=1, root=world - 1)  # fmt: skip
                rows = bench.run_sizes(s, _G, "cpu")
                assert rows, "no rows"
                for r in rows:
                    assert r["wrong"] == 0 and r["inplace_wrong"] in (0, None), r
                    f = bench.spec(op).bus_factor(world)
                    assert abs(r["busbw"] - r["algbw"] * f) <= 1e-9 * r["busbw"] + 1e-12
                    assert r["bytes"] % (world if op not in ("all_reduce", "broadcast") else 1) == 0

            check(f"bench {op} {dtype}", case)

    for quant in ("int8", "fp8"):

        def qcase(quant=quant):
            s = bench.Settings(op="all_reduce", min_bytes=512, max_bytes=4096, factor=8,
                               dtype="bfloat16", quant=quant, iters=1, warmup=0)  # fmt: skip
            rows = bench.run_sizes(s, _G, "cpu")
            assert all(r["wrong"] == 0 and r["inplace_wrong"] == 0 for r in rows), rows

        check(f"bench quant {quant}", qcase)

    def wrong_detected():
        # A collective that returns a wrong result must show up in #wrong.
        from millkernels.ops.comm import api

        real = api.all_gather

        def broken(x, *, group=None, out=None):
            real(x, group=group, out=out)
            out[0] += 1
            return out

        api.all_gather = broken
        try:
            s = bench.Settings(op="all_gather", min_bytes=64, max_bytes=64, iters=1, warmup=0)
            rows = bench.run_sizes(s, _G, "cpu")
        finally:
            api.all_gather = real
        assert rows[0]["wrong"] == world and rows[0]["inplace_wrong"] == world, rows

    check("bench counts wrong results", wrong_detected)


# ------------------------------------------------------------------- GPU batteries


def _ipc_cases(rank: int, world: int, check, reduce_fn, label: str) -> None:
    """The IPC all-reduce against the fixed-order reference, bit for bit: one-shot and
    two-shot, fp16/bf16/fp32, sizes not multiples of 16 bytes, unaligned tensors, in place."""
    from millkernels.ops.comm.reference import _fixed_order_sum

    dev = torch.device("cuda", torch.cuda.current_device())
    for algo in ("one_shot", "two_shot"):
        for dtype in (torch.float16, torch.bfloat16, torch.float32):
            for n in (1, 7, 1000, 65_537, (1 << 20) // torch.empty((), dtype=dtype).element_size()):

                def case(algo=algo, dtype=dtype, n=n):
                    x = torch.randn(n, device=dev).to(dtype)
                    parts = _gather_inputs(x.cpu())
                    ref = _fixed_order_sum(parts, dtype)
                    out = torch.full_like(x, float("nan"))
                    got = reduce_fn(x, out=out, algo=algo)
                    assert torch.equal(got.cpu(), ref), f"{label}: differs from the reference"
                    _same_everywhere(got.cpu(), f"{label} {algo}")
                    y = x.clone()
                    reduce_fn(y, out=y, algo=algo)  # in place
                    assert torch.equal(y.cpu(), ref)
                    if n > 1:  # unaligned (2- or 4-byte offset) input and output
                        buf = torch.empty(n + 1, dtype=dtype, device=dev)
                        buf[1:] = x
                        ob = torch.empty(n + 1, dtype=dtype, device=dev)
                        reduce_fn(buf[1:], out=ob[1:], algo=algo)
                        assert torch.equal(ob[1:].cpu(), ref)

                check(f"{label} {algo} {dtype} n={n}", case)


def battery_gpu_ipc(rank: int, world: int, check) -> None:
    """CustomAllReduce between processes (on one GPU or one each), gloo for the handles."""
    import pytest

    from millkernels.ops.comm import CustomAllReduce

    car = CustomAllReduce(None, max_bytes=1 << 20)
    try:
        _ipc_cases(rank, world, check, car.all_reduce, "ipc")

        def limits():
            big = torch.ones((1 << 20) // 4 + 1, device="cuda")
            with pytest.raises(ValueError, match="max_bytes"):
                car.all_reduce(big, algo="one_shot")
            got = car.all_reduce(big)  # auto: the group's all_reduce beyond max_bytes
            assert torch.equal(got.cpu(), torch.full(big.shape, float(world)))

        check("ipc over max_bytes", limits)

        def graph():
            dev = torch.device("cuda", torch.cuda.current_device())
            xs = [torch.empty(n, device=dev, dtype=torch.bfloat16) for n in (7, 4099)]
            outs = [torch.empty_like(x) for x in xs]
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up outside capture
                for x, o, a in zip(xs, outs, ("one_shot", "two_shot"), strict=True):
                    x.normal_()
                    car.all_reduce(x, out=o, algo=a)
            torch.cuda.current_stream().wait_stream(side)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                for x, o, a in zip(xs, outs, ("one_shot", "two_shot"), strict=True):
                    car.all_reduce(x, out=o, algo=a)
            from millkernels.ops.comm.reference import _fixed_order_sum

            for _ in range(3):  # replays with fresh inputs: the call counter lives on the GPU
                for x in xs:
                    x.copy_(torch.randn(x.numel(), device=dev))
                g.replay()
                torch.cuda.synchronize()
                for x, o in zip(xs, outs, strict=True):
                    assert torch.equal(o.cpu(), _fixed_order_sum(_gather_inputs(x.cpu()), x.dtype))

        check("ipc under CUDA graph capture", graph)
    finally:
        car.close()
    assert car.closed


def battery_gpu_api(rank: int, world: int, check) -> None:
    """One GPU per rank, NCCL group: comm.all_reduce(algo=...) through the registered
    CustomAllReduce, auto choosing it, and NCCL beside it."""
    from millkernels.ops import comm

    with comm.CustomAllReduce(None, max_bytes=1 << 20):

        def through_api(x, *, out, algo):
            return comm.all_reduce(x, out=out, algo=algo)

        _ipc_cases(rank, world, check, through_api, "api")

        def auto_and_nccl():
            x = torch.randn(4096, device="cuda", dtype=torch.bfloat16)
            ref = comm.all_reduce(x, algo="one_shot")
            assert torch.equal(comm.all_reduce(x), ref)  # auto picks one-shot at 8 KB
            nccl = comm.all_reduce(x, algo="nccl")
            assert ((nccl.float() - ref.float()).abs() <= 0.02 * ref.float().abs() + 0.05).all()

        check("api auto and nccl", auto_and_nccl)
