"""Run one probe in its own process, with a timeout; a crash or a hang becomes a record.

Process handling: each probe leads its own session (so its process group holds it and every
worker it starts). The group is SIGKILLed when the probe outlives its timeout and again once
the probe has exited, so no stray worker outlives its record. On Linux a probe also gets
``PR_SET_PDEATHSIG`` = SIGKILL and then checks that certify is still alive (closing the race
with a parent that died first), so ``kill -9`` of certify does not leave probes running.
Stderr goes to a temp file and only its tail is read back.

A record (one line of ``results.jsonl``)::

    {"type": "probe", "probe": NAME, "gpu": I|None, "status": "ok"|"error"|"crashed"|"timeout"
     |"not_applicable", "reason": CODE|None, "message": str, "measurements": [...],
     "unavailable": [...], "info": {...}, "series": {...}, "started_at": ISO, "ended_at": ISO,
     "duration_s": float, "stderr_tail": str}
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from millkernels.certify import verdict as V
from millkernels.certify.probes.registry import ProbeSpec
from millkernels.procs import read_tail, run_in_group, stop_group

STDERR_TAIL = 3000  # characters of a probe's stderr kept in its record (read from the end)
MESSAGE_MAX = 2000  # characters of a probe's error message kept in its record
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _load_prctl() -> Any:
    """libc's ``prctl``, resolved once in the parent so a child only calls it."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()


def now_iso() -> str:
    """The current UTC time, ISO 8601 with a Z."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


@runtime_checkable
class ProbeRunner(Protocol):
    """Runs one probe task and returns its record (:func:`base_record`'s fields, filled).

    ``gpu`` is the GPU a per-GPU probe runs on (None for node probes), ``gpus`` / ``uuids``
    the GPUs it may see, ``device`` "cuda" or "cpu", ``timeout`` seconds before the run is
    killed and recorded as a timeout, ``env`` variables added to the probe's environment,
    ``params`` the probe's parameters, ``record_as`` the probe name the record carries
    (default: ``spec.name``; a stand-in probe run in place of another one is recorded under
    the name it stands in for).
    """

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
            launched = None
            if self.mode == "forkserver":
                try:
                    launched = _launch_forked(argv[3:], full_env, err_path, timeout)
                except ForkServerUnavailable as exc:
                    # Exec'd probes need no fork server: same probe, a slower start.
                    self.mode = "exec"
                    rec["info"]["runner"] = f"exec (the fork server could not start: {exc})"
            if launched is None:
                launched = _launch_exec(argv, full_env, err_path, timeout)
            rc, timed_out = launched
            tail = read_tail(err_path, STDERR_TAIL)
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
                message=cap(str(payload.get("error", ""))),
            )
        else:
            rec.update(status="ok", reason=None)
        if payload:
            for k in ("measurements", "unavailable", "series"):
                rec[k] = payload.get(k) or rec[k]
            rec["info"] = {**rec["info"], **(payload.get("info") or {})}
        return rec


def _launch_exec(
    argv: list[str], env: dict[str, str], err_path: Path, timeout: float
) -> tuple[int, bool]:
    parent = os.getpid()
    with open(err_path, "wb") as err:
        # The group (the probe and the workers it left behind) is SIGKILLed at the timeout,
        # and again once the probe has exited.
        return run_in_group(
            argv,
            timeout=timeout,
            stdout=err,
            stderr=err,
            env=env,
            preexec_fn=lambda: _die_with_parent(parent),
        )


def _die_with_parent(parent: int) -> None:
    """In a probe process: be SIGKILLed when the process that started it exits (Linux
    ``PR_SET_PDEATHSIG``), and exit at once when certify (``parent``) is already gone, since it
    may have died before the request took effect."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if not _alive(parent):
        os._exit(1)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    if os.getppid() == pid:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except FileNotFoundError:
        return False
    except (OSError, IndexError):  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


class ForkServerUnavailable(RuntimeError):
    """The fork server could not start (e.g. ``TMPDIR`` too long for its Unix socket's path);
    no probe process was created."""


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


def _forked_probe(args: list[str], env: dict[str, str], err_path: str, parent: int) -> None:
    """In the forked child: own session, dies with the fork server (which exits when certify
    does) or at once if certify is gone, stdout/stderr to the file, the probe's environment."""
    os.setsid()
    _drop_fork_server_link()
    _die_with_parent(parent)
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


def _drop_fork_server_link() -> None:
    """Close, in a forked probe, its copy of certify's end of the fork server's liveness pipe.
    The fork server exits when that pipe closes, i.e. when certify dies, and the probe's
    death signal follows the fork server; a probe holding a copy would keep both alive."""
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    fd = getattr(server, "_forkserver_alive_fd", None)
    if server is not None and fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)
        server._forkserver_alive_fd = None


def _launch_forked(
    args: list[str], env: dict[str, str], err_path: Path, timeout: float
) -> tuple[int, bool]:
    proc = _fork_context().Process(
        target=_forked_probe, args=(args, env, str(err_path), os.getpid())
    )
    # multiprocessing re-imports the parent's __main__ in the child (by name or by path). A
    # probe needs nothing from it, and re-running a caller's unguarded script (or a main read
    # from stdin, which cannot be re-read) would be wrong: hide it while the child starts.
    main = sys.modules.get("__main__")
    hidden: dict[str, Any] = {
        k: main.__dict__[k] for k in ("__file__", "__spec__") if main and k in main.__dict__
    }
    with _START_LOCK:
        try:
            for k in hidden:
                main.__dict__[k] = None
            proc.start()
        except OSError as exc:
            if proc.pid is not None:
                raise
            raise ForkServerUnavailable(f"{type(exc).__name__}: {exc}") from exc
        finally:
            if main is not None:
                main.__dict__.update(hidden)
    proc.join(timeout)
    timed_out = proc.is_alive()
    # The probe leads its own group; kill it (at the timeout) and any worker it left behind.
    stop_group(proc.pid)
    if timed_out:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.join()
        return proc.exitcode if proc.exitcode is not None else -9, True
    return proc.exitcode if proc.exitcode is not None else 1, False


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return "unknown"


def cap(text: str, limit: int = MESSAGE_MAX) -> str:
    """``text`` cut to ``limit`` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]} ... ({len(text) - limit} more characters cut)"
