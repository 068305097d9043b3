"""``millkernels bench``: list the suites, or run one (or ``all``) and print/store rows.

Exit codes: 0 ok, 1 a check failed (a benchmark's result was wrong) or, with ``--compare``,
a benchmark regressed (see :mod:`millkernels.bench.compare`), 2 usage error, 3 could not run
(a suite errored, or cannot run on this machine, or nothing could be compared).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from millkernels.bench.runner import EXIT_COULD_NOT_RUN, EXIT_OK, EXIT_USAGE

FORMATS = ("table", "json")
DEVICES = ("auto", "cuda", "cpu")


def _err(message: str) -> None:
    typer.echo(message, err=True)


def _list_suites(fmt: str) -> None:
    from millkernels.bench import registry

    found, broken = registry.suites(), registry.broken()
    if fmt == "json":
        items = [
            {"name": s.name, "description": s.description, "module": s.module}
            for s in found.values()
        ]
        typer.echo(json.dumps({"suites": items, "broken": broken}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="benchmark suites (`millkernels bench NAME`, or `all`)")
    table.add_column("suite")
    table.add_column("description")
    for s in found.values():
        table.add_row(s.name, s.description)
    for module, error in broken.items():
        table.add_row(f"[red]{module}[/red]", f"[red]import failed: {error}[/red]")
    Console().print(table)


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        _err("bench: --device cuda, but no CUDA GPU is visible")
        raise typer.Exit(EXIT_COULD_NOT_RUN)
    return device


#: ``millkernels bench comm ...`` takes nccl-tests' own flags (``-b 8 -e 1G -f 2``); the main
#: CLI registers :func:`bench` with these settings so they reach it.
CONTEXT_SETTINGS = {"allow_extra_args": True, "ignore_unknown_options": True}


def bench(
    ctx: typer.Context,
    suite: str | None = typer.Argument(
        None, help="Suite to run, or 'all' for every suite. Omit to list the suites."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Append the rows to this file (JSON lines)."
    ),
    fmt: str = typer.Option("table", "--format", help="table or json (rows as a JSON list)."),
    list_: bool = typer.Option(False, "--list", help="List the suites and exit."),
    quick: bool = typer.Option(False, "--quick", help="Smaller sizes and shorter timing."),
    device: str = typer.Option("auto", "--device", help="auto, cuda or cpu."),
    repeat: int = typer.Option(1, "--repeat", help="Run the suites N times (noise for --compare)."),
    compare: Path | None = typer.Option(
        None, "--compare", help="Baseline to compare with (benchmarks/baselines/<sku>.json)."
    ),
    max_regression: str = typer.Option(
        "5%", "--max-regression", help="With --compare: fail beyond this and the noise."
    ),
    report_md: Path | None = typer.Option(
        None, "--report-md", help="With --compare: write the comparison as markdown here."
    ),
) -> None:
    """Run benchmark suites: medians with p20/p80, GB/s and TFLOP/s, % of the measured
    ceilings, and the ratio to a baseline timed in the same run."""
    if suite == "comm":  # launched per rank by torchrun; nccl-tests' flags and columns
        from millkernels.bench.suites.comm_cli import comm_bench_main

        argv = [*ctx.args, "--format", fmt, "--device", device]
        raise typer.Exit(comm_bench_main(argv))
    if ctx.args:
        _err(f"bench: unexpected arguments {ctx.args} (only 'bench comm' takes extra flags)")
        raise typer.Exit(EXIT_USAGE)
    if fmt not in FORMATS or device not in DEVICES:
        _err(f"bench: --format must be one of {FORMATS}, --device one of {DEVICES}")
        raise typer.Exit(EXIT_USAGE)
    from millkernels.bench.compare import parse_threshold

    try:
        threshold = parse_threshold(max_regression)
    except ValueError as exc:
        _err(f"bench: --max-regression: {exc}")
        raise typer.Exit(EXIT_USAGE) from None
    if repeat < 1 or (compare is not None and not compare.is_file()):
        _err(f"bench: --repeat must be >= 1 and --compare an existing file ({compare})")
        raise typer.Exit(EXIT_USAGE)
    if list_ or suite is None:
        _list_suites(fmt)
        raise typer.Exit(EXIT_OK)

    from millkernels.bench import registry

    known = registry.suites()
    if suite != "all" and suite not in known:
        _err(f"bench: no suite {suite!r}; known: {', '.join(known) or 'none'} (or 'all')")
        raise typer.Exit(EXIT_USAGE)
    names = list(known) if suite == "all" else [suite]
    code = _run(
        names,
        explicit=suite != "all",
        out=out,
        fmt=fmt,
        quick=quick,
        device=device,
        repeat=repeat,
        compare=compare,
        threshold=threshold,
        report_md=report_md,
    )
    raise typer.Exit(code)


def _run(
    names: list[str],
    *,
    explicit: bool,
    out: Path | None,
    fmt: str,
    quick: bool,
    device: str,
    repeat: int = 1,
    compare: Path | None = None,
    threshold: float = 0.05,
    report_md: Path | None = None,
) -> int:
    """Run ``names`` and report; returns the exit code."""
    from millkernels.bench import registry
    from millkernels.bench.context import BenchContext
    from millkernels.bench.rows import JsonlWriter, dumps, shape_str
    from millkernels.bench.runner import run_suites
    from millkernels.bench.summary import print_summary

    extra = (["--quick"] if quick else []) + ([] if device == "auto" else ["--device", device])
    ctx = BenchContext(device=_resolve_device(device), quick=quick)
    writer = JsonlWriter(out) if out is not None else None

    def on_row(row) -> None:
        if writer is not None:
            writer(row)
        rate = f"{row.gbps:,.1f} GB/s" if row.gbps else f"{row.tflops or 0:,.1f} TFLOP/s"
        shape = shape_str(row.shape)
        _err(f"  {row.suite} {row.op} [{shape}] {row.backend}: {row.median_us:,.1f} us, {rate}")

    _err(f"bench: {', '.join(names)} on {ctx.device}{' (quick)' if quick else ''}")
    report = run_suites(names, ctx, extra_args=extra, explicit=explicit, on_row=on_row)
    for _ in range(repeat - 1):  # repeated runs: each row of a key is one run for --compare
        again = run_suites(names, ctx, extra_args=extra, explicit=explicit, on_row=on_row)
        report.rows += again.rows
        report.failures += again.failures
        report.errors.update(again.errors)
    if not explicit:  # `bench all`: a suite module that failed to import is an error
        for module, error in registry.broken().items():
            report.errors[module] = f"import failed: {error}"

    if fmt == "json":
        typer.echo("[" + ",\n".join(dumps(r) for r in report.rows) + "]")
    elif report.rows:
        print_summary(report.rows)
    if writer is not None:
        _err(f"bench: appended {writer.count} rows to {out}")
    for name, error in {**report.unavailable, **report.errors}.items():
        _err(f"bench: {name}: {error}")
    for failure in report.failures:
        _err(f"bench: FAILED {failure}")
    sys.stderr.flush()
    code = report.exit_code()
    if compare is not None and report.rows:
        from millkernels.bench.compare import run_comparison

        compared = run_comparison(
            report.rows,
            compare,
            max_regression=threshold,
            report_md=report_md,
            console=_stderr_console() if fmt == "json" else None,
        )
        code = 1 if 1 in (code, compared) else max(code, compared)  # 1 beats 3 beats 0
    return code


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True, width=140)
