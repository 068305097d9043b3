"""``millkernels analyze``: offline compile report of every kernel (no GPU needed).

``millkernels/cli.py`` mounts :func:`analyze` with ``app.command()(analyze)``.

A run takes tens of seconds, so it shows its progress: on a terminal a live status line on
stderr, then the table; piped, one line per kernel variant as it finishes (:func:`report_line`)
instead of a table wrapped to 80 columns. With ``--format json`` stdout holds only the JSON and
the progress goes to stderr.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any

import typer

FORMATS = ("table", "json")


def analyze(
    arch: str = typer.Option(
        "sm_90", "--arch", help="Target architecture: sm_90 (compiled as sm_90a) or sm_80."
    ),
    fmt: str = typer.Option("table", "--format", help="table or json."),
    hot_only: bool = typer.Option(False, "--hot-only", help="Only kernels marked hot."),
    check: bool = typer.Option(
        False,
        "--check",
        help="Exit 1 when a hot kernel spills registers, overflows shared memory or fails "
        "to compile, or when a declared Expect does not hold.",
    ),
    kernel: list[str] = typer.Option(
        [],
        "--kernel",
        help="Only kernels whose name contains this (repeatable, or a comma list).",
    ),
) -> None:
    """Compile every kernel for an architecture, without a GPU, and report registers, spills,
    shared memory and tensor-core instructions (wgmma = HGMMA, mma = HMMA).

    Exit codes: 0 ok, 1 a hot kernel or an Expect failed (--check), 2 usage error, 3 no
    compiler at all.
    """
    from millkernels.analyze.core import analyze_kernels
    from millkernels.analyze.report import parse_arch

    try:
        target = parse_arch(arch)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--arch") from None
    if fmt not in FORMATS:
        raise typer.BadParameter(
            f"{fmt!r} is not one of {', '.join(FORMATS)}", param_hint="--format"
        )

    only = [part.strip() for k in kernel for part in k.split(",") if part.strip()] or None
    lines = fmt == "table" and not sys.stdout.isatty()
    if lines:
        typer.echo(_title(target))
    with _progress(to_stdout=lines) as on_report:
        result = analyze_kernels(target, hot_only=hot_only, on_report=on_report, only=only)
    if fmt == "json":
        typer.echo(json.dumps([r.to_json() for r in result.reports], indent=2))
    elif lines:
        print_summary(result, check=check)
    else:
        print_table(result, check=check)
    code = result.exit_code(check)
    if code == 3:
        typer.echo(
            f"analyze: no compiler toolchain: {result.triton_missing}; {result.cuda_missing}",
            err=True,
        )
    raise typer.Exit(code)


@contextlib.contextmanager
def _progress(*, to_stdout: bool) -> Iterator[Callable[[Any], None]]:
    """The ``on_report`` callback that shows each finished report: its line on stdout
    (``to_stdout``), else on stderr: a live status line on a terminal, its line when piped."""
    if to_stdout or not sys.stderr.isatty():
        yield lambda report: typer.echo(report_line(report), err=not to_stdout)
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    done = 0
    columns = (SpinnerColumn(), TimeElapsedColumn(), TextColumn("{task.description}"))
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("compiling kernels offline", total=None)

        def show(report: Any) -> None:
            nonlocal done
            done += 1
            bar.update(task, description=f"{done} kernel variants done; last: {_name(report)}")

        yield show


def _name(report: Any) -> str:
    return f"{report.kernel} [{report.variant}]" if report.variant else report.kernel


def report_line(report: Any) -> str:
    """One finished report as one plain line: status, backend, kernel [variant], registers,
    spill bytes, shared KiB, tensor-core instructions, "hot", and the reason's first line."""
    regs = "-" if report.registers is None else report.registers
    spill = "-" if report.spill_bytes is None else report.spill_bytes
    line = (
        f"{report.status:<13} {report.backend:<6} {_name(report)} regs={regs} "
        f"spill_B={spill} smem_KiB={_kib(report.shared_bytes)} tc={_tensor_cores(report)}"
    )
    if report.hot:
        line += " hot"
    if report.expect_failures:
        line += f" expect_failed={len(report.expect_failures)}"
    if report.reason and report.status != "ok":
        first = report.reason.strip().splitlines()[0] if report.reason.strip() else ""
        line += f" -- {first[:200]}"
    return line


