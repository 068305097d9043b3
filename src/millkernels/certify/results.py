"""``results.jsonl``: one JSON object per line, appended and fsynced as each step finishes, so
a crash (even ``kill -9``) loses no finished measurement and ``--resume`` can continue.

Line types: ``run`` (the header: profile, mode, GPUs, start time), ``preflight`` (the NVML
inventory), ``probe`` (one probe on one GPU or the node; see ``probes.runner``), ``xid``.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any


class ResultsLog:
    """Append-only, fsynced JSON-lines file; safe to append from several threads."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def reset(self) -> None:
        """Start a fresh file (a new run)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w") as f:
            f.flush()
            os.fsync(f.fileno())

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, sort_keys=True, default=str) + "\n"
        with self._lock, open(self.path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> list[dict[str, Any]]:
        """Every complete line (a last line cut short by a crash is dropped)."""
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out


def latest_probes(records: list[dict[str, Any]]) -> dict[tuple[str, int | None], dict[str, Any]]:
    """The last record of each (probe, gpu)."""
    out: dict[tuple[str, int | None], dict[str, Any]] = {}
    for r in records:
        if r.get("type") == "probe":
            out[(r["probe"], r.get("gpu"))] = r
    return out
