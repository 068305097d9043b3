"""Probes that misbehave on purpose: the runner's crash, hang and error handling is tested
through them (the simulated node substitutes them for real probes)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from millkernels.certify.probes.registry import ProbeContext


def ok(ctx: ProbeContext) -> None:
    """Measures ``params["value"]``; first writes ``params["stderr_bytes"]`` bytes to stderr
    and starts a worker as :func:`hang` does."""
    _pids(ctx)
    noise = int(ctx.params.get("stderr_bytes", 0))
    for _ in range(noise // 4096):
        sys.stderr.write("e" * 4095 + "\n")
    sys.stderr.write("last stderr line\n")
    sys.stderr.flush()
    ctx.measure("selftest_value", float(ctx.params.get("value", 1.0)), "unit")


def crash(ctx: ProbeContext) -> None:
    os.abort()  # SIGABRT: what a segfaulting CUDA library looks like from outside


def hang(ctx: ProbeContext) -> None:
    """Never returns (after :func:`_pids`)."""
    _pids(ctx)
    while True:
        time.sleep(1)


def _pids(ctx: ProbeContext) -> None:
    """For the tests of process clean-up: ``params["worker"]`` starts a worker process that
    ignores SIGTERM; ``params["pid_file"]`` gets "PROBE_PID [WORKER_PID]"."""
    pids = [os.getpid()]
    if ctx.params.get("worker"):
        code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
        pids.append(subprocess.Popen([sys.executable, "-c", code]).pid)
    pid_file = ctx.params.get("pid_file")
    if pid_file:
        with open(pid_file + ".tmp", "w") as f:
            f.write(" ".join(map(str, pids)))
        os.replace(pid_file + ".tmp", pid_file)


def fail(ctx: ProbeContext) -> None:
    raise RuntimeError(ctx.params.get("message", "CUDA error: an illegal memory access"))
