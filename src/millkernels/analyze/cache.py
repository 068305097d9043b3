"""A content-addressed cache of the compiler tools' outputs (ptxas/nvcc logs, SASS text).

Compiling every kernel for a ``GPUTarget`` is cached by Triton itself, but ``ptxas -v`` and
the disassembler run again on every ``analyze`` (about a minute of CPU on two cores for the
whole package). Their outputs depend only on their inputs, so they are stored under a key
made of everything that decides them: the input bytes, the command line without its scratch
paths, and each tool's identity (path, size, modification time).

The cache lives in ``$MILLKERNELS_ANALYZE_CACHE`` (a folder), else
``$XDG_CACHE_HOME/millkernels/analyze`` (default ``~/.cache/...``);
``MILLKERNELS_ANALYZE_CACHE=off`` turns it off. Only the raw tool outputs are stored, so a
change in how they are parsed or judged never reads a stale verdict. A cache that cannot be
read or written is skipped, never an error.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

ENV = "MILLKERNELS_ANALYZE_CACHE"
VERSION = "1"  # bump when what is stored changes

Outputs = dict[str, str | int]


def cache_dir() -> Path | None:
    """The cache folder, or None when the cache is off."""
    setting = os.environ.get(ENV, "").strip()
    if setting.lower() in ("0", "off", "false", "no"):
        return None
    if setting:
        return Path(setting)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "millkernels" / "analyze"


def tool_identity(path: str | Path) -> str:
    """A tool's path, size and modification time: a new toolkit gives a new key."""
    try:
        st = os.stat(path)
    except OSError:
        return f"{path}:missing"
    return f"{path}:{st.st_size}:{st.st_mtime_ns}"


def key(*parts: str | bytes) -> str:
    """The sha256 of ``parts`` (each length-prefixed, so no two lists share a key)."""
    h = hashlib.sha256(VERSION.encode())
    for p in parts:
        data = p.encode() if isinstance(p, str) else p
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def cached(k: str, produce: Callable[[], Outputs]) -> Outputs:
    """The outputs stored under ``k``, else ``produce()`` (stored when it succeeds)."""
    folder = cache_dir()
    path = folder / k[:2] / f"{k}.json" if folder is not None else None
    if path is not None:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            pass
    outputs = produce()
    if path is not None:
        _store(path, outputs)
    return outputs


def _store(path: Path, outputs: Outputs) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            json.dump(outputs, f)
        os.replace(tmp, path)
    except OSError:
        pass
