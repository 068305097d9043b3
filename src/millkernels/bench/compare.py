"""Comparing benchmark results with a stored baseline: the regression gate of GPU CI.

The rule and its results live in :mod:`millkernels.bench.comparison` (re-exported here), the
terminal and markdown reports in :mod:`millkernels.bench.report`; this module runs the two.

Entry points: ``millkernels bench SUITE --compare BASELINE --max-regression 5% [--repeat 3]
[--report-md FILE]`` runs and compares; ``python -m millkernels.bench.compare BASELINE
RESULTS... [--max-regression 5%] [--report-md FILE]`` compares stored results (rows JSONL or
pytest-benchmark JSON). Both exit 1 when a benchmark regressed, 3 when nothing could be
compared (unreadable files, another device, no benchmark in common), else 0.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from millkernels.bench import report
from millkernels.bench.baseline import load_baseline
from millkernels.bench.comparison import (
    DEFAULT_MAX_REGRESSION,
    EXIT_COULD_NOT_RUN,
    EXIT_OK,
    EXIT_REGRESSED,
    EXIT_USAGE,
    IMPROVEMENT,
    MISSING,
    MOVED,
    NEW,
    REGRESSION,
    UNCHANGED,
    WITHIN_NOISE,
    Change,
    Comparison,
    ComparisonError,
    classify,
    compare,
    parse_threshold,
)
from millkernels.bench.rows import Row

__all__ = [
    "DEFAULT_MAX_REGRESSION",
    "EXIT_COULD_NOT_RUN",
    "EXIT_OK",
    "EXIT_REGRESSED",
    "EXIT_USAGE",
    "IMPROVEMENT",
    "MISSING",
    "MOVED",
    "NEW",
    "REGRESSION",
    "UNCHANGED",
    "WITHIN_NOISE",
    "Change",
    "Comparison",
    "ComparisonError",
    "classify",
    "compare",
    "main",
    "parse_threshold",
    "run_comparison",
]


def run_comparison(
    rows: Sequence[Row],
    baseline_path: str | Path,
    *,
    max_regression: float,
    report_md: str | Path | None = None,
    noise_factor: float = 1.0,
    ignore_device: bool = False,
    show_all: bool = False,
    console: Any = None,
) -> int:
    """Compare, print the terminal report, write the markdown one; returns the exit code
    (0 ok, 1 regressed, 3 could not compare). Used by ``millkernels bench --compare``."""
    try:
        comparison = compare(
            load_baseline(baseline_path),
            rows,
            max_regression=max_regression,
            noise_factor=noise_factor,
            ignore_device=ignore_device,
        )
    except (OSError, ValueError, ComparisonError) as exc:
        print(f"compare: cannot compare with {baseline_path}: {exc}", file=sys.stderr)
        if report_md is not None:
            Path(report_md).write_text(report.markdown_error(str(baseline_path), str(exc)))
        return EXIT_COULD_NOT_RUN
    report.print_report(comparison, console=console, show_all=show_all)
    if report_md is not None:
        path = Path(report_md)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(report.markdown(comparison, show_all=show_all), encoding="utf-8")
    return comparison.exit_code()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m millkernels.bench.compare",
        description="Compare stored benchmark results with a baseline; exit 1 on a regression "
        "beyond both the threshold and the measured noise.",
    )
    parser.add_argument("baseline", help="baseline .json (or a results file used as one)")
    parser.add_argument("results", nargs="+", help="rows .jsonl or pytest-benchmark .json")
    parser.add_argument("--max-regression", default="5%", help="e.g. 5%% or 0.05 (default 5%%)")
    parser.add_argument("--noise-factor", type=float, default=1.0, help="scales the noise band")
    parser.add_argument("--report-md", default=None, help="also write a markdown report here")
    parser.add_argument("--ignore-device", action="store_true", help="compare across devices")
    parser.add_argument("--all", action="store_true", help="list unchanged benchmarks too")
    args = parser.parse_args(argv)
    try:
        threshold = parse_threshold(args.max_regression)
    except ValueError as exc:
        parser.print_usage(sys.stderr)
        print(f"compare: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from millkernels.bench.results import load_many

    try:
        rows = load_many(args.results)
    except (OSError, ValueError) as exc:
        print(f"compare: cannot read results: {exc}", file=sys.stderr)
        return EXIT_COULD_NOT_RUN
    return run_comparison(
        rows,
        args.baseline,
        max_regression=threshold,
        report_md=args.report_md,
        noise_factor=args.noise_factor,
        ignore_device=args.ignore_device,
        show_all=args.all,
    )


if __name__ == "__main__":
    raise SystemExit(main())
