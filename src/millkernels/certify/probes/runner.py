"""Run one probe in its own process, with a timeout; a crash or a hang becomes a record.

A record (one line of ``results.jsonl``)::

    {"type": "probe", "probe": NAME, "gpu": I|None, "status": "ok"|"error"|"crashed"|"timeout"
     |"not_applicable", "reason": CODE|None, "message": str, "measurements": [...],
     "unavailable": [...], "info": {...}, "series": {...}, "started_at": ISO, "ended_at": ISO,
     "duration_s": float, "stderr_tail": str}
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from millkernels.certify import verdict as V
from millkernels.certify.probes.registry import ProbeSpec

STDERR_TAIL = 3000


def now_iso() -> str:
    """The current UTC time, ISO 8601 with a Z."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class ProbeRunner(Protocol):
    """Runs one probe task and returns its record."""

    def run(
        self,
        spec: ProbeSpec,
        *,
        gpu: int | None,
        gpus: Sequence[int],
        uuids: Sequence[str],
        device: str,
        quick: bool,
        timeout: float,
        env: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
    ) -> dict[str, Any]: ...


def base_record(spec_name: str, gpu: int | None) -> dict[str, Any]:
    return {
        "type": "probe",
        "probe": spec_name,
        "gpu": gpu,
        "status": None,
        "reason": None,
        "message": "",
        "measurements": [],
        "unavailable": [],
        "info": {},
        "series": {},
    }


class SubprocessRunner:
    """Each probe in a new process and session, killed (the whole process group) when it
    outlives its timeout.

    ``mode="forkserver"`` (the default) forks each probe from a server process that has
    already imported torch: a fresh process per probe without paying torch's import each time
    (4 s per probe on a small VM; the CPU quick run drops from ~35 s to ~15 s). The server
    never touches CUDA, so every probe initialises its own GPU context.
    ``mode="exec"`` (or ``MILLKERNELS_CERTIFY_EXEC=1``) runs ``python -m
    millkernels.certify.probes.run`` instead.
    """

    def __init__(self, python: str = sys.executable, mode: str | None = None) -> None:
        self.python = python
        if mode is None:
            mode = "exec" if os.environ.get("MILLKERNELS_CERTIFY_EXEC") == "1" else "forkserver"
        if mode not in ("forkserver", "exec"):
            raise ValueError(f"mode: 'forkserver' or 'exec', got {mode!r}")
        self.mode = mode

    def run(
        self,
        spec: ProbeSpec,
        *,
        gpu: int | None,
        gpus: Sequence[int],
        uuids: Sequence[str],
        device: str,
        quick: bool,
        timeout: float,
        env: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        record_as: str | None = None,
    ) -> dict[str, Any]:
        rec = base_record(record_as or spec.name, gpu)
        rec["started_at"] = now_iso()
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="mk-probe-") as tmp:
            out = Path(tmp) / "result.json"
            err_path = Path(tmp) / "stderr.txt"
            argv = [
                self.python,
                "-m",
                "millkernels.certify.probes.run",
                spec.name,
                "--out",
                str(out),
                "--device",
                device,
                "--gpus",
                ",".join(map(str, gpus)),
                "--uuids",
                ",".join(uuids),
                "--params",
                json.dumps(params or {}),
            ]
            if gpu is not None:
                argv += ["--gpu", str(gpu)]
            if quick:
                argv.append("--quick")
            full_env = {**os.environ, **(env or {})}
            if self.mode == "forkserver":
                rc, timed_out = _launch_forked(argv[3:], full_env, err_path, timeout)
            else:
                rc, timed_out = _launch_exec(argv, full_env, err_path, timeout)
            raw = err_path.read_bytes() if err_path.exists() else b""
            tail = raw[-STDERR_TAIL:].decode(errors="replace")
            payload = None
            if out.exists():
                try:
                    payload = json.loads(out.read_text())
                except json.JSONDecodeError:
                    payload = None
        rec["ended_at"] = now_iso()
        rec["duration_s"] = round(time.monotonic() - t0, 3)
        rec["stderr_tail"] = tail
        if timed_out:
            rec.update(
                status="timeout",
                reason=V.MK_PROBE_TIMEOUT,
                message=f"no result within {timeout:g} s; the process group was killed",
            )
        elif payload is None:
            how = f"signal {-rc} ({_signame(-rc)})" if rc < 0 else f"exit code {rc}"
            rec.update(
                status="crashed",
                reason=V.MK_PROBE_CRASHED,
                message=f"the probe process died with {how} and left no result",
            )
        elif not payload.get("ok"):
            rec.update(
                status="error",
                reason=payload.get("reason") or V.MK_PROBE_ERROR,
                message=payload.get("error", ""),
            )
        else:
            rec.update(status="ok", reason=None)
        if payload:
            for k in ("measurements", "unavailable", "info", "series"):
                rec[k] = payload.get(k) or rec[k]
        return rec


def _launch_exec(
    argv: list[str], env: dict[str, str], err_path: Path, timeout: float
) -> tuple[int, bool]:
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(argv, stdout=err, stderr=err, env=env, start_new_session=True)
        try:
            return proc.wait(timeout=timeout), False
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return proc.wait(), True


_FORK_CTX: Any = None
_FORK_LOCK = threading.Lock()
_START_LOCK = threading.Lock()


def _fork_context() -> Any:
    global _FORK_CTX
    with _FORK_LOCK:
        if _FORK_CTX is None:
            import multiprocessing as mp

            ctx = mp.get_context("forkserver")
            ctx.set_forkserver_preload(["torch", "millkernels.certify.probes.run"])
            _FORK_CTX = ctx
        return _FORK_CTX


def _forked_probe(args: list[str], env: dict[str, str], err_path: str) -> None:
    """In the forked child: own session, stdout/stderr to the file, the probe's environment."""
    os.setsid()
    fd = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.clear()
    os.environ.update(env)
    code = 1
    try:
        from millkernels.certify.probes.run import main

        code = main(args)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _launch_forked(
    args: list[str], env: dict[str, str], err_path: Path, timeout: float
) -> tuple[int, bool]:
    proc = _fork_context().Process(target=_forked_probe, args=(args, env, str(err_path)))
    # multiprocessing re-imports the parent's __main__ in the child (by name or by path). A
    # probe needs nothing from it, and re-running a caller's unguarded script (or a main read
    # from stdin, which cannot be re-read) would be wrong: hide it while the child starts.
    main = sys.modules.get("__main__")
    hidden = {k: main.__dict__[k] for k in ("__file__", "__spec__") if main and k in main.__dict__}
    with _START_LOCK:
        try:
            for k in hidden:
                main.__dict__[k] = None
            proc.start()
        finally:
            if main is not None:
                main.__dict__.update(hidden)
    proc.join(timeout)
    if proc.is_alive():
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
        proc.join()
        return proc.exitcode if proc.exitcode is not None else -9, True
    return proc.exitcode if proc.exitcode is not None else 1, False


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return "unknown"


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the probe's process group (it and any workers it started)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
