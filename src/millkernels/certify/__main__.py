"""``python -m millkernels.certify keygen|certify|verify``: the same commands as the main
CLI, usable where the console script is not on PATH (containers, torchrun)."""

from __future__ import annotations

import typer

from millkernels.certify.cli import certify, keygen, verify

app = typer.Typer(
    name="millkernels-certify",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command()(keygen)
app.command()(certify)
app.command()(verify)

if __name__ == "__main__":
    app()
