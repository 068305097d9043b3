"""A summary table of result rows (rich), and ``python -m millkernels.bench.summary FILE...``
to print one from JSON-lines files."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Any

from millkernels.bench.rows import Row, read_jsonl, shape_str


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _shape(shape: Any) -> str:
    """Bytes shown in MiB/GiB; other shapes as ``k=v``."""
    if isinstance(shape, dict) and "bytes" in shape:
        rest = {k: v for k, v in shape.items() if k != "bytes"}
        n = int(shape["bytes"])
        size = f"{n / 2**30:g} GiB" if n >= 2**30 else f"{n / 2**20:g} MiB"
        return ",".join([size, *(f"{v}" for v in rest.values())])
    return shape_str(shape)


def summary_table(rows: Iterable[Row], title: str | None = None) -> Any:
    """A rich Table with one line per row."""
    from rich.table import Table

    rows = list(rows)
    devices = sorted({r.device for r in rows})
    table = Table(title=title or f"millkernels bench: {', '.join(devices) or 'no rows'}")
    for name, justify in [
        ("suite", "left"), ("op", "left"), ("shape", "left"), ("dtype", "left"),
        ("backend", "left"), ("median us", "right"), ("p20-p80 us", "right"),
        ("TFLOP/s", "right"), ("GB/s", "right"), ("% ceiling", "right"), ("vs baseline", "right"),
    ]:  # fmt: skip
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        pct = "-" if r.pct_of_ceiling is None else f"{r.pct_of_ceiling:.1f}% {r.ceiling}"
        ratio = "-" if r.ratio_to_baseline is None else f"{r.ratio_to_baseline:.2f}x {r.baseline}"
        table.add_row(
            r.suite, r.op, _shape(r.shape), r.dtype, r.backend,
            _num(r.median_us), f"{_num(r.p20_us)}-{_num(r.p80_us)}",
            _num(r.tflops), _num(r.gbps), pct, ratio,
        )  # fmt: skip
    return table


def print_summary(rows: Iterable[Row], *, title: str | None = None, console: Any = None) -> None:
    """Print :func:`summary_table` to ``console`` (default: stdout, wide enough not to wrap)."""
    from rich.console import Console

    console = console or Console(width=max(160, Console().width))
    console.print(summary_table(rows, title))


def main(argv: Sequence[str] | None = None) -> int:
    """Print the summary of the JSON-lines files named on the command line."""
    paths = list(sys.argv[1:] if argv is None else argv)
    if not paths:
        print("usage: python -m millkernels.bench.summary RESULTS.jsonl...", file=sys.stderr)
        return 2
    rows: list[Row] = []
    for p in paths:
        try:
            rows += read_jsonl(p)
        except (OSError, ValueError) as exc:
            print(f"cannot read {p}: {exc}", file=sys.stderr)
            return 3
    print_summary(rows, title=", ".join(paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
