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


def bandwidths(op: str, nbytes: int, world: int, time_us: float) -> tuple[float, float]:
    """(algbw, busbw) in GB/s (1e9 B/s) for ``nbytes`` (nccl-tests' S) moved in ``time_us``."""
    if time_us <= 0:
        return math.inf, math.inf
    algbw = nbytes / (time_us * 1e-6) / 1e9
    return algbw, algbw * spec(op).bus_factor(world)


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


# ------------------------------------------------------------------ the collectives

#: Where a buffer's part lives: the whole buffer, or this rank's block of ``count`` elements.
WHOLE, RANK_BLOCK = "whole", "rank"


@dataclass(frozen=True)
class CollSpec:
    """One collective as the benchmark runs and checks it, in nccl-tests' conventions.

    ``count`` (the table's count column) is the elements per rank the op is called with:
    the whole buffer for all_reduce and broadcast, what one rank sends for all_gather, what
    one rank receives for reduce_scatter, what goes to one peer for all_to_all. S (bytes) is
    the whole buffer, or for the others the whole gathered / scattered array."""

    op: str
    bus: Callable[[int], float]  # nccl-tests' bus bandwidth factor on ``world`` ranks
    per_rank: bool  # S = count * world elements (else S = count elements)
    in_world: bool  # the input holds count * world elements (else count)
    out_world: bool  # the output holds count * world elements (else count)
    #: where the in-place call's input goes and its result lands (None: not offered)
    in_place: tuple[str, str] | None
    reduces: bool  # takes a reduction (-o)
    rooted: bool  # takes a root (-r)
    call: Callable[..., Any]  # (api, settings, group, input, out) -> result
    #: (rank, world, count, redop, root, device) -> float64 result rank ``rank`` must get
    expect: Callable[..., torch.Tensor]

    def bus_factor(self, world: int) -> float:
        return self.bus(world)

    def counts(self, size: int, world: int, elsize: int) -> tuple[int, int]:
        """(count column, S in bytes) for a requested size, rounded down as nccl-tests does."""
        total = size // elsize
        if not self.per_rank:
            return total, total * elsize
        per = total // world
        return per, per * world * elsize

    def lengths(self, count: int, world: int) -> tuple[int, int]:
        """Elements of the input and of the output."""
        return (count * world if self.in_world else count), (
            count * world if self.out_world else count
        )

    def fill_redop(self, redop: str) -> str:
        """The reduction the known inputs are made for (a collective without one: sum)."""
        return redop if self.reduces else "sum"

    def expected(self, s: Settings, rank: int, world: int, count: int, device) -> torch.Tensor:
        return self.expect(rank, world, count, self.fill_redop(s.redop), s.root, device)

    @staticmethod
    def count_wrong(got: torch.Tensor, expected: torch.Tensor, bound: Any = None) -> int:
        """Elements of ``got`` that differ from ``expected`` (beyond ``bound`` when given)."""
        diff = got.double() - expected
        if bound is None:
            return int((diff != 0).sum().item())
        return int((diff.abs() > bound).sum().item())


def _block(buf: torch.Tensor, where: str, rank: int, count: int) -> torch.Tensor:
    return buf if where == WHOLE else buf[rank * count : (rank + 1) * count]


def _blocks(world: int, count: int, start: int, redop: str, device) -> torch.Tensor:
    """Every rank's known elements ``start .. start+count-1``, rank after rank."""
    return torch.cat(
        [known_input(q, count, torch.float64, device, start, redop) for q in range(world)]
    )


