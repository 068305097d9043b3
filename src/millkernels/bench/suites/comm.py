"""The collective benchmark behind ``millkernels bench comm`` (nccl-tests' method and columns).

Per message size S (bytes, as nccl-tests defines it: the whole buffer for all-reduce and
broadcast, the whole gathered / scattered array for all-gather, reduce-scatter and
all-to-all), each rank times ``-n`` calls after ``-w`` warm-up calls, out of place and in
place; the time per call is averaged over the ranks. Then::

    algbw = S / t                (GB/s, 1 GB = 1e9 B)
    busbw = algbw * factor       all_reduce 2(n-1)/n; all_gather, reduce_scatter,
                                 all_to_all (n-1)/n; broadcast 1

``#wrong`` comes from a separate call on inputs whose result is known exactly: rank r's
element i is ((r + i) mod 7) + 1 (1 or 2 for prod), so every sum, max, min, gather and
exchange is an exact small integer in every dtype; for the quantised all-reduce an element
is wrong when it is outside the stated error bound (quantized.error_bound). The counts are
summed over ranks. The average bus bandwidth is the mean of every busbw printed (out of place
and in place), as nccl-tests prints it.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "broadcast")
ROOTED = ("broadcast",)

#: nccl-tests' type names and torch's, to torch dtypes.
DTYPES = {
    "float": torch.float32, "float32": torch.float32, "half": torch.float16,
    "float16": torch.float16, "bfloat16": torch.bfloat16, "double": torch.float64,
    "float64": torch.float64, "int": torch.int32, "int32": torch.int32, "int8": torch.int8,
    "uint8": torch.uint8, "int64": torch.int64,
}  # fmt: skip
_NCCL_TYPE_NAMES = {
    torch.float32: "float", torch.float16: "half", torch.bfloat16: "bfloat16",
    torch.float64: "double", torch.int32: "int32", torch.int8: "int8", torch.uint8: "uint8",
    torch.int64: "int64",
}  # fmt: skip


def bus_factor(op: str, world: int) -> float:
    """nccl-tests' bus bandwidth factor of ``op`` on ``world`` ranks."""
    if op == "all_reduce":
        return 2.0 * (world - 1) / world
    if op in ("all_gather", "reduce_scatter", "all_to_all"):
        return (world - 1) / world
    if op == "broadcast":
        return 1.0
    raise ValueError(f"op: expected one of {OPS}, got {op!r}")


def bandwidths(op: str, nbytes: int, world: int, time_us: float) -> tuple[float, float]:
    """(algbw, busbw) in GB/s (1e9 B/s) for ``nbytes`` (nccl-tests' S) moved in ``time_us``."""
    if time_us <= 0:
        return math.inf, math.inf
    algbw = nbytes / (time_us * 1e-6) / 1e9
    return algbw, algbw * bus_factor(op, world)


def parse_size(text: str) -> int:
    """nccl-tests' sizes: a number with an optional K, M or G suffix (powers of 1024)."""
    t = str(text).strip().upper().removesuffix("B")
    mult = 1
    if t and t[-1] in "KMG":
        mult = 1024 ** ("KMG".index(t[-1]) + 1)
        t = t[:-1]
    try:
        value = int(float(t) * mult)
    except ValueError:
        raise ValueError(
            f"size: expected a number with an optional K/M/G suffix, got {text!r}"
        ) from None
    if value < 0:
        raise ValueError(f"size: expected >= 0, got {text!r}")
    return value


def size_list(min_bytes: int, max_bytes: int, factor: float, step: int = 0) -> list[int]:
    """min, min*f, ... <= max (or min, min+step, ... when ``step`` > 0 and f == 1)."""
    if max_bytes < min_bytes:
        raise ValueError(f"-e ({max_bytes}) must be >= -b ({min_bytes})")
    if factor < 1 or (factor == 1 and step <= 0):
        raise ValueError("-f must be > 1 (or -f 1 with -i STEP > 0)")
    out, s = [], min_bytes
    while s <= max_bytes:
        out.append(s)
        nxt = int(s * factor) if factor > 1 else s + step
        s = nxt if nxt > s else s + max(step, 1)
    return out


def counts(op: str, size: int, world: int, elsize: int) -> tuple[int, int]:
    """(count column, S in bytes) for a requested size, rounded down as nccl-tests does.

    count: elements per rank the op is called with (all_reduce / broadcast: the buffer;
    all_gather: sent per rank; reduce_scatter: received per rank; all_to_all: per peer)."""
    total = size // elsize
    if op in ("all_reduce", "broadcast"):
        return total, total * elsize
    per = total // world
    return per, per * world * elsize