def _tensor_cores(report: Any) -> str:
    """``wgmmax12 TMA``-style instruction counts; "none" when compiled without any."""
    ops = " ".join(f"{op}x{n}" for op, n in report.tensor_core_counts.items())
    if report.tma:
        ops = f"{ops} TMA".strip()
    return ops or ("-" if report.registers is None else "none")


def _title(arch: Any) -> str:
    return (
        f"millkernels analyze {arch.name} (code for {arch.gpu_name}, at most "
        f"{arch.max_shared_per_block // 1024} KiB shared memory per block)"
    )


def _kib(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1024:.1f}" if n % 1024 else str(n // 1024)


def print_table(result: object, *, check: bool = False) -> None:
    """The reports as a rich table on stdout, then the reasons of every problem."""
    from rich.console import Console
    from rich.table import Table

    from millkernels.analyze.core import Analysis

    assert isinstance(result, Analysis)
    table = Table(title=_title(result.arch), title_justify="left")
    table.add_column("kernel", no_wrap=True)
    table.add_column("backend")
    table.add_column("variant", overflow="fold")
    table.add_column("regs", justify="right")
    table.add_column("spill B", justify="right")
    table.add_column("smem KiB", justify="right")
    table.add_column("tensor cores")
    table.add_column("hot")
    table.add_column("status", no_wrap=True)
    for r in result.reports:
        table.add_row(
            _escape(r.kernel),
            r.backend,
            _escape(r.variant),
            "-" if r.registers is None else str(r.registers),
            "-" if r.spill_bytes is None else str(r.spill_bytes),
            _kib(r.shared_bytes),
            _tensor_cores(r),
            "hot" if r.hot else "",
            f"[{_color(r)}]{r.status}{' expect!' if r.expect_failures else ''}[/]",
        )
    Console().print(table)
    print_summary(result, check=check)


def _color(report: Any) -> str:
    style = {"ok": "green", "spills": "yellow", "smem_overflow": "red", "error": "red"}
    return "bold red" if report.failed else style.get(report.status, "dim")


def print_summary(result: Any, *, check: bool = False) -> None:
    """The reason of every problem, then the counts by status (and --check's verdict)."""
    from rich.console import Console

    from millkernels.analyze.expect import describe

    console = Console(soft_wrap=True)  # piped: long reasons stay whole lines
    problems = [
        f"[{_color(r)}]{_escape(_name(r))}[/]: {_escape(r.reason[:600])}"
        for r in result.reports
        if r.reason and r.status != "ok"
    ]
    problems += [
        f"[bold red]{_escape(_name(r))}[/]: Expect fails: {_escape(describe(row))}"
        for r in result.reports
        for row in r.expect_failures
    ]
    for p in problems:
        console.print(p)
    counts: dict[str, int] = {}
    for r in result.reports:
        counts[r.status] = counts.get(r.status, 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no kernels"
    failures = result.failures
    line = f"{len(result.reports)} kernel variants: {summary}."
    expects = [row for r in result.reports for row in r.expect]
    if expects:
        held = sum(1 for row in expects if row["holds"])
        skipped = sum(1 for row in expects if row["skipped"])
        line += f" Expects: {held} hold, {len(expects) - held - skipped} fail, {skipped} skipped."
    if failures:
        names = ", ".join(sorted({f.kernel for f in failures}))
        line += f" [bold red]{len(failures)} kernel variant(s) fail: {_escape(names)}[/]"
    elif check:
        line += " [green]Every hot kernel and Expect passes.[/]"
    console.print(line)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