SPECS: dict[str, CollSpec] = {
    c.op: c
    for c in (
        CollSpec(
            "all_reduce", lambda n: 2.0 * (n - 1) / n, per_rank=False, in_world=False,
            out_world=False, in_place=(WHOLE, WHOLE), reduces=True, rooted=False,
            call=lambda api, s, g, x, out: api.all_reduce(
                x, out=out, group=g, op=s.redop, algo=s.algo, quant=s.quant
            ),
            expect=lambda rank, world, count, redop, root, dev: _reduce_known(
                world, count, 0, redop, dev
            ),
        ),
        CollSpec(
            "all_gather", lambda n: (n - 1) / n, per_rank=True, in_world=False,
            out_world=True, in_place=(RANK_BLOCK, WHOLE), reduces=False, rooted=False,
            call=lambda api, s, g, x, out: api.all_gather(x, group=g, out=out),
            expect=lambda rank, world, count, redop, root, dev: _blocks(
                world, count, 0, redop, dev
            ),
        ),
        CollSpec(
            "reduce_scatter", lambda n: (n - 1) / n, per_rank=True, in_world=True,
            out_world=False, in_place=(WHOLE, RANK_BLOCK), reduces=True, rooted=False,
            call=lambda api, s, g, x, out: api.reduce_scatter(x, group=g, op=s.redop, out=out),
            expect=lambda rank, world, count, redop, root, dev: _reduce_known(
                world, count, rank * count, redop, dev
            ),
        ),
        CollSpec(
            "all_to_all", lambda n: (n - 1) / n, per_rank=True, in_world=True,
            out_world=True, in_place=None,  # as nccl-tests' alltoall: no in-place variant
            reduces=False, rooted=False,
            call=lambda api, s, g, x, out: api.all_to_all(x, group=g, out=out),
            expect=lambda rank, world, count, redop, root, dev: _blocks(
                world, count, rank * count, redop, dev
            ),
        ),
        CollSpec(
            "broadcast", lambda n: 1.0, per_rank=False, in_world=False, out_world=False,
            in_place=(WHOLE, WHOLE), reduces=False, rooted=True,
            call=lambda api, s, g, x, out: api.broadcast(x, src=s.root, group=g, out=out),
            expect=lambda rank, world, count, redop, root, dev: known_input(
                root, count, torch.float64, dev, 0, redop
            ),
        ),
    )
}  # fmt: skip
OPS = tuple(SPECS)


def spec(op: str) -> CollSpec:
    """The :class:`CollSpec` of collective ``op``; ValueError naming the known ones."""
    if op not in SPECS:
        raise ValueError(f"op: expected one of {OPS}, got {op!r}")
    return SPECS[op]


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

    coll = spec(s.op)
    dtype = DTYPES[s.dtype]
    count, nbytes = coll.counts(size, world, torch.empty((), dtype=dtype).element_size())
    if count == 0:
        return None
    n_in, n_out = coll.lengths(count, world)
    redop = coll.fill_redop(s.redop)
    known = known_input(rank, n_in, dtype, device, 0, redop)
    x = torch.empty_like(known)
    out = torch.empty(n_out, dtype=dtype, device=device)
    ip_in = ip_out = None
    if coll.in_place is not None:  # the output doubles as the in-place buffer when it fits
        ip = out if n_out >= n_in else torch.empty(n_in, dtype=dtype, device=device)
        ip_in, ip_out = (_block(ip, where, rank, count) for where in coll.in_place)

    def reset() -> None:
        x.copy_(known)
        if ip_in is not None:
            ip_in.copy_(known)

    def run_oop() -> Any:
        return coll.call(api, s, group, x, out)

    def run_ip() -> Any:
        return coll.call(api, s, group, ip_in, ip_out)

    expected = coll.expected(s, rank, world, count, device)
    bound = None
    if s.quant:
        amaxes = [
            group_absmax(known_input(q, count, torch.float32, device, 0, redop), world)
            for q in range(world)
        ]
        bound = error_bound(sum(amaxes[1:], amaxes[0]), expected, s.quant, dtype)

    def wrong(run: Callable[[], Any], result: torch.Tensor) -> Callable[[], int]:
        def count_wrong() -> int:
            reset()
            run()
            return coll.count_wrong(result, expected, bound)

        return count_wrong

    if ip_out is None:
        return Case(s.op, count, nbytes, run_oop, None, reset, wrong(run_oop, out), None)
    return Case(
        s.op, count, nbytes, run_oop, run_ip, reset, wrong(run_oop, out), wrong(run_ip, ip_out)
    )


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
        "redop": s.redop if spec(s.op).reduces else "none",
        "root": s.root if spec(s.op).rooted else -1,
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
        if case.run_ip is not None and case.wrong_ip is not None:  # set together
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