# ------------------------------------------------------------------ known inputs


def known_input(rank: int, n: int, dtype: torch.dtype, device, start: int = 0, redop="sum"):
    """Rank ``rank``'s elements ``start .. start+n-1``: ((rank + i) mod 7) + 1, or for prod
    ((rank + i) mod 2) + 1 (so 8 ranks multiply to at most 256)."""
    i = torch.arange(start, start + n, dtype=torch.int64, device=device)
    m = 2 if redop == "prod" else 7
    return ((rank + i) % m + 1).to(dtype)


def _reduce_known(world: int, n: int, start: int, redop: str, device) -> torch.Tensor:
    vals = torch.stack(
        [known_input(r, n, torch.float64, device, start, redop) for r in range(world)]
    )
    if redop == "sum":
        return vals.sum(0)
    if redop == "max":
        return vals.amax(0)
    if redop == "min":
        return vals.amin(0)
    return vals.prod(0)


# ------------------------------------------------------------------------ one size


@dataclass
class Settings:
    """The parsed command line (see bench_cli)."""

    op: str = "all_reduce"
    min_bytes: int = 8
    max_bytes: int = 32 * 2**20
    factor: float = 2.0
    step: int = 0
    dtype: str = "float"
    redop: str = "sum"
    root: int = 0
    algo: str = "auto"
    quant: str | None = None
    iters: int = 20
    warmup: int = 5
    graph: bool = False
    check: bool = True
    fmt: str = "table"
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Case:
    """Buffers and calls for one size."""

    op: str
    count: int
    nbytes: int
    run_oop: Callable[[], Any]
    run_ip: Callable[[], Any] | None
    reset: Callable[[], None]
    wrong_oop: Callable[[], int]
    wrong_ip: Callable[[], int] | None


def build_case(s: Settings, size: int, group, rank: int, world: int, device) -> Case | None:
    """Buffers for ``size`` bytes and the calls to time and check (None: rounds to 0 B)."""
    from millkernels.ops.comm import api
    from millkernels.ops.comm.quantized import error_bound, group_absmax

    dtype = DTYPES[s.dtype]
    elsize = torch.empty((), dtype=dtype).element_size()
    count, nbytes = counts(s.op, size, world, elsize)
    if count == 0:
        return None
    op = s.op
    n_in = {"all_gather": count, "reduce_scatter": count * world, "all_to_all": count * world}
    n_in = n_in.get(op, count)
    x = torch.empty(n_in, dtype=dtype, device=device)
    if op == "all_gather":
        out = torch.empty(count * world, dtype=dtype, device=device)
        ip_in = out[rank * count : (rank + 1) * count]
    elif op == "reduce_scatter":
        out = torch.empty(count, dtype=dtype, device=device)
        ip_buf = torch.empty(count * world, dtype=dtype, device=device)
    else:
        out = torch.empty(n_in, dtype=dtype, device=device)
    src = s.root

    def fill() -> None:
        x.copy_(known_input(rank, n_in, dtype, device, 0, s.redop))

    def reset() -> None:
        fill()
        if op == "all_gather":
            ip_in.copy_(x)
        elif op == "reduce_scatter":
            ip_buf.copy_(x)
        elif op != "all_to_all":
            out.copy_(x)

    if op == "all_reduce":
        kw = dict(group=group, op=s.redop, algo=s.algo, quant=s.quant)
        run_oop = lambda: api.all_reduce(x, out=out, **kw)
        run_ip = lambda: api.all_reduce(out, out=out, **kw)
        expected = _reduce_known(world, count, 0, s.redop, device)
    elif op == "all_gather":
        run_oop = lambda: api.all_gather(x, group=group, out=out)
        run_ip = lambda: api.all_gather(ip_in, group=group, out=out)
        expected = torch.cat([known_input(r, count, torch.float64, device) for r in range(world)])
    elif op == "reduce_scatter":
        run_oop = lambda: api.reduce_scatter(x, group=group, op=s.redop, out=out)
        ip_out = ip_buf[rank * count : (rank + 1) * count]
        run_ip = lambda: api.reduce_scatter(ip_buf, group=group, op=s.redop, out=ip_out)
        expected = _reduce_known(world, count, rank * count, s.redop, device)
    elif op == "all_to_all":
        run_oop = lambda: api.all_to_all(x, group=group, out=out)
        run_ip = None  # like nccl-tests' alltoall: in place is not offered
        expected = torch.cat(
            [known_input(q, count, torch.float64, device, rank * count) for q in range(world)]
        )
    else:
        run_oop = lambda: api.broadcast(x, src=src, group=group, out=out)
        run_ip = lambda: api.broadcast(out, src=src, group=group)
        expected = known_input(src, count, torch.float64, device)

    if s.quant:
        amax = sum(
            group_absmax(known_input(q, count, torch.float32, device), world) for q in range(world)
        )
        bound = error_bound(amax, expected, s.quant, dtype)
    else:
        bound = None

    def wrong(result_fn: Callable[[], torch.Tensor]) -> Callable[[], int]:
        def count_wrong() -> int:
            reset()
            got = result_fn().double()
            if bound is None:
                return int((got != expected).sum().item())
            return int(((got - expected).abs() > bound).sum().item())

        return count_wrong

    def ip_result() -> torch.Tensor:
        run_ip()
        if op == "reduce_scatter":
            return ip_buf[rank * count : (rank + 1) * count]
        return out

    def oop_result() -> torch.Tensor:
        run_oop()
        return out

    return Case(
        op, count, nbytes, run_oop, run_ip, reset, wrong(oop_result),
        wrong(ip_result) if run_ip else None,
    )  # fmt: skip


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], s: Settings, group, device) -> float:
    """Microseconds per call on this rank: ``s.warmup`` calls, then ``s.iters`` timed (in a
    CUDA graph with ``s.graph``); a barrier first so ranks start together."""
    for _ in range(s.warmup):
        fn()
    _sync(device)
    if s.graph:
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            fn()  # one more warm-up on the capture stream
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(s.iters):
                fn()
        _sync(device)
        dist.barrier(group=group)
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) * 1e3 / s.iters
    dist.barrier(group=group)
    if torch.device(device).type == "cuda":
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(s.iters):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) * 1e3 / s.iters
    t0 = time.perf_counter()
    for _ in range(s.iters):
        fn()
    return (time.perf_counter() - t0) * 1e6 / s.iters


