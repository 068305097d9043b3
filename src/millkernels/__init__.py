"""millkernels: GPU kernels (Triton, CUDA C++) and GPU acceptance benchmarks.

Importing the package is cheap and never touches a GPU; op families load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {"probes": "millkernels.ops.probes", "runtime": "millkernels.runtime"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return importlib.import_module(_LAZY[name])
    raise AttributeError(f"module 'millkernels' has no attribute {name!r}")


__all__ = ["__version__", "probes", "runtime"]
