"""Which kernels ``millkernels analyze`` compiles: the registry kernel modules fill at import.

Kernel modules call :func:`register_triton` (and :func:`register_cuda_hot` for CUDA kernels)
next to their kernels. Registering is cheap and safe at import time: it records the function
and its launch variants, and neither compiles anything nor touches a GPU (this module imports
no Triton code at all).

Example::

    register_triton(
        "probes.copy",
        _copy_kernel,
        [TritonVariant({"dst": "*i32", "src": "*i32", "n": "i64"}, {"BLOCK": 4096}, num_warps=8)],
        hot=True,
    )

A kernel that is autotuned registers one variant per config with :func:`variants_from_configs`.
CUDA kernels need no registration (every ``__global__`` function under ``csrc/`` is compiled);
``register_cuda_hot("copy_kernel", ...)`` only marks the ones ``--check`` guards.

Where to call these: in the module that defines the kernels. The analysis imports
``millkernels.ops`` and then every ``triton_*`` and ``cuda*`` module under it, so modules that
a family imports lazily are registered too. Tests register into a private :class:`Registry`
(``with use_registry() as reg:``), so the package's registry is never polluted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import inspect
import pkgutil
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TritonVariant:
    """One way a Triton kernel is launched: argument types, constexpr values, launch options.

    Parameters
    ----------
    signature
        Argument name -> Triton type string: ``"*fp32"``, ``"*bf16"``, ``"i32"``, ``"i64"``,
        ``"fp32"``, ... or ``"constexpr"``. Constexpr arguments may be left out (they are
        added from ``constexprs``); the order does not matter.
    constexprs
        Constexpr argument name -> value (``BLOCK=1024``, ``HEAD_DIM=128``, ``IS_CAUSAL=True``).
        Constexpr arguments with a default in the kernel's definition may be left out.
    num_warps, num_stages
        Launch options, as in ``triton.Config``.
    label
        Shown in reports; by default built from the constexprs and options.
    min_arch
        Lowest compute capability (80 = sm_80, 90 = sm_90) this variant is valid on; on older
        architectures the variant is reported as skipped, not compiled.
    maxnreg
        Optional register cap per thread (``triton.Config.maxnreg``).
    spill_allowance, allowance_reason
        A known spill this variant is allowed, per architecture (compute capability -> bytes
        per thread, stores plus loads), and why: reported as ``waived`` instead of failing
        ``--check``, so the debt stays visible and any growth beyond it fails. Empty (the
        default) allows none.
    divisible_by_16
        Arguments Triton may assume 16-divisible (pointers: 16-byte aligned), as it does at a
        launch whose tensors are aligned. ``None`` (default): every pointer argument, which is
        what a launch with freshly allocated tensors specialises on.
    enable_fp_fusion
        The launch option of that name: False for kernels launched with
        ``enable_fp_fusion=False`` (no multiply-add contracted into an FMA).
    """

    signature: Mapping[str, str]
    constexprs: Mapping[str, Any] = field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 3
    label: str = ""
    min_arch: int = 80
    maxnreg: int | None = None
    divisible_by_16: Sequence[str] | None = None
    spill_allowance: Mapping[int, int] = field(default_factory=dict)
    allowance_reason: str = ""
    enable_fp_fusion: bool = True

    def __post_init__(self) -> None:
        if self.spill_allowance and not self.allowance_reason:
            raise ValueError("spill_allowance: give allowance_reason, the measured why")

    def describe(self) -> str:
        """The label, or one built from the constexprs and launch options."""
        if self.label:
            return self.label
        parts = [f"{k}={v}" for k, v in self.constexprs.items()]
        parts.append(f"w{self.num_warps}")
        parts.append(f"s{self.num_stages}")
        if self.maxnreg:
            parts.append(f"r{self.maxnreg}")
        return " ".join(parts)


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
    """Register a Triton kernel for offline analysis. Call it at import, next to the kernel.

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
    """Mark CUDA kernels (compiled from ``csrc/``) hot by their plain function name.

    The plain name is the demangled name without namespace, template arguments and parameters
    (``copy_kernel`` for ``void mk::copy_kernel<4>(...)``); a qualified name
    (``mk::copy_kernel``) is accepted too.
    """
    current_registry().register_cuda_hot(*kernel_names)