def _rank_mean(value: float, group, device) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, group=group)
    return float(t.item()) / dist.get_world_size(group)


def _rank_sum(value: int, group, device) -> int:
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, group=group)
    return int(t.item())


def make_row(
    s: Settings, world: int, nbytes: int, count: int, oop: tuple[float, int],
    ip: tuple[float, int] | None,
) -> dict[str, Any]:  # fmt: skip
    """One result row from the rank-averaged times (us) and summed wrong counts."""
    algbw, busbw = bandwidths(s.op, nbytes, world, oop[0])
    row: dict[str, Any] = {
        "op": s.op,
        "bytes": nbytes,
        "count": count,
        "type": _NCCL_TYPE_NAMES.get(DTYPES[s.dtype], s.dtype),
        "redop": s.redop if s.op in ("all_reduce", "reduce_scatter") else "none",
        "root": s.root if s.op in ROOTED else -1,
        "world": world,
        "algo": s.algo if s.op == "all_reduce" else "nccl",
        "quant": s.quant,
        "graph": s.graph,
        "time_us": oop[0],
        "algbw": algbw,
        "busbw": busbw,
        "wrong": oop[1],
    }
    if ip is not None:
        ip_alg, ip_bus = bandwidths(s.op, nbytes, world, ip[0])
        row.update(
            inplace_time_us=ip[0], inplace_algbw=ip_alg, inplace_busbw=ip_bus, inplace_wrong=ip[1]
        )
    else:
        row.update(inplace_time_us=None, inplace_algbw=None, inplace_busbw=None, inplace_wrong=None)
    return row


