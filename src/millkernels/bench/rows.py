"""Result rows: one timed case of a benchmark, with everything needed to reproduce and
compare it, stored as JSON lines.

A row's identity for comparisons across runs is :meth:`Row.key` (suite, op, shape, dtype,
backend); timings are medians with p20/p80 so a comparison can weigh the noise.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

#: Bumped when a field changes meaning; readers accept older rows and keep unknown keys.
SCHEMA = 1


@dataclass
class Row:
    """One benchmark result. Times in microseconds; rates in TFLOP/s and GB/s (1e9 B/s)."""

    op: str
    shape: str | dict[str, Any]
    dtype: str
    backend: str
    median_us: float
    p20_us: float
    p80_us: float
    n: int = 0
    suite: str = ""
    timer: str = ""
    flops: float | None = None
    bytes: int | None = None
    tflops: float | None = None
    gbps: float | None = None
    ceiling: str | None = None
    ceiling_value: float | None = None
    pct_of_ceiling: float | None = None
    baseline: str | None = None
    baseline_us: float | None = None
    ratio_to_baseline: float | None = None
    config: dict[str, Any] | str | None = None
    device: str = "cpu"
    clocks: dict[str, Any] | None = None
    power_limit_w: float | None = None
    driver: str | None = None
    versions: dict[str, Any] = field(default_factory=dict)
    git_sha: str = "unknown"
    command: str = ""
    timestamp: str = ""
    notes: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    schema: int = SCHEMA

    def key(self) -> tuple[str, str, str, str, str]:
        """What makes two rows the same case: (suite, op, shape, dtype, backend)."""
        return (self.suite, self.op, shape_str(self.shape), self.dtype, self.backend)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Row:
        """Build a row from a dict; keys this version does not know go into ``extra``. A
        missing timing (``null``: a case that failed) reads back as NaN."""
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        for k in _TIMES:
            if k in kwargs and kwargs[k] is None:
                kwargs[k] = math.nan
        unknown = {k: v for k, v in data.items() if k not in known}
        if unknown:
            kwargs["extra"] = {**dict(kwargs.get("extra") or {}), **unknown}
        return cls(**kwargs)


def shape_str(shape: str | dict[str, Any]) -> str:
    """A shape as short text: dicts become ``k=v,k=v`` in their order."""
    if isinstance(shape, dict):
        return ",".join(f"{k}={v}" for k, v in shape.items())
    return str(shape)


_TIMES = ("median_us", "p20_us", "p80_us")


def _strict(value: Any) -> Any:
    """``value`` with NaN and infinities as None: strict JSON has no token for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def dumps(row: Row) -> str:
    """One row as one line of strict JSON (no newline; NaN and infinities become null)."""
    return json.dumps(_strict(row.to_dict()), separators=(",", ":"), allow_nan=False)


def write_jsonl(path: str | Path, rows: Iterable[Row], *, append: bool = True) -> int:
    """Write ``rows`` to ``path`` as JSON lines (appending by default); returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("a" if append else "w", encoding="utf-8") as f:
        for row in rows:
            f.write(dumps(row) + "\n")
            count += 1
    return count


class JsonlWriter:
    """Appends rows to a file one at a time, flushed, so a run cut short keeps its rows."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.count = 0

    def __call__(self, row: Row) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(dumps(row) + "\n")
        self.count += 1


def iter_jsonl(path: str | Path) -> Iterator[Row]:
    """Rows of a JSON-lines file; blank lines are skipped, a bad line raises ValueError."""
    with Path(path).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not JSON: {exc}") from exc
            if not isinstance(data, dict):
                raise ValueError(f"{path}:{lineno}: expected an object")
            yield Row.from_dict(data)


def read_jsonl(path: str | Path) -> list[Row]:
    """All rows of a JSON-lines file."""
    return list(iter_jsonl(path))
