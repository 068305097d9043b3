"""millkernels: GPU kernels (Triton, CUDA C++) and GPU acceptance benchmarks.

Importing the package is cheap and never touches a GPU; op families load on first use, each
on its own (``import millkernels.quant`` loads quant and nothing of attention, comm or
probes). Namespaces: ``millkernels.attention`` (the function; the family is
``millkernels.ops.attention``), :mod:`millkernels.quant`, :mod:`millkernels.comm`,
:mod:`millkernels.probes`, :mod:`millkernels.runtime`.
"""

from __future__ import annotations

__version__ = "0.1.0"

#: Public submodules: ``import millkernels.X``, ``from millkernels.X import f`` and
#: ``millkernels.X`` all give the same module object.
_MODULES = ("comm", "probes", "quant", "runtime")

#: Public functions and classes, by the module that defines them.
_NAMES = {
    "attention": "millkernels.ops.attention",
    "attention_varlen": "millkernels.ops.attention",
    "attention_decode": "millkernels.ops.attention",
    "BackendUnavailable": "millkernels.dispatch",
}

__all__ = ["__version__", *sorted(_MODULES), *sorted(_NAMES)]


def __getattr__(name: str) -> object:
    import importlib

    if name in _MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return list(__all__)
