"""millkernels: GPU kernels (Triton, CUDA C++) and GPU acceptance benchmarks.

Importing the package is cheap and never touches a GPU; op families load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "probes": "millkernels.ops.probes",
    "comm": "millkernels.ops.comm",
    "quant": "millkernels.quant",
    "runtime": "millkernels.runtime",
}


#: Public functions, by the module that defines them.
_LAZY_FUNCTIONS = {
    "attention": "millkernels.ops.attention",
    "attention_varlen": "millkernels.ops.attention",
    "attention_decode": "millkernels.ops.attention",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return importlib.import_module(_LAZY[name])
    if name in _LAZY_FUNCTIONS:
        return getattr(importlib.import_module(_LAZY_FUNCTIONS[name]), name)
    raise AttributeError(f"module 'millkernels' has no attribute {name!r}")


__all__ = [
    "__version__",
    "attention",
    "attention_decode",
    "attention_varlen",
    "comm",
    "probes",
    "quant",
    "runtime",
]
