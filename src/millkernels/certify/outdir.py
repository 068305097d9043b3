"""The ``--out`` folder: every file certify writes goes through here.

- :func:`write_atomic` makes a file whole or not at all: a temp file with a random name created
  in the folder (``O_CREAT | O_EXCL | O_NOFOLLOW``, so a planted link or file is never written
  through), written, fsynced, renamed onto the final name (``os.replace`` replaces a link at
  the destination, it does not follow it), then the folder is fsynced. A symbolic link at the
  final name is refused, never silently replaced.
- :func:`open_append` opens ``results.jsonl`` for appending without following a link.
- :func:`check_out` refuses an unusable ``--out`` before anything is measured.

Every filesystem failure (read-only folder, no permission, disk full, ``--out`` a file)
becomes :class:`OutputError`, which names the path and the OS error (exit code 3).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path

# The files certify writes into --out (results.jsonl first, certificate.json last).
OUTPUT_NAMES = ("results.jsonl", "report.html", "metrics.prom", "signer.pub", "certificate.json")


class OutputError(RuntimeError):
    """A file could not be written (exit code 3); the message names the path and the error."""


class UnsafeOutput(ValueError):
    """``--out`` or an entry in it is a symbolic link or not a plain file (a usage error)."""


def error_for(path: Path, exc: OSError, what: str = "cannot write") -> OutputError:
    """The :class:`OutputError` for ``exc`` on ``path``: what failed, where, and the OS error."""
    why = exc.strerror or str(exc)
    return OutputError(f"{what} {path}: [Errno {exc.errno}] {why}")


def _write_fd(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (``os.write`` may write less than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def refuse_link(path: Path) -> None:
    """Raise :class:`UnsafeOutput` when ``path`` is a symbolic link or exists as something
    other than a plain file (a folder, a FIFO): certify writes only its own plain files."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise error_for(path, exc, "cannot inspect") from None
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeOutput(
            f"{path} is a symbolic link (to {os.readlink(path)}); certify does not write "
            "through or replace links in --out: remove it or use another folder"
        )
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeOutput(
            f"{path} exists and is not a plain file; remove it or use another folder"
        )


def write_atomic(path: Path, data: bytes | str) -> None:
    """Create or replace ``path`` with ``data`` (str: UTF-8) atomically and durably.

    Raises :class:`UnsafeOutput` for a symbolic link at ``path``, :class:`OutputError` for any
    filesystem failure; on failure the temp file is removed and ``path`` is left as it was."""
    path = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    refuse_link(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, 0o644)
    except OSError as exc:
        raise error_for(path, exc) from None
    try:
        try:
            _write_fd(fd, raw)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise error_for(path, exc) from None


def open_append(path: Path) -> int:
    """A file descriptor that appends to ``path`` (created if missing), never through a link."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(path, flags, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            refuse_link(path)
        raise error_for(path, exc) from None


def append_durably(path: Path, data: bytes) -> None:
    """Append ``data`` to ``path`` and fsync before returning."""
    fd = open_append(path)
    try:
        _write_fd(fd, data)
        os.fsync(fd)
    except OSError as exc:
        raise error_for(path, exc) from None
    finally:
        os.close(fd)


def check_out(out: Path) -> None:
    """Refuse an ``--out`` that cannot hold certify's files, before any probe runs: a symbolic
    link (the folder an operator names is the folder written; give its real path), a path that
    exists and is not a folder (:class:`OutputError`, exit 3), or an output name inside it that
    is a link or not a plain file (:class:`UnsafeOutput`)."""
    out = Path(out)
    if out.is_symlink():
        raise UnsafeOutput(
            f"--out {out} is a symbolic link (to {os.readlink(out)}); pass the real folder "
            f"({out.resolve()}) so that what is written is where the operator looks"
        )
    if out.exists() and not out.is_dir():
        raise error_for(out, NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR)))
    if out.is_dir():
        for name in OUTPUT_NAMES:
            refuse_link(out / name)


def make_out(out: Path) -> Path | None:
    """Create ``out`` (and missing parents). Returns the topmost folder this call created
    (``None`` when ``out`` already existed), so a run that fails at once can remove it again
    with :func:`remove_if_empty`."""
    out = Path(out)
    top = None
    for p in (out, *out.parents):
        if p.exists():
            break
        top = p
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise error_for(out, exc, "cannot create") from None
    return top


def remove_if_empty(created: Path | None, out: Path) -> None:
    """Remove the folders :func:`make_out` created, from ``out`` up to ``created``, while they
    are empty; a folder that holds anything is kept."""
    if created is None:
        return
    for p in (Path(out), *Path(out).parents):
        try:
            p.rmdir()
        except OSError:
            return
        if p == created:
            return


def remove_stale(out: Path) -> None:
    """Delete the previous run's outputs (certificate first) before a new or resumed run
    writes its own, so the folder never pairs an old certificate with new results."""
    for name in ("certificate.json", "report.html", "metrics.prom", "signer.pub"):
        p = Path(out) / name
        refuse_link(p)
        try:
            p.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise error_for(p, exc, "cannot remove") from None
