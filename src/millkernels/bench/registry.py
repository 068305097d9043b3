"""The suite registry: a suite is a name and a function ``fn(ctx) -> Iterable[Row]``.

A family adds a suite without touching the CLI or the campaign script: a module
``millkernels/bench/suites/<name>.py`` that registers at import time::

    from millkernels.bench import BenchContext, suite

    @suite("attention", description="attention forward/backward vs SDPA")
    def attention(ctx: BenchContext):
        ...
        yield ctx.row(op=..., shape=..., dtype=..., backend=..., timing=...)

:func:`suites` imports those modules on first use; a module that fails to import is listed
by :func:`broken` (and ``bench all`` reports it) instead of breaking the others.
"""

from __future__ import annotations

import importlib
import pkgutil
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from millkernels.bench.context import BenchContext
    from millkernels.bench.rows import Row

SuiteFn = Callable[["BenchContext"], Iterable["Row"]]


@dataclass(frozen=True)
class Suite:
    """A named benchmark suite. Lower ``order`` runs first in ``bench all``."""

    name: str
    fn: SuiteFn
    description: str = ""
    order: int = 100

    @property
    def module(self) -> str:
        return getattr(self.fn, "__module__", "?")


_SUITES: dict[str, Suite] = {}
_BROKEN: dict[str, str] = {}
_discovered = False

RESERVED = ("all",)


def register_suite(name: str, fn: SuiteFn, *, description: str = "", order: int = 100) -> Suite:
    """Register ``fn`` as suite ``name``; re-registering the same function is a no-op."""
    if not name or name in RESERVED or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"suite name: expected letters, digits, '-' or '_', got {name!r}")
    old = _SUITES.get(name)
    if old is not None and (old.module, old.fn.__qualname__) != (fn.__module__, fn.__qualname__):
        raise ValueError(f"suite {name!r} is already registered by {old.module}")
    doc = description or (fn.__doc__ or "").strip().split("\n")[0]
    _SUITES[name] = Suite(name, fn, doc, order)
    return _SUITES[name]


def suite(name: str, *, description: str = "", order: int = 100) -> Callable[[SuiteFn], SuiteFn]:
    """Decorator form of :func:`register_suite`."""

    def wrap(fn: SuiteFn) -> SuiteFn:
        register_suite(name, fn, description=description, order=order)
        return fn

    return wrap


def suite_modules() -> list[str]:
    """The modules of ``millkernels.bench.suites``, found on disk without importing them.
    Kernels live below the benchmarks: nothing under ``millkernels.ops`` is searched."""
    import millkernels.bench.suites as builtin

    found = sorted(m.name for m in pkgutil.iter_modules(builtin.__path__))
    return [f"{builtin.__name__}.{name}" for name in found]


def discover() -> None:
    """Import every suite module once (errors are kept for :func:`broken`)."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    for module in suite_modules():
        try:
            importlib.import_module(module)
        except Exception as exc:
            _BROKEN[module] = "".join(traceback.format_exception_only(type(exc), exc)).strip()


def suites() -> dict[str, Suite]:
    """Every registered suite, in run order (``order``, then name)."""
    discover()
    return {s.name: s for s in sorted(_SUITES.values(), key=lambda s: (s.order, s.name))}


def broken() -> dict[str, str]:
    """Suite modules that failed to import: module name -> error."""
    discover()
    return dict(_BROKEN)


def get(name: str) -> Suite:
    """The suite called ``name``; KeyError listing the known names otherwise."""
    found = suites()
    if name not in found:
        raise KeyError(f"no suite {name!r}; known: {', '.join(found) or 'none'}")
    return found[name]
