"""Which kernels ``millkernels analyze`` compiles: a registry filled from the kernel modules.

Kernel modules declare what to analyse as plain data, a module-level ``ANALYSIS`` tuple of
:class:`~millkernels.ops.analysis_spec.TritonAnalysis` and
:class:`~millkernels.ops.analysis_spec.CudaHot` (see :mod:`millkernels.ops.analysis_spec`); they
never import this package. :func:`triton_kernels` imports every module under
``millkernels.ops`` that declares ``ANALYSIS`` and collects the entries into the registry.
Collecting is cheap: it records the functions and their launch variants, and neither compiles
anything nor touches a GPU (this module imports no Triton code at all).

Tests register into a private :class:`Registry` (``with use_registry() as reg:``, then
:func:`register_triton` / :func:`register_cuda_hot`), so the package's registry is never
polluted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import inspect
import pkgutil
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from millkernels.ops.analysis_spec import (
    CudaHot,
    Expect,
    TritonAnalysis,
    TritonVariant,
    variants_from_configs,
    with_spill_allowance,
)

__all__ = [
    "CudaHot",
    "Registry",
    "TritonAnalysis",
    "TritonKernel",
    "TritonVariant",
    "current_registry",
    "python_function",
    "register_cuda_hot",
    "register_triton",
    "triton_kernels",
    "use_registry",
    "variants_from_configs",
    "with_spill_allowance",
]


@dataclass(frozen=True)
class TritonKernel:
    """A registered Triton kernel: its name in reports, the function, its variants."""

    name: str
    fn: Any
    variants: tuple[TritonVariant, ...]
    hot: bool = False

    @property
    def python_fn(self) -> Callable[..., Any]:
        """The plain Python function under the Triton wrappers (JIT, interpreter, autotune)."""
        return python_function(self.fn)


@dataclass
class Registry:
    """Registered Triton kernels (by report name) and the CUDA kernel names marked hot."""

    triton: dict[str, TritonKernel] = field(default_factory=dict)
    cuda_hot: set[str] = field(default_factory=set)
    #: CUDA kernel name (plain or qualified) -> the Expects its compiled code must show.
    cuda_expect: dict[str, tuple[Expect, ...]] = field(default_factory=dict)
    #: Kernel modules that failed to import: module -> error (filled by triton_kernels()).
    import_errors: dict[str, str] = field(default_factory=dict)

    def register_triton(
        self, name: str, fn: Any, variants: Iterable[TritonVariant], *, hot: bool = False
    ) -> Any:
        """Record ``fn`` under ``name``; see :func:`register_triton`. Returns ``fn``."""
        variants = tuple(_complete(fn, name, v) for v in variants)
        if not variants:
            raise ValueError(f"register_triton({name!r}): give at least one TritonVariant")
        old = self.triton.get(name)
        if old is not None and _origin(old.fn) != _origin(fn):
            raise ValueError(
                f"register_triton({name!r}): the name is already taken by "
                f"{_origin(old.fn)[0]}.{_origin(old.fn)[1]}"
            )
        self.triton[name] = TritonKernel(name, fn, variants, hot)
        return fn

    def register_cuda_hot(self, *kernel_names: str) -> None:
        """Mark CUDA kernels hot by their plain (demangled) function name."""
        for n in kernel_names:
            if not isinstance(n, str) or not n:
                raise ValueError(f"register_cuda_hot: kernel names are non-empty str, got {n!r}")
            self.cuda_hot.add(n)

    def collect(self, analysis: Iterable[object], where: str = "ANALYSIS") -> None:
        """Record every entry of a kernel module's ``ANALYSIS`` (``where`` names it in errors).

        Raises ``TypeError`` for an entry that is neither ``TritonAnalysis`` nor ``CudaHot``,
        and what :meth:`register_triton` raises for a variant that does not fit its kernel.
        """
        if isinstance(analysis, (str, bytes)) or not isinstance(analysis, Iterable):
            raise TypeError(f"{where}: a tuple of TritonAnalysis / CudaHot, got {analysis!r}")
        for entry in analysis:
            if isinstance(entry, TritonAnalysis):
                self.register_triton(entry.name, entry.fn, entry.variants, hot=entry.hot)
            elif isinstance(entry, CudaHot):
                self.register_cuda_hot(*entry.kernels)
                for kernel, expects in entry.expect.items():
                    self.cuda_expect[kernel] = tuple(expects)
            else:
                raise TypeError(f"{where}: entries are TritonAnalysis or CudaHot, got {entry!r}")


_DEFAULT = Registry()
_ACTIVE: list[Registry] = [_DEFAULT]


def current_registry() -> Registry:
    """The registry ``register_*`` write to and the analysis reads (the package's by default)."""
    return _ACTIVE[-1]


@contextlib.contextmanager
def use_registry(registry: Registry | None = None) -> Iterator[Registry]:
    """Make ``registry`` (a fresh one by default) current inside the ``with`` block.

    For tests: kernels registered inside go to it, and ``millkernels analyze`` run inside
    analyses only it (the package's kernels are not imported into it).
    """
    registry = Registry() if registry is None else registry
    _ACTIVE.append(registry)
    try:
        yield registry
    finally:
        _ACTIVE.remove(registry)


def register_triton(
    name: str, fn: Any, variants: Sequence[TritonVariant], *, hot: bool = False
) -> Any:
    """Register a Triton kernel into the current registry (for tests and tools; the package's
    kernel modules declare ``ANALYSIS`` instead, see :mod:`millkernels.ops.analysis_spec`).

    Parameters
    ----------
    name
        Name in reports, ``<family>.<kernel>`` (e.g. ``"attention.decode"``); unique.
    fn
        The kernel: what ``@triton.jit`` returned (a ``JITFunction``, or an
        ``InterpretedFunction`` under ``TRITON_INTERPRET=1``), possibly wrapped by
        ``triton.autotune`` / ``triton.heuristics``. It must be defined at module level of an
        importable module: the analysis compiles it in a separate process.
    variants
        The launch variants to compile (see :func:`variants_from_configs` for autotuned kernels).
    hot
        Hot kernels fail ``millkernels analyze --check`` when they spill registers, overflow
        the architecture's shared memory or do not compile.

    Returns ``fn`` unchanged. Raises ``ValueError`` when a variant does not match the kernel's
    arguments (a missing or unknown argument, a bad type string) or the name is taken.
    """
    return current_registry().register_triton(name, fn, variants, hot=hot)


def register_cuda_hot(*kernel_names: str) -> None:
    """Mark CUDA kernels (compiled from ``csrc/``) hot in the current registry, by their plain
    function name (kernel modules declare ``CudaHot`` in ``ANALYSIS`` instead).

    The plain name is the demangled name without namespace, template arguments and parameters
    (``copy_kernel`` for ``void mk::copy_kernel<4>(...)``); a qualified name
    (``mk::copy_kernel``) is accepted too.
    """
    current_registry().register_cuda_hot(*kernel_names)


#: The package whose modules declare ``ANALYSIS``.
KERNEL_PACKAGE = "millkernels.ops"
_DECLARES = re.compile(r"^ANALYSIS\b", re.MULTILINE)


def triton_kernels() -> Registry:
    """The current registry, after collecting every kernel module's ``ANALYSIS``.

    With the package's registry current, this imports ``millkernels.ops``, then every module
    under it whose source declares a module-level ``ANALYSIS`` (families may import kernel
    modules lazily, on first use; ``triton_*`` modules are skipped when Triton is not
    installed), then collects ``ANALYSIS`` from every imported module of the package in the
    order they finished importing (the order of the reports). A module that fails to import
    or declares a bad entry is recorded in ``Registry.import_errors`` (the analysis reports
    it as a failure) rather than raised. Inside :func:`use_registry` the registry is returned
    as it is.
    """
    reg = current_registry()
    if reg is not _DEFAULT:
        return reg
    try:
        ops = importlib.import_module(KERNEL_PACKAGE)
    except Exception as exc:
        reg.import_errors[KERNEL_PACKAGE] = f"{type(exc).__name__}: {exc}"
        return reg
    has_triton = importlib.util.find_spec("triton") is not None

    def on_error(name: str) -> None:
        exc = sys.exc_info()[1]
        reg.import_errors[name] = f"{type(exc).__name__}: {exc}"

    for info in pkgutil.walk_packages(ops.__path__, f"{KERNEL_PACKAGE}.", onerror=on_error):
        base = info.name.rsplit(".", 1)[-1]
        if info.ispkg or not _declares_analysis(info.name):
            continue
        if base.startswith("triton_") and not has_triton:
            continue
        try:
            importlib.import_module(info.name)
        except Exception as exc:
            reg.import_errors[info.name] = f"{type(exc).__name__}: {exc}"
    for name, module in list(sys.modules.items()):  # in the order they finished importing
        if name.startswith(f"{KERNEL_PACKAGE}.") and hasattr(module, "ANALYSIS"):
            try:
                reg.collect(module.ANALYSIS, f"{name}.ANALYSIS")
            except (TypeError, ValueError) as exc:
                reg.import_errors[name] = f"{type(exc).__name__}: {exc}"
    return reg


def _declares_analysis(module: str) -> bool:
    """Whether the source of ``module`` (not imported) assigns ``ANALYSIS`` at top level."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return False
    with open(spec.origin, encoding="utf-8") as f:
        return _DECLARES.search(f.read()) is not None


# ---------------------------------------------------------------------------- helpers


def python_function(fn: Any) -> Callable[..., Any]:
    """Unwrap autotuner / heuristics / JIT / interpreter wrappers down to the Python function."""
    seen = 0
    while not inspect.isfunction(fn) and hasattr(fn, "fn") and seen < 16:
        fn = fn.fn
        seen += 1
    if not inspect.isfunction(fn):
        raise TypeError(f"not a Triton kernel (no Python function inside): {fn!r}")
    return fn


def _origin(fn: Any) -> tuple[str, str]:
    f = python_function(fn)
    return f.__module__, f.__qualname__


def _is_constexpr_annotation(annotation: Any) -> bool:
    if isinstance(annotation, str):
        return "constexpr" in annotation
    return getattr(annotation, "__name__", "") == "constexpr"


def _complete(fn: Any, name: str, variant: TritonVariant) -> TritonVariant:
    """Check ``variant`` against the kernel's parameters; fill constexprs; order the signature."""
    if not isinstance(variant, TritonVariant):
        raise TypeError(f"register_triton({name!r}): variants are TritonVariant, got {variant!r}")
    params = inspect.signature(python_function(fn)).parameters
    where = f"register_triton({name!r}, variant {variant.describe()!r})"
    unknown = (set(variant.signature) | set(variant.constexprs)) - set(params)
    if unknown:
        raise ValueError(f"{where}: no such kernel argument(s) {sorted(unknown)}")
    signature: dict[str, str] = {}
    constexprs: dict[str, Any] = {}
    for pname, p in params.items():
        ty = variant.signature.get(pname)
        if pname in variant.constexprs:
            if ty not in (None, "constexpr"):
                raise ValueError(f"{where}: {pname} has a constexpr value and type {ty!r}")
            signature[pname] = "constexpr"
            constexprs[pname] = variant.constexprs[pname]
        elif ty is not None and ty != "constexpr":
            if not isinstance(ty, str) or not ty.strip("*"):
                raise ValueError(f"{where}: {pname} has a bad Triton type {ty!r}")
            signature[pname] = ty
        elif p.default is not inspect.Parameter.empty:
            signature[pname] = "constexpr"
            constexprs[pname] = p.default
        elif ty == "constexpr" or _is_constexpr_annotation(p.annotation):
            raise ValueError(f"{where}: constexpr {pname} has no value in constexprs")
        else:
            raise ValueError(f"{where}: argument {pname} has no type in the signature")
    if variant.divisible_by_16 is not None:
        bad = set(variant.divisible_by_16) - {k for k, v in signature.items() if v != "constexpr"}
        if bad:
            raise ValueError(f"{where}: divisible_by_16 names non-argument(s) {sorted(bad)}")
    for opt in ("num_warps", "num_stages", "min_arch"):
        if not isinstance(getattr(variant, opt), int) or getattr(variant, opt) < 0:
            raise ValueError(f"{where}: {opt} must be a non-negative int")
    return dataclasses.replace(  # every other field (launch options) as given
        variant,
        signature=signature,
        constexprs=constexprs,
        label=variant.describe(),
        divisible_by_16=(
            tuple(variant.divisible_by_16) if variant.divisible_by_16 is not None else None
        ),
        spill_allowance=dict(variant.spill_allowance),
    )