def run_sizes(
    s: Settings, group, device, log: Callable[[str], None] = lambda m: None
) -> list[dict[str, Any]]:
    """Every size of ``s``: time and check, rows as dicts (identical on every rank)."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    rows = []
    for size in size_list(s.min_bytes, s.max_bytes, s.factor, s.step):
        case = build_case(s, size, group, rank, world, device)
        if case is None:
            log(f"# size {size} B rounds to 0 elements for {s.op} on {world} ranks: skipped")
            continue
        case.reset()
        t_oop = _rank_mean(time_call(case.run_oop, s, group, device), group, device)
        w_oop = _rank_sum(case.wrong_oop(), group, device) if s.check else 0
        ip = None
        if case.run_ip is not None:
            case.reset()
            t_ip = _rank_mean(time_call(case.run_ip, s, group, device), group, device)
            w_ip = _rank_sum(case.wrong_ip(), group, device) if s.check else 0
            ip = (t_ip, w_ip)
        rows.append(make_row(s, world, case.nbytes, case.count, (t_oop, w_oop), ip))
    return rows


def average_busbw(rows: list[dict[str, Any]]) -> float:
    """Mean of every out-of-place and in-place busbw (as nccl-tests' "Avg bus bandwidth")."""
    vals = [r["busbw"] for r in rows] + [
        r["inplace_busbw"] for r in rows if r.get("inplace_busbw") is not None
    ]
    vals = [v for v in vals if math.isfinite(v)]
    return sum(vals) / len(vals) if vals else 0.0


# -------------------------------------------------------------------------- output

_HEAD = (
    f"#{'':>54}{'out-of-place':>31}{'in-place':>33}\n"
    f"#{'size':>11} {'count':>12} {'type':>8} {'redop':>6} {'root':>5}"
    f" {'time':>9} {'algbw':>7} {'busbw':>7} {'#wrong':>6}"
    f" {'time':>9} {'algbw':>7} {'busbw':>7} {'#wrong':>6}\n"
    f"#{'(B)':>11} {'(elements)':>12} {'':>8} {'':>6} {'':>5}"
    f" {'(us)':>9} {'(GB/s)':>7} {'(GB/s)':>7} {'':>6}"
    f" {'(us)':>9} {'(GB/s)':>7} {'(GB/s)':>7} {'':>6}"
)


def format_row(r: dict[str, Any]) -> str:
    """One table line in nccl-tests' layout."""
    line = (
        f" {r['bytes']:>11} {r['count']:>12} {r['type']:>8} {r['redop']:>6} {r['root']:>5}"
        f" {r['time_us']:>9.2f} {r['algbw']:>7.2f} {r['busbw']:>7.2f} {r['wrong']:>6}"
    )
    if r.get("inplace_time_us") is None:
        return line + f" {'N/A':>9} {'N/A':>7} {'N/A':>7} {'N/A':>6}"
    return line + (
        f" {r['inplace_time_us']:>9.2f} {r['inplace_algbw']:>7.2f}"
        f" {r['inplace_busbw']:>7.2f} {r['inplace_wrong']:>6}"
    )


def header(s: Settings, group, device) -> str:
    """nccl-tests-style preamble: settings and one line per rank (gathered)."""
    world = dist.get_world_size(group)
    mine = (
        dist.get_rank(group),
        socket.gethostname(),
        os.getpid(),
        str(device),
        _device_name(device),
    )
    everyone: list[Any] = [None] * world
    dist.all_gather_object(everyone, mine, group=group)
    lines = [
        f"# millkernels comm bench: op {s.op} algo {s.algo} quant {s.quant or 'none'} "
        f"dtype {s.dtype} redop {s.redop}",
        f"#  minBytes {s.min_bytes} maxBytes {s.max_bytes} step: {s.factor}(factor) "
        f"warmup iters: {s.warmup} iters: {s.iters} cudagraph: {int(s.graph)} "
        f"validation: {int(s.check)} backend: {dist.get_backend(group)}",
        "#",
        "# Using devices",
    ]
    for rank, host, pid, dev, name in everyone:
        lines.append(f"#  Rank {rank:>3} Pid {pid:>7} on {host:>10} device {dev} {name}")
    return "\n".join(lines)


def _device_name(device) -> str:
    d = torch.device(device)
    if d.type == "cuda":
        return torch.cuda.get_device_name(d)
    import platform

    return platform.processor() or platform.machine()


def format_table(rows: list[dict[str, Any]]) -> str:
    """The table body plus nccl-tests' closing lines."""
    wrong = sum(r["wrong"] + (r.get("inplace_wrong") or 0) for r in rows)
    lines = [_HEAD, *(format_row(r) for r in rows)]
    lines.append(f"# Out of bounds values : {wrong} {'OK' if wrong == 0 else 'FAILED'}")
    lines.append(f"# Avg bus bandwidth    : {average_busbw(rows):.6g}")
    return "\n".join(lines)


def format_json(rows: list[dict[str, Any]]) -> str:
    return json.dumps(rows, indent=1)
