"""Op families, each imported on first use: ``millkernels.ops.quant`` loads quant alone.

Importing a family registers its capability table; :func:`load_all` imports every family
(``millkernels info`` and :func:`tables` need all the tables).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from millkernels.dispatch import CapabilityTable

FAMILIES = ("attention", "comm", "probes", "quant")


def load_all() -> None:
    """Import every op family (registering each one's capability table)."""
    import importlib

    for family in FAMILIES:
        importlib.import_module(f"{__name__}.{family}")


def tables() -> dict[str, CapabilityTable]:
    """Every family's capability table, by family name (imports every family)."""
    from millkernels.dispatch import TABLES

    load_all()
    return dict(TABLES)


def __getattr__(name: str) -> object:
    if name in FAMILIES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["FAMILIES", "load_all", "tables"]
