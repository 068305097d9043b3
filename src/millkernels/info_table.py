"""The terminal form of ``millkernels info``: the machine, then each op family's backends."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def print_info(summary: dict[str, Any], console: Console | None = None) -> None:
    """Print the runtime summary and every capability table; ``summary["families"]`` holds
    each backend's ``available()`` answer (what ``info --format json`` prints)."""
    from millkernels.ops import tables

    console = console or Console()
    native = summary["native"]
    machine = Table(title="millkernels " + summary["version"], show_header=False)
    machine.add_row("python / torch", f"{summary['python']} / {summary['torch']}")
    machine.add_row("torch CUDA", str(summary["torch_cuda"]))
    machine.add_row("triton", f"{summary['triton']} (interpret={summary['triton_interpret']})")
    if native["built"]:
        built = f"built for {', '.join(native['cuda_archs'])} (CUDA {native['cuda_version']})"
    else:
        built = f"not built: {native['error']}"
    machine.add_row("native extension _C", built)
    gpus = summary["gpus"]
    machine.add_row(
        "GPUs",
        "\n".join(
            f"{g['index']}: {g['name']} ({g['arch']}, {g['memory_bytes'] / 2**30:.0f} GiB)"
            for g in gpus
        )
        or "none",
    )
    console.print(machine)

    ops = Table(title="Op families and backends (auto tries them top to bottom)")
    for col in ("family", "backend", "usable here", "archs", "dtypes", "notes"):
        ops.add_column(col)
    for family, table in sorted(tables().items()):
        usable = summary["families"][family]
        for spec in table.backends:
            why = usable[spec.name]
            ops.add_row(
                family,
                spec.name,
                "yes" if why is None else f"no: {why}",
                spec.archs,
                ", ".join(spec.dtypes),
                spec.notes,
            )
    console.print(ops)
    for family, choices in sorted(summary.get("choices", {}).items()):
        for name, choice in choices.items():
            console.print(f"{family} {name}: {choice}")
