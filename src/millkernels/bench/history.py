"""A benchmark's history across stored result files, as a matplotlib plot.

::

    python -m millkernels.bench.history benchmarks/results/*.jsonl --op mem_copy \\
        --backend triton --out mem_copy.png
    python -m millkernels.bench.history results/*.jsonl pytest-*.json --op matmul --metric tflops

Every row that matches the filters is one point (its ``timestamp`` on the x axis, falling back
to the file order); rows that differ in suite, shape, dtype, backend or device form separate
lines. Times are drawn as the median with a p20..p80 bar; ``--metric gbps|tflops`` draws the
rate instead. Reads rows JSONL and pytest-benchmark JSON (:mod:`millkernels.bench.results`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from millkernels.bench.results import load_rows
from millkernels.bench.rows import Row, shape_str

METRICS = {"time": "median time (us)", "gbps": "GB/s", "tflops": "TFLOP/s"}


@dataclass(frozen=True)
class Point:
    """One stored measurement of a benchmark."""

    when: datetime | None
    order: int
    value: float
    low: float | None
    high: float | None
    git_sha: str
    source: str


def _when(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None
    except ValueError:
        return None


def _value(row: Row, metric: str) -> tuple[float | None, float | None, float | None]:
    if metric == "time":
        return row.median_us, row.p20_us, row.p80_us
    return (row.gbps if metric == "gbps" else row.tflops), None, None


def matches(row: Row, **filters: str | None) -> bool:
    """True when every given filter (suite, op, shape, dtype, backend, device) equals the row's
    field (shape compared as ``k=v,...`` text)."""
    for name, wanted in filters.items():
        if wanted is None:
            continue
        have = shape_str(row.shape) if name == "shape" else getattr(row, name)
        if str(have) != wanted:
            return False
    return True


def load_history(
    paths: Iterable[str | Path], *, metric: str = "time", **filters: str | None
) -> dict[str, list[Point]]:
    """Points per series label for the rows of ``paths`` that match ``filters``, in time order.

    Raises ``ValueError`` for an unknown metric or filter, ``OSError`` for unreadable files.
    """
    if metric not in METRICS:
        raise ValueError(f"metric: expected one of {tuple(METRICS)}, got {metric!r}")
    allowed = {"suite", "op", "shape", "dtype", "backend", "device"}
    if set(filters) - allowed:
        raise ValueError(
            f"filters: unknown {sorted(set(filters) - allowed)}; use {sorted(allowed)}"
        )
    found: list[tuple[Row, int, str]] = []
    order = 0
    for path in paths:
        for row in load_rows(path):
            if matches(row, **filters):
                found.append((row, order, str(path)))
            order += 1
    varying = [
        f
        for f in ("suite", "op", "shape", "dtype", "backend", "device")
        if len({shape_str(r.shape) if f == "shape" else getattr(r, f) for r, _, _ in found}) > 1
    ]
    series: dict[str, list[Point]] = {}
    for row, i, source in found:
        value, low, high = _value(row, metric)
        if value is None:
            continue
        parts = [shape_str(row.shape) if f == "shape" else str(getattr(row, f)) for f in varying]
        label = " ".join(parts) or f"{row.op} {row.backend}".strip()
        point = Point(_when(row.timestamp), i, value, low, high, row.git_sha, source)
        series.setdefault(label, []).append(point)
    for points in series.values():
        if all(p.when is not None for p in points):
            points.sort(key=lambda p: (p.when, p.order))
        else:
            points.sort(key=lambda p: p.order)
    return series


def plot_history(
    series: dict[str, list[Point]],
    *,
    metric: str = "time",
    title: str = "",
    ax: Any = None,
    log: bool = False,
) -> Any:
    """Draw ``series`` (from :func:`load_history`) on ``ax`` (a new figure when None); returns
    the figure. A point is labelled with its git sha (7 characters) where the sha changes."""
    if ax is None:  # a Figure without pyplot: no GUI backend, no global state
        from matplotlib.figure import Figure

        fig = Figure(figsize=(9, 4.5))
        ax = fig.subplots()
    else:
        fig = ax.figure
    by_time = all(p.when is not None for pts in series.values() for p in pts)
    for label, points in series.items():
        xs = [p.when if by_time else p.order for p in points]
        ys = [p.value for p in points]
        if metric == "time" and all(p.low is not None and p.high is not None for p in points):
            yerr = [[p.value - p.low for p in points], [p.high - p.value for p in points]]  # type: ignore[operator]
            ax.errorbar(xs, ys, yerr=yerr, marker="o", capsize=3, label=label)
        else:
            ax.plot(xs, ys, marker="o", label=label)
        previous = None
        for x, p in zip(xs, points, strict=True):  # label where the commit changes
            sha = p.git_sha[:7] if p.git_sha and p.git_sha != "unknown" else ""
            if sha and sha != previous:
                ax.annotate(sha, (x, p.value), textcoords="offset points", xytext=(0, 6),
                            fontsize=7, ha="center")  # fmt: skip
            previous = sha
    if log:
        ax.set_yscale("log")
    ax.set_ylabel(METRICS[metric])
    ax.set_xlabel("time of the run" if by_time else "order in the files")
    ax.set_title(title or "benchmark history")
    ax.grid(True, alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    if by_time:
        fig.autofmt_xdate()
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m millkernels.bench.history")
    parser.add_argument("results", nargs="+", help="rows .jsonl or pytest-benchmark .json")
    parser.add_argument("--op", required=True)
    for name in ("suite", "shape", "dtype", "backend", "device"):
        parser.add_argument(f"--{name}", default=None)
    parser.add_argument("--metric", default="time", choices=tuple(METRICS))
    parser.add_argument("--log", action="store_true", help="logarithmic y axis")
    parser.add_argument("--out", default="history.png", help="image file (png, svg, pdf)")
    args = parser.parse_args(argv)
    filters = {k: getattr(args, k) for k in ("suite", "op", "shape", "dtype", "backend", "device")}
    try:
        series = load_history(args.results, metric=args.metric, **filters)
    except (OSError, ValueError) as exc:
        print(f"history: {exc}", file=sys.stderr)
        return 3
    if not series:
        print(f"history: no rows match {filters}", file=sys.stderr)
        return 3
    title = " ".join(f"{k}={v}" for k, v in filters.items() if v)
    fig = plot_history(series, metric=args.metric, title=title, log=args.log)
    fig.savefig(args.out, dpi=120, bbox_inches="tight")
    points = sum(len(p) for p in series.values())
    print(f"history: {len(series)} series, {points} points -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
