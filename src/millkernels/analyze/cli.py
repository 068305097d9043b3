"""``millkernels analyze``: offline compile report of every kernel (no GPU needed).

The lead's ``millkernels/cli.py`` mounts :func:`analyze` with ``app.command()(analyze)``.
"""

from __future__ import annotations

import json

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
        "to compile.",
    ),
) -> None:
    """Compile every kernel for an architecture, without a GPU, and report registers, spills,
    shared memory and tensor-core instructions (wgmma = HGMMA, mma = HMMA).

    Exit codes: 0 ok, 1 a hot kernel failed (--check), 2 usage error, 3 no compiler at all.
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

    result = analyze_kernels(target, hot_only=hot_only)
    if fmt == "json":
        typer.echo(json.dumps([r.to_json() for r in result.reports], indent=2))
    else:
        print_table(result, check=check)
    code = result.exit_code(check)
    if code == 3:
        typer.echo(
            f"analyze: no compiler toolchain: {result.triton_missing}; {result.cuda_missing}",
            err=True,
        )
    raise typer.Exit(code)


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
    arch = result.arch
    table = Table(
        title=f"millkernels analyze {arch.name} (code for {arch.gpu_name}, at most "
        f"{arch.max_shared_per_block // 1024} KiB shared memory per block)",
        title_justify="left",
    )
    table.add_column("kernel", no_wrap=True)
    table.add_column("backend")
    table.add_column("variant", overflow="fold")
    table.add_column("regs", justify="right")
    table.add_column("spill B", justify="right")
    table.add_column("smem KiB", justify="right")
    table.add_column("tensor cores")
    table.add_column("hot")
    table.add_column("status", no_wrap=True)
    style = {"ok": "green", "spills": "yellow", "smem_overflow": "red", "error": "red"}
    problems = []
    for r in result.reports:
        color = "bold red" if r.failed else style.get(r.status, "dim")
        ops = " ".join(f"{op}x{n}" for op, n in r.tensor_core_counts.items())
        if r.tma:
            ops = f"{ops} TMA".strip()
        if not ops:
            ops = "-" if r.registers is None else "none"
        table.add_row(
            _escape(r.kernel),
            r.backend,
            _escape(r.variant),
            "-" if r.registers is None else str(r.registers),
            "-" if r.spill_bytes is None else str(r.spill_bytes),
            _kib(r.shared_bytes),
            ops,
            "hot" if r.hot else "",
            f"[{color}]{r.status}[/]",
        )
        if r.reason and r.status != "ok":
            where = f"{r.kernel} [{r.variant}]" if r.variant else r.kernel
            problems.append(f"[{color}]{_escape(where)}[/]: {_escape(r.reason[:600])}")
    console = Console()
    console.print(table)
    for p in problems:
        console.print(p)
    counts: dict[str, int] = {}
    for r in result.reports:
        counts[r.status] = counts.get(r.status, 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no kernels"
    failures = result.failures
    line = f"{len(result.reports)} kernel variants: {summary}."
    if failures:
        names = ", ".join(sorted({f.kernel for f in failures}))
        line += f" [bold red]{len(failures)} hot kernel variant(s) fail: {_escape(names)}[/]"
    elif check:
        line += " [green]Every hot kernel passes.[/]"
    console.print(line)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
