"""The ``millkernels`` command.

Exit codes: 0 ok, 1 a check failed, 2 usage error, 3 could not run.
"""

from __future__ import annotations

import json
from enum import Enum

import typer

from millkernels.analyze.cli import analyze
from millkernels.bench.cli import CONTEXT_SETTINGS, bench
from millkernels.certify.cli import certify, keygen, verify

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_COULD_NOT_RUN = 0, 1, 2, 3

app = typer.Typer(
    name="millkernels",
    help="GPU kernels and GPU acceptance benchmarks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from millkernels import __version__

        typer.echo(f"millkernels {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        help="Print the version and exit.",
        is_eager=True,
        callback=_print_version,
    ),
) -> None:
    """GPU kernels and GPU acceptance benchmarks."""


class Format(str, Enum):
    table = "table"
    json = "json"


@app.command()
def info(fmt: Format = typer.Option(Format.table, "--format", help="table or json")) -> None:
    """What this machine has: GPUs, the native extension, Triton, and each op's backends."""
    from millkernels import runtime
    from millkernels.ops import tables

    summary = runtime.summary()
    # Each backend's ``available()``: the same answer, and reason, a call that names it gets.
    summary["families"] = {
        family: {spec.name: spec.available() for spec in table.backends}
        for family, table in sorted(tables().items())
    }
    summary["choices"] = {family: table.choices() for family, table in sorted(tables().items())}
    if fmt is Format.json:
        typer.echo(json.dumps(summary, indent=2))
        return
    from millkernels.info_table import print_info

    print_info(summary)


app.command()(certify)
app.command()(verify)
app.command()(keygen)
app.command()(analyze)
app.command(context_settings=CONTEXT_SETTINGS)(bench)


def main() -> None:
    """Console-script entry point."""
    app()
