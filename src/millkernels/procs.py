"""A child process with a deadline: it leads its own session (so its process group holds it
and every process it starts), and when it outlives the deadline, or once it has exited, the
whole group is stopped (SIGTERM, a grace period, then SIGKILL), so nothing it started outlives
the call. Captured output goes to a file and only its tail is read back.

Used by certify's probe runner and by the ``collectives`` benchmark suite (torchrun and its
ranks). Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

#: Default characters of captured output read back (from the end).
TAIL_CHARS = 3000


def wait_unreaped(pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` s for child ``pid`` to exit, without reaping it; True if it did.

    Left unreaped (a zombie at worst), the child keeps its pid, so its process group id
    cannot be reused while :func:`stop_group` signals the group."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(delay, left))
        delay = min(2 * delay, 0.05)
    return True


def _signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to process group ``pgid``; False when the group is gone or refuses."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def stop_group(pgid: int, grace_s: float = 0.0) -> None:
    """Stop process group ``pgid``: SIGTERM and up to ``grace_s`` s for its leader (a child of
    this process, pid ``pgid``) to exit, then SIGKILL for whatever is left. ``grace_s=0``:
    SIGKILL at once (the leader need not be this process's child then)."""
    if grace_s > 0 and _signal_group(pgid, signal.SIGTERM):
        with contextlib.suppress(ChildProcessError):
            wait_unreaped(pgid, grace_s)
    _signal_group(pgid, signal.SIGKILL)


def run_in_group(
    argv: Sequence[str],
    *,
    timeout: float,
    grace_s: float = 0.0,
    stdout: IO[Any] | int | None = subprocess.DEVNULL,
    stderr: IO[Any] | int | None = subprocess.DEVNULL,
    env: dict[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> tuple[int, bool]:
    """Run ``argv`` leading a new session; returns (exit code, timed out).

    Waits up to ``timeout`` s, then stops the group (:func:`stop_group` with ``grace_s``),
    also after a normal exit, so workers the child left behind die with it. An exception
    while waiting (KeyboardInterrupt, a SIGTERM turned into SystemExit) stops the group too.
    The exit code is negative for a signal (``-9``: killed), as with :mod:`subprocess`."""
    if timeout <= 0:
        raise ValueError(f"timeout: expected seconds > 0, got {timeout!r}")
    if grace_s < 0:
        raise ValueError(f"grace_s: expected seconds >= 0, got {grace_s!r}")
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        env=env,
        start_new_session=True,
        preexec_fn=preexec_fn,
    )
    timed_out = True
    try:
        timed_out = not wait_unreaped(proc.pid, timeout)
    finally:
        stop_group(proc.pid, grace_s)
        if timed_out:  # should the group signal have been refused
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        returncode = proc.wait()
    return returncode, timed_out


def read_tail(path: str | Path, limit: int = TAIL_CHARS) -> str:
    """The last ``limit`` characters of ``path`` ("" when it does not exist), reading at most
    ``4 * limit`` bytes from its end: a child may write gigabytes; none of it is loaded."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - 4 * limit))
            raw = f.read()
    except FileNotFoundError:
        return ""
    return raw.decode(errors="replace")[-limit:]
