"""Suite ``collectives``: the comm benchmark (``millkernels bench comm``) inside ``bench all``.

A collective needs several processes, so the suite launches them: one ``torchrun --standalone
--nproc-per-node N`` run of this module, whose ranks initialise the process group once and
call :func:`~millkernels.bench.suites.comm_cli.comm_bench_main` (the nccl-tests-style benchmark,
``--format json``) once per case. Each rank appends one JSON line per case to a file in a
temporary folder; the suite reads them and turns the benchmark's rows into bench rows:
``median_us`` = nccl-tests' out-of-place time (the mean of ``-n`` calls, averaged over the
ranks: no spread is measured, so p20 = p80 = median), ``gbps`` = algbw, and ``extra`` holds
``algbw``, ``busbw``, ``wrong`` and the in-place columns. A case's baseline is NCCL (gloo where
NCCL cannot run) measured in the same launch at the same size: ``ratio_to_baseline`` is the
baseline's time over the case's time (> 1: faster than the baseline).

What the machine allows:

- **N >= 2 GPUs**: N ranks, one per GPU, NCCL. Cases: ``nccl`` (bf16, the baseline),
  ``ipc:one_shot`` / ``ipc:two_shot`` (the CUDA IPC kernels of ``CustomAllReduce``),
  ``quant:int8`` / ``quant:fp8`` (the quantised all-reduce on bf16, vs NCCL bf16), and
  ``nccl+graph`` / ``ipc:one_shot+graph`` (calls replayed from a CUDA graph: the kernels'
  own time, without launch cost).
- **1 GPU**: 2 ranks share GPU 0. NCCL refuses that ("Duplicate GPU detected", ncclInvalidUsage,
  NCCL >= 2.5), so the group is gloo: the baseline ``gloo`` all-reduces CUDA tensors through
  host memory, the IPC kernels run between the two processes on the one device (IPC handles
  between processes on one device work), and the quantised all-reduce is left out (on CUDA
  tensors it needs NCCL). The two processes time-share the GPU (no MPS), so the kernel times
  include context switches: this records what one GPU can show, not a link speed.
- **No GPU**: 2 gloo ranks on the CPU, small sizes; ``gloo:one_shot`` / ``gloo:two_shot`` are
  the algorithms written with torch.distributed collectives and ``quant:*`` uses the reference
  quantisation (interpreted Triton's timing means nothing). A smoke test of the plumbing.

Target rows (op ``all_reduce_target``): one-shot <= 8 us at every size <= 64 KB on
8 H100s (checked with ``ctx.check`` on 8 Hopper GPUs, else the row says "not applicable on this
machine: ..."), and quantised all-reduce >= 1.6x NCCL bf16 at >= 8 MB across nodes (this suite
runs on one node, so always "not applicable"; the row carries the ratio measured here).

Every case's results are checked (``#wrong`` must be 0). The launch has a timeout (option
``comm.timeout_s``); a launch that hangs is stopped (torchrun, then its workers by pid) and
every case without results becomes a failed row (``median_us`` NaN, ``extra.status``
"failed") and a failed check. Options: ``comm.ranks``, ``comm.timeout_s``, ``comm.cases``
(case names, see :func:`plan`).

Named ``collectives`` because ``millkernels bench comm`` is the per-rank benchmark itself.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from millkernels.bench.registry import register_suite
from millkernels.procs import read_tail, run_in_group

if TYPE_CHECKING:
    from millkernels.bench.context import BenchContext
    from millkernels.bench.rows import Row

SUITE = "collectives"
MODULE = "millkernels.bench.suites.collectives"
DTYPE = "bfloat16"  # the benchmark's -d; rows say "bf16"

ONE_SHOT_TARGET_US = 8.0  # target: one-shot <= 8 us at <= 64 KB on 8 H100s over NVLink
ONE_SHOT_TARGET_BYTES = 64 * 1024
ONE_SHOT_TARGET_RANKS = 8
QUANT_TARGET_RATIO = 1.6  # target: quantised >= 1.6x NCCL bf16 at >= 8 MB across nodes
QUANT_TARGET_BYTES = 8 * 2**20

NCCL_SHARED_GPU = (
    "NCCL refuses two ranks on one GPU ('Duplicate GPU detected', ncclInvalidUsage, NCCL >= 2.5)"
)
STOP_GRACE_S = 5.0  # after SIGTERM, how long torchrun gets to stop its workers
LOG_TAIL = 3000  # characters of torchrun's log kept for the failure messages


@dataclass(frozen=True)
class Machine:
    """How the suite launches on this machine."""

    device: str  # "cpu" or "cuda": where the ranks' tensors live
    backend: str  # process-group backend: "gloo" or "nccl"
    world: int  # ranks
    gpus: int  # visible GPUs (0 without one)
    gpu_name: str = ""
    capability: tuple[int, int] | None = None

    @property
    def shared_gpu(self) -> bool:
        return self.device == "cuda" and self.gpus < self.world

    def short(self) -> str:
        """E.g. "2 gloo ranks on the CPU", "2 ranks on 1 GPU", "8 ranks on 8 GPUs"."""
        if self.device == "cpu":
            return f"{self.world} gloo ranks on the CPU"
        return f"{self.world} ranks on {self.gpus} GPU{'s' if self.gpus != 1 else ''}"

    def describe(self) -> str:
        if self.device == "cpu":
            return f"{self.world} gloo ranks on the CPU (no GPU)"
        if self.shared_gpu:
            return (
                f"{self.world} ranks share {self.gpus} GPU ({self.gpu_name}), gloo group: "
                f"{NCCL_SHARED_GPU}; the processes time-share the GPU (no MPS), so times "
                "include context switches"
            )
        return f"{self.world} ranks on {self.gpus} GPUs ({self.gpu_name}), NCCL, one node"


@dataclass(frozen=True)
class Case:
    """One run of the comm benchmark inside the launch."""

    name: str  # plan name: baseline, one_shot, two_shot, int8, fp8, baseline_graph, ...
    backend: str  # the rows' backend label
    algo: str
    sizes: tuple[str, str, int]  # -b, -e, -f
    quant: str | None = None
    graph: bool = False
    baseline: str | None = None  # the case whose time at the same size is the baseline
    impl: str = ""

    def argv(self, iters: int, warmup: int) -> list[str]:
        b, e, f = self.sizes
        out = ["--op", "all_reduce", "-d", DTYPE, "-b", b, "-e", e, "-f", str(f)]
        out += ["-n", str(iters), "-w", str(warmup), "--algo", self.algo]
        if self.quant:
            out += ["--quant", self.quant]
        if self.graph:
            out.append("-G")
        return out


def machine(ctx: BenchContext) -> Machine:
    """The launch shape: N GPUs -> N NCCL ranks; 1 GPU -> 2 gloo ranks on it; CPU -> 2."""
    if not ctx.gpu:
        return Machine("cpu", "gloo", int(ctx.option("comm.ranks", 2)), 0, "cpu")
    import torch

    n = torch.cuda.device_count()
    name = torch.cuda.get_device_name(0)
    cap = torch.cuda.get_device_capability(0)
    if n >= 2:
        return Machine("cuda", "nccl", int(ctx.option("comm.ranks", n)), n, name, cap)
    return Machine("cuda", "gloo", int(ctx.option("comm.ranks", 2)), n, name, cap)


def budget(ctx: BenchContext) -> tuple[int, int, float]:
    """(iterations, warm-up calls, launch timeout in s) for this run."""
    if ctx.gpu:
        iters, warmup, timeout = (10, 2, 150.0) if ctx.quick else (20, 5, 240.0)
    else:
        iters, warmup, timeout = (3, 1, 90.0) if ctx.quick else (5, 1, 120.0)
    return iters, warmup, float(ctx.option("comm.timeout_s", timeout))


#: The all-reduce algorithms of the custom kernels, and the quantised forms, each timed
#: against the baseline (also the pytest-benchmark suite's cases, with ``nccl``).
ALGOS = ("one_shot", "two_shot")
QUANTS = ("int8", "fp8")


def size_ranges(gpu: bool, quick: bool, shared_gpu: bool = False) -> dict[str, tuple]:
    """(-b, -e, -f) per kind of case: ``base`` (the baseline), ``custom`` (the IPC kernels),
    ``quant``, ``small`` (CUDA-graph cases). Powers of 4 (16 quick) from 1 KiB (4 KiB), so
    every case's sizes are a subset of the baseline's."""
    if not gpu:
        base = ("1K", "64K", 64) if quick else ("1K", "64K", 8)
        return {"base": base, "custom": base, "quant": ("64K", "64K", 2), "small": base}
    custom = ("4K", "1M", 16) if quick else ("1K", "4M", 4)
    return {
        "base": custom if shared_gpu else ("4K", "16M", 16) if quick else ("1K", "64M", 4),
        "custom": custom,
        "quant": ("1M", "16M", 16) if quick else ("1M", "64M", 4),
        "small": ("4K", "64K", 16) if quick else ("1K", "256K", 4),
    }


def plan(ctx: BenchContext, m: Machine) -> list[Case]:
    """The cases this machine can run, in launch order (cases left out go to ``ctx.skip``).

    Sizes come from :func:`size_ranges`, so each row has its baseline at the same size."""
    gpu = m.device == "cuda"
    # sharing a GPU: no quantised cases, and gloo through host memory is slow at 64 MB
    ranges = size_ranges(gpu, ctx.quick, m.shared_gpu)
    base, custom, quant, small = (ranges[k] for k in ("base", "custom", "quant", "small"))
    label = m.backend  # "nccl" or "gloo": what algo="nccl" runs on this group
    cases = [Case("baseline", label, "nccl", base, impl=f"torch.distributed.all_reduce ({label})")]

    custom_why = None
    if gpu:
        from millkernels._native import cuda_unavailable_reason
        from millkernels.ops.comm.capabilities import MAX_RANKS

        custom_why = cuda_unavailable_reason()
        if custom_why is None and m.world > MAX_RANKS:
            custom_why = f"the IPC kernels take at most {MAX_RANKS} ranks, not {m.world}"
    prefix, impl = ("ipc", "CUDA IPC kernel") if gpu else ("gloo", "torch.distributed form")
    for algo in ALGOS:
        if custom_why:
            ctx.skip(f"{prefix}:{algo}", custom_why)
            continue
        cases.append(Case(algo, f"{prefix}:{algo}", algo, custom, baseline="baseline", impl=impl))

    for q in QUANTS:
        why = None
        if m.shared_gpu:
            why = f"the quantised all-reduce of CUDA tensors needs NCCL, and {NCCL_SHARED_GPU}"
        elif q == "fp8" and gpu and (m.capability is None or m.capability < (8, 9)):
            have = "of unknown compute capability"
            if m.capability is not None:
                have = f"sm_{m.capability[0]}{m.capability[1]}"
            why = f"fp8 needs sm_89 or newer; this GPU is {have}"
        if why:
            ctx.skip(f"quant:{q}", why)
            continue
        impl = "Triton quantise/accumulate + NCCL" if gpu else "reference quantisation + gloo"
        cases.append(Case(q, f"quant:{q}", "auto", quant, quant=q, baseline="baseline", impl=impl))

    if gpu:
        if m.backend == "nccl":
            cases.append(
                Case("baseline_graph", "nccl+graph", "nccl", small, graph=True, impl="NCCL")
            )
        if not custom_why:
            graph_base = "baseline_graph" if m.backend == "nccl" else None
            one = Case("one_shot_graph", "ipc:one_shot+graph", "one_shot", small, graph=True)
            cases.append(replace(one, baseline=graph_base, impl="CUDA IPC kernel"))
    wanted = ctx.option("comm.cases", None)
    if wanted is not None:
        cases = [c for c in cases if c.name in wanted]
    return cases


# ------------------------------------------------------------------------------ launch


def worker_target() -> list[str]:
    """What torchrun starts on every rank (the spec file's path is appended)."""
    return ["-m", MODULE]


def launch_argv(world: int, spec: Path) -> list[str]:
    """The torchrun command line for ``world`` ranks on this node."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        "--nproc-per-node", str(world), *worker_target(), str(spec),
    ]  # fmt: skip


def reproduce(m: Machine, case: Case, iters: int, warmup: int) -> str:
    """A command that reruns one case alone."""
    return shlex.join(
        ["torchrun", "--standalone", "--nproc-per-node", str(m.world),
         "-m", "millkernels.bench.suites.comm_cli", *case.argv(iters, warmup),
         "--device", m.device, "--backend", m.backend]
    )  # fmt: skip


@dataclass
class Launch:
    """What one launch left: per-case records by rank, how it ended, the log's tail."""

    records: dict[str, dict[int, dict[str, Any]]]
    returncode: int | None
    timed_out: bool
    seconds: float
    log_tail: str
    init_errors: list[str]
    timeout_s: float = 0.0


def _child_env(m: Machine, timeout_s: float) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    # a hung collective gives up on its own too (bench_cli's process-group timeout)
    env["MILLKERNELS_COMM_TIMEOUT_S"] = str(max(10, int(timeout_s)))
    if m.device == "cpu":
        env.pop("TRITON_INTERPRET", None)  # quant: the reference path, not interpreted Triton
    return env


def _worker_pids(folder: Path, marker: str) -> list[int]:
    """Pids the workers of this launch wrote, still running this launch's command."""
    pids = []
    for f in folder.glob("pid.*"):
        try:
            pid = int(f.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except (OSError, ValueError):
            continue
        if marker.encode() in cmdline:
            pids.append(pid)
    return pids


def _kill_workers(folder: Path, marker: str) -> None:
    """SIGKILL any worker of this launch still running (workers run in sessions of their own,
    out of reach of torchrun's group)."""
    for pid in _worker_pids(folder, marker):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While launched, SIGTERM (e.g. the campaign's ``timeout``) raises SystemExit here, so
    the launch is stopped on the way out instead of outliving this process."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.getsignal(signal.SIGTERM)

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old if old is not None else signal.SIG_DFL)


def run_launch(ctx: BenchContext, m: Machine, cases: list[Case], timeout_s: float) -> Launch:
    """Launch every case in one torchrun run; never waits past ``timeout_s`` (plus the stop)."""
    iters, warmup, _ = budget(ctx)
    with tempfile.TemporaryDirectory(prefix="mk-comm-suite-") as tmp:
        folder = Path(tmp)
        spec = folder / "spec.json"
        spec.write_text(
            json.dumps(
                {
                    "device": m.device,
                    "backend": m.backend,
                    "cases": [{"name": c.name, "argv": c.argv(iters, warmup)} for c in cases],
                }
            )
        )
        argv = launch_argv(m.world, spec)
        ctx.log(f"{ctx.suite}: {m.describe()}: {shlex.join(argv)} (timeout {timeout_s:.0f} s)")
        log_path = folder / "torchrun.log"
        t0 = time.monotonic()
        with log_path.open("wb") as log, _sigterm_raises():
            try:  # torchrun's group gets SIGTERM, STOP_GRACE_S to stop its workers, SIGKILL
                returncode, timed_out = run_in_group(
                    argv,
                    timeout=timeout_s,
                    grace_s=STOP_GRACE_S,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=_child_env(m, timeout_s),
                )
            finally:
                _kill_workers(folder, str(spec))  # also after a normal exit
        seconds = time.monotonic() - t0
        records: dict[str, dict[int, dict[str, Any]]] = {}
        init_errors: list[str] = []
        for f in sorted(folder.glob("rank*.jsonl")):
            for line in f.read_text(errors="replace").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by the kill
                if rec.get("case") == "_init":
                    init_errors.append(f"rank {rec.get('rank')}: {rec.get('error')}")
                else:
                    records.setdefault(rec.get("case"), {})[int(rec.get("rank", 0))] = rec
        tail = read_tail(log_path, LOG_TAIL)
    return Launch(records, returncode, timed_out, seconds, tail, init_errors, timeout_s)


# -------------------------------------------------------------------------------- rows


def _timer(m: Machine, case: Case, iters: int, warmup: int) -> str:
    clock = "cuda events" if m.device == "cuda" else "perf_counter"
    graph = ", replayed from a CUDA graph" if case.graph else ""
    return (
        f"{clock}: mean of {iters} calls after {warmup} warm-up{graph}, averaged over "
        f"{m.world} ranks (millkernels bench comm)"
    )


def _notes(ctx: BenchContext, m: Machine) -> str:
    from millkernels.bench.context import CPU_NOTE

    return f"{CPU_NOTE}; {m.describe()}" if m.device == "cpu" else m.describe()


def _failure(launch: Launch, case: Case, reached: list[str]) -> str | None:
    """Why ``case`` has no rows (None when it has them)."""
    by_rank = launch.records.get(case.name, {})
    bad = [
        r for r in sorted(by_rank.values(), key=lambda r: r.get("rank", 0))
        if r.get("error") or r.get("code") not in (0, 1)
    ]  # fmt: skip
    if bad:
        r = bad[0]
        why = r.get("error") or f"exit code {r.get('code')}"
        err = (r.get("stderr") or "").strip().splitlines()
        return f"rank {r.get('rank')}: {why}" + (f": {err[-1]}" if err else "")
    if by_rank.get(0, {}).get("rows") is not None:
        return None
    if launch.init_errors:
        return "the process group did not start: " + "; ".join(launch.init_errors)[:500]
    last = f" (last case with results: {reached[-1]})" if reached else ""
    if launch.timed_out:
        return f"not finished: the launch timed out after {launch.timeout_s:.0f} s{last}"
    tail = " | ".join(launch.log_tail.strip().splitlines()[-3:])
    return f"not run: torchrun exited with {launch.returncode}{last}" + (
        f": {tail}" if tail else ""
    )


def _row(ctx, m, case, r, iters, warmup, base: tuple[Case, dict[str, Any]] | None) -> Row:
    from millkernels.bench.timing import Timing

    t = float(r["time_us"])
    base_t = None
    if base is not None:
        b = float(base[1]["time_us"])
        base_t = Timing(b, b, b, iters, _timer(m, base[0], iters, warmup))
    keys = ("algbw", "busbw", "wrong", "inplace_time_us", "inplace_algbw", "inplace_busbw")
    extra = {k: r.get(k) for k in (*keys, "inplace_wrong", "count", "time_us")}
    extra.update(
        world=m.world, gpus=m.gpus, process_group=m.backend, graph=case.graph,
        iters=iters, warmup=warmup, reproduce=reproduce(m, case, iters, warmup),
    )  # fmt: skip
    return ctx.row(
        op="all_reduce",
        shape={"bytes": int(r["bytes"]), "ranks": m.world},
        dtype="bf16",
        backend=case.backend,
        timing=Timing(t, t, t, iters, _timer(m, case, iters, warmup)),
        bytes=int(r["bytes"]),
        ceiling=False,
        baseline=base[0].backend if base is not None else None,
        baseline_timing=base_t,
        config={"algo": case.algo, "quant": case.quant, "impl": case.impl, "graph": case.graph},
        notes=_notes(ctx, m),
        extra=extra,
    )


def _failed_row(ctx, m: Machine, case: Case, why: str) -> Row:
    from millkernels.bench.timing import Timing

    nan = math.nan
    b, e, _ = case.sizes
    return ctx.row(
        op="all_reduce",
        shape={"sizes": f"{b}..{e}", "ranks": m.world},
        dtype="bf16",
        backend=case.backend,
        timing=Timing(nan, nan, nan, 0, "failed: no measurement"),
        ceiling=False,
        config={"algo": case.algo, "quant": case.quant, "impl": case.impl, "graph": case.graph},
        notes=f"FAILED: {why}",
        extra={"status": "failed", "error": why, "world": m.world, "gpus": m.gpus},
    )


def _one_shot_target(ctx, m: Machine, by_name, measured, iters, warmup) -> Iterator[Row]:
    from millkernels.bench.timing import Timing

    source = "one_shot_graph" if "one_shot_graph" in measured else "one_shot"
    small = [r for b, r in measured.get(source, {}).items() if b <= ONE_SHOT_TARGET_BYTES]
    target = (
        f"one-shot all-reduce <= {ONE_SHOT_TARGET_US:g} us at every size <= 64 KB on "
        f"{ONE_SHOT_TARGET_RANKS} H100s over NVLink"
    )
    if not small:
        ctx.skip("one-shot target", f"no one-shot measurement at <= 64 KB ({target})")
        return
    worst = max(small, key=lambda r: r["time_us"])
    t = float(worst["time_us"])
    hopper = m.capability is not None and m.capability[0] == 9
    applicable = m.backend == "nccl" and m.world == ONE_SHOT_TARGET_RANKS and hopper
    if applicable:
        met = t <= ONE_SHOT_TARGET_US
        status = "pass" if met else f"fail: {t:.2f} us at {worst['bytes']} B"
        ctx.check(met, f"target {target}: {t:.2f} us at {worst['bytes']} B")
    else:
        met = None
        if m.device == "cpu":
            here = f"0 GPUs ({m.world} gloo ranks on the CPU)"
        elif m.shared_gpu:
            here = f"{m.gpus} GPU ({m.world} ranks share it)"
        else:
            sm = "".join(map(str, m.capability or ()))
            here = f"{m.gpus} GPUs, {m.world} ranks ({m.gpu_name}, sm_{sm})"
        status = f"not applicable on this machine: {here}"
    case = by_name[source]
    yield ctx.row(
        op="all_reduce_target",
        shape={"bytes": int(worst["bytes"]), "ranks": m.world, "target": "one_shot_8us"},
        dtype="bf16",
        backend=case.backend,
        timing=Timing(t, t, t, iters, _timer(m, case, iters, warmup)),
        bytes=int(worst["bytes"]),
        ceiling=False,
        notes=f"{target}: {status} (the slowest size <= 64 KB, {source})",
        extra={
            "target": target, "limit_us": ONE_SHOT_TARGET_US, "status": status, "met": met,
            "source_case": source, "world": m.world, "gpus": m.gpus,
        },
    )  # fmt: skip


def _quant_targets(ctx, m: Machine, by_name, measured, iters, warmup) -> Iterator[Row]:
    from millkernels.bench.timing import Timing

    base = measured.get("baseline", {})
    for q in ("int8", "fp8"):
        rows = measured.get(q, {})
        common = sorted(b for b in rows if b in base)
        if not common:
            continue
        big = [b for b in common if b >= QUANT_TARGET_BYTES]
        sizes = big or common[-1:]
        worst = min(sizes, key=lambda b: base[b]["time_us"] / rows[b]["time_us"])
        t, bt = float(rows[worst]["time_us"]), float(base[worst]["time_us"])
        ratio = bt / t
        target = (
            f"quantised ({q}) all-reduce >= {QUANT_TARGET_RATIO:g}x faster than NCCL bf16 at "
            ">= 8 MB across nodes"
        )
        where = "at >= 8 MB" if big else f"at the largest size measured here ({worst} B < 8 MB)"
        status = (
            f"not applicable on this machine: one node ({m.short()}); the "
            f"target is across nodes (run `millkernels bench comm --quant {q}` under deploy/)"
        )
        timer = _timer(m, by_name[q], iters, warmup)
        yield ctx.row(
            op="all_reduce_target",
            shape={"bytes": worst, "ranks": m.world, "target": f"quant_{q}_1.6x"},
            dtype="bf16",
            backend=by_name[q].backend,
            timing=Timing(t, t, t, iters, timer),
            bytes=worst,
            ceiling=False,
            baseline=by_name["baseline"].backend,
            baseline_timing=Timing(bt, bt, bt, iters, timer),
            notes=f"{target}: {status}; here {ratio:.2f}x {where}",
            extra={
                "target": target, "min_ratio": QUANT_TARGET_RATIO, "ratio": ratio,
                "status": status, "met": None, "world": m.world, "gpus": m.gpus,
            },
        )  # fmt: skip


def collectives(ctx: BenchContext) -> Iterator[Row]:
    """all-reduce: NCCL vs IPC one/two-shot and int8/fp8 quantised, under torchrun."""
    m = machine(ctx)
    iters, warmup, timeout_s = budget(ctx)
    cases = plan(ctx, m)
    if not cases:
        return
    by_name = {c.name: c for c in cases}
    launch = run_launch(ctx, m, cases, timeout_s)
    ctx.log(
        f"{ctx.suite}: launch ended after {launch.seconds:.1f} s "
        f"(exit {launch.returncode}{', timed out' if launch.timed_out else ''})"
    )
    measured: dict[str, dict[int, dict[str, Any]]] = {}
    reached: list[str] = []
    for case in cases:
        why = _failure(launch, case, reached)
        if why is not None:
            ctx.check(False, f"{case.backend} ({case.name}): {why}")
            yield _failed_row(ctx, m, case, why)
            continue
        reached.append(case.name)
        rows = launch.records[case.name][0]["rows"]
        measured[case.name] = {int(r["bytes"]): r for r in rows}
        base_case = by_name.get(case.baseline or "")
        for r in rows:
            found = measured.get(case.baseline or "", {}).get(int(r["bytes"]))
            base = (base_case, found) if base_case is not None and found is not None else None
            wrong = [r.get("wrong"), r.get("inplace_wrong") or 0]
            ctx.check(
                wrong == [0, 0],
                f"{case.backend} at {r['bytes']} B: #wrong {wrong[0]} out of place, "
                f"{wrong[1]} in place",
            )
            yield _row(ctx, m, case, r, iters, warmup, base)
    if launch.returncode not in (0, None) and not launch.timed_out and len(reached) == len(cases):
        ctx.log(f"{ctx.suite}: torchrun exited with {launch.returncode}: {launch.log_tail}")
    if any(c.name not in reached for c in cases):
        ctx.log(f"{ctx.suite}: torchrun log tail:\n{launch.log_tail}")
    yield from _one_shot_target(ctx, m, by_name, measured, iters, warmup)
    yield from _quant_targets(ctx, m, by_name, measured, iters, warmup)


# ------------------------------------------------------------------------------ worker


def _worker_main(argv: list[str]) -> int:
    """One rank of the launch: ``python -m millkernels.bench.suites.collectives SPEC.json``.

    Initialises the process group once, runs every case with ``comm_bench_main`` (stdout and
    stderr captured per case) and appends one JSON line per case to ``rank<R>.jsonl`` beside
    the spec. A case that raises or exits with a code other than 0 / 1 ends this rank (exit
    1): its peers may be stuck in a collective, and torchrun stops them when a rank fails."""
    if len(argv) != 1:
        print(f"usage: python -m {MODULE} SPEC.json", file=sys.stderr)
        return 2
    spec_path = Path(argv[0])
    spec = json.loads(spec_path.read_text())
    folder = spec_path.parent
    rank = int(os.environ.get("RANK", "0"))
    (folder / f"pid.{rank}").write_text(str(os.getpid()))
    results = folder / f"rank{rank}.jsonl"

    def emit(record: dict[str, Any]) -> None:
        with results.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    from millkernels.bench.suites.comm_cli import _init, comm_bench_main

    try:
        created = _init(spec["device"], spec["backend"])
    except Exception as exc:
        emit({"case": "_init", "rank": rank, "error": _exc_text(exc)})
        return 3
    tail = ["--format", "json", "--device", spec["device"], "--backend", spec["backend"]]
    code = 0
    try:
        for case in spec["cases"]:
            out, err = io.StringIO(), io.StringIO()
            record: dict[str, Any] = {"case": case["name"], "rank": rank}
            t0 = time.monotonic()
            try:
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    record["code"] = comm_bench_main([*case["argv"], *tail])
                if rank == 0 and record["code"] in (0, 1):
                    record["rows"] = json.loads(out.getvalue())
            except Exception as exc:
                record["error"] = _exc_text(exc)
                err.write(traceback.format_exc())
            record["stderr"] = err.getvalue()[-4000:]
            record["seconds"] = time.monotonic() - t0
            emit(record)
            if record.get("error") or record.get("code") not in (0, 1):
                code = 1
                break
    finally:
        if created and code == 0:
            import torch.distributed as dist

            with contextlib.suppress(Exception):
                dist.destroy_process_group()
    return code


def _exc_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()[-2000:]


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
else:  # run as a worker, the module is also imported by name: register once, from there
    register_suite(
        SUITE,
        collectives,
        description="all-reduce under torchrun: NCCL vs IPC one/two-shot, int8/fp8 quantised",
        order=50,
    )
