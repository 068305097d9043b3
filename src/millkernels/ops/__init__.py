"""Op families, each imported on first use: ``millkernels.ops.quant`` loads quant alone.

Importing a family registers its capability table; :func:`load_all` imports every family
(``millkernels info`` and :func:`millkernels.dispatch.tables` need all the tables).
"""

from __future__ import annotations

FAMILIES = ("attention", "comm", "probes", "quant")


def load_all() -> None:
    """Import every op family (registering each one's capability table)."""
    import importlib

    for family in FAMILIES:
        importlib.import_module(f"{__name__}.{family}")


def __getattr__(name: str) -> object:
    if name in FAMILIES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["FAMILIES", "load_all"]
