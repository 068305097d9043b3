"""The subprocess-with-deadline helper, on real processes: a child that starts a grandchild
and sleeps is stopped with its whole group at the timeout; SIGTERM first, SIGKILL for what
ignores it; workers left by a child that exited are stopped too; output is read from its end."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from millkernels import procs

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")

#: The child: starts a grandchild that sleeps (optionally ignoring SIGTERM), writes both pids,
#: then sleeps itself (or exits at once with ``exit``), also optionally ignoring SIGTERM.
CHILD = textwrap.dedent(
    """
    import signal, subprocess, sys, time
    pids, ignore, leave = sys.argv[1], sys.argv[2] == "1", sys.argv[3] == "1"
    grandchild = "import signal, time\\n"
    if ignore:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        grandchild += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n"
    worker = subprocess.Popen([sys.executable, "-c", grandchild + "time.sleep(600)"])
    with open(pids + ".tmp", "w") as f:
        f.write(f"{__import__('os').getpid()} {worker.pid}")
    __import__("os").replace(pids + ".tmp", pids)
    if not leave:
        time.sleep(600)
    """
)


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting to be reaped does not)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    return fields[0] not in ("Z", "X")


def _still_running(pids: list[int], within_s: float = 5.0) -> list[int]:
    """The pids still running after up to ``within_s`` s (a killed orphan is reaped late)."""
    deadline = time.monotonic() + within_s
    while any(_running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    return [p for p in pids if _running(p)]


def _run(tmp_path: Path, *, timeout: float, grace_s: float = 0.0, ignore_term=False, leave=False):
    pid_file = tmp_path / "pids"
    argv = [sys.executable, "-c", CHILD, str(pid_file), str(int(ignore_term)), str(int(leave))]
    t0 = time.monotonic()
    code, timed_out = procs.run_in_group(argv, timeout=timeout, grace_s=grace_s)
    took = time.monotonic() - t0
    assert pid_file.exists(), "the child never started its grandchild"
    pids = [int(p) for p in pid_file.read_text().split()]
    return code, timed_out, took, pids


def _cleanup(pids: list[int]) -> None:
    for pid in pids:  # only this test's own processes, should an assertion fail
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_child_and_grandchild_die_at_the_timeout(tmp_path: Path) -> None:
    code, timed_out, took, pids = _run(tmp_path, timeout=3.0)
    try:
        assert timed_out and code == -signal.SIGKILL
        assert _still_running(pids) == [], "the group outlived the timeout"
        assert took < 60  # bounded: it did not wait for the 600 s sleeps
    finally:
        _cleanup(pids)


@pytest.mark.slow
def test_sigterm_first_then_sigkill_for_what_ignores_it(tmp_path: Path) -> None:
    code, timed_out, _, pids = _run(tmp_path, timeout=3.0, grace_s=0.5)
    try:  # the child stops on SIGTERM within the grace; the grandchild's SIGKILL follows
        assert timed_out and code == -signal.SIGTERM
        assert _still_running(pids) == []
    finally:
        _cleanup(pids)
    code, timed_out, _, pids = _run(tmp_path, timeout=3.0, grace_s=0.5, ignore_term=True)
    try:
        assert timed_out and code == -signal.SIGKILL
        assert _still_running(pids) == []
    finally:
        _cleanup(pids)


@pytest.mark.slow
def test_worker_left_by_a_child_that_exited_is_stopped(tmp_path: Path) -> None:
    code, timed_out, _, pids = _run(tmp_path, timeout=60.0, grace_s=1.0, leave=True)
    try:
        assert not timed_out and code == 0
        assert _still_running(pids) == [], "the grandchild outlived its parent's call"
    finally:
        _cleanup(pids)


def test_exception_while_waiting_stops_the_group(tmp_path: Path, monkeypatch) -> None:
    pid_file = tmp_path / "pids"
    argv = [sys.executable, "-c", CHILD, str(pid_file), "0", "0"]
    real = procs.wait_unreaped

    def interrupted(pid: int, timeout: float) -> bool:
        while not pid_file.exists():  # the grandchild is running
            real(pid, 0.05)
        raise KeyboardInterrupt

    monkeypatch.setattr(procs, "wait_unreaped", interrupted)
    with pytest.raises(KeyboardInterrupt):
        procs.run_in_group(argv, timeout=60.0)
    pids = [int(p) for p in pid_file.read_text().split()]
    try:
        assert _still_running(pids) == []
    finally:
        _cleanup(pids)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="timeout"):
        procs.run_in_group(["true"], timeout=0)
    with pytest.raises(ValueError, match="grace_s"):
        procs.run_in_group(["true"], timeout=1, grace_s=-1)


def test_read_tail_reads_the_end_only(tmp_path: Path) -> None:
    f = tmp_path / "err.txt"
    f.write_bytes(b"x" * (1 << 20) + "\u00e9 last line\n".encode())
    assert procs.read_tail(f, 20) == "x" * 8 + "\u00e9 last line\n"
    assert procs.read_tail(tmp_path / "missing.txt") == ""
    f.write_text("short")
    assert procs.read_tail(f) == "short"