def with_spill_allowance(
    variants: Sequence[TritonVariant], allowance: Mapping[int, Mapping[int, int]], reason: str
) -> list[TritonVariant]:
    """Give each variant whose ``HEAD_DIM`` constexpr is a key of ``allowance`` its known
    spills (capability -> bytes; see :class:`TritonVariant`), with ``reason``."""
    out = []
    for v in variants:
        allowed = allowance.get(v.constexprs.get("HEAD_DIM"))
        if allowed:
            v = dataclasses.replace(v, spill_allowance=allowed, allowance_reason=reason)
        out.append(v)
    return out


def variants_from_configs(
    configs: Iterable[Any],
    signature: Mapping[str, str],
    constexprs: Mapping[str, Any] | None = None,
    *,
    min_arch: int | Callable[[Any], int] = 80,
    divisible_by_16: Sequence[str] | None = None,
) -> list[TritonVariant]:
    """One :class:`TritonVariant` per ``triton.Config`` of an autotune list.

    Parameters
    ----------
    configs
        ``triton.Config`` objects (what ``triton.autotune(configs=...)`` got; an autotuned
        kernel keeps them as ``.configs``). Each config's kwargs are added to ``constexprs``.
    signature, constexprs
        As for :class:`TritonVariant`; shared by every config.
    min_arch
        The lowest compute capability of every config, or a function ``config -> int`` for
        lists that hold, e.g., Hopper-only configs.
    divisible_by_16
        As for :class:`TritonVariant`, shared by every config.
    """
    out = []
    for cfg in configs:
        kwargs = dict(getattr(cfg, "kwargs", None) or {})
        arch = min_arch(cfg) if callable(min_arch) else min_arch
        out.append(
            TritonVariant(
                signature=dict(signature),
                constexprs={**(constexprs or {}), **kwargs},
                num_warps=int(getattr(cfg, "num_warps", 4) or 4),
                num_stages=int(getattr(cfg, "num_stages", 3) or 3),
                min_arch=int(arch),
                maxnreg=getattr(cfg, "maxnreg", None),
                divisible_by_16=divisible_by_16,
            )
        )
    return out


#: Modules under ``millkernels.ops`` that hold kernels (DESIGN.md: ``triton_*.py``, ``cuda.py``);
#: families may import them lazily, so the analysis imports them itself.
KERNEL_MODULE_PREFIXES = ("triton_", "cuda")


def triton_kernels() -> Registry:
    """The current registry, after importing every kernel module of the package.

    With the package's registry current, this imports ``millkernels.ops`` (every family) and
    then every module under it whose name starts with ``triton_`` or ``cuda`` (families may
    import those lazily, on first use), so that their ``register_triton`` /
    ``register_cuda_hot`` calls have run. A module that fails to import is recorded in
    ``Registry.import_errors`` (the analysis reports it as a failure) rather than raised.
    Inside :func:`use_registry` the registry is returned as it is.
    """
    reg = current_registry()
    if reg is not _DEFAULT:
        return reg
    try:
        ops = importlib.import_module("millkernels.ops")
    except Exception as exc:
        reg.import_errors["millkernels.ops"] = f"{type(exc).__name__}: {exc}"
        return reg
    has_triton = importlib.util.find_spec("triton") is not None

    def on_error(name: str) -> None:
        exc = sys.exc_info()[1]
        reg.import_errors[name] = f"{type(exc).__name__}: {exc}"

    for info in pkgutil.walk_packages(ops.__path__, "millkernels.ops.", onerror=on_error):
        base = info.name.rsplit(".", 1)[-1]
        if info.ispkg or not base.startswith(KERNEL_MODULE_PREFIXES):
            continue
        if base.startswith("triton_") and not has_triton:
            continue
        try:
            importlib.import_module(info.name)
        except Exception as exc:
            reg.import_errors[info.name] = f"{type(exc).__name__}: {exc}"
    return reg


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
