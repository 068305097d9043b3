"""What ``millkernels analyze`` compiles, declared by the kernel modules as plain data.

A kernel module lists its analysis next to its kernels in a module-level ``ANALYSIS`` tuple of
:class:`TritonAnalysis` (a Triton kernel and its launch variants) and :class:`CudaHot` (CUDA
kernels from ``csrc/`` that ``--check`` guards). ``millkernels.analyze`` finds every module
under ``millkernels.ops`` that declares ``ANALYSIS``, imports it and collects the entries;
kernel modules never import the analysis. This module imports nothing beyond the standard
library, so declaring costs nothing at import.

Example::

    ANALYSIS = (
        TritonAnalysis(
            "probes.copy",
            _copy_kernel,
            [TritonVariant({"dst": "*i32", "src": "*i32", "n": "i64"}, {"BLOCK": 4096}, 8)],
            hot=True,
        ),
        CudaHot(("copy_kernel",)),
    )

A kernel that is autotuned declares one variant per config with :func:`variants_from_configs`.
CUDA kernels need no declaration (every ``__global__`` function under ``csrc/`` is compiled);
:class:`CudaHot` only marks the ones ``--check`` guards.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Comparison operators an :class:`Expect` may use.
EXPECT_OPS: tuple[str, ...] = ("<=", ">=", "==", "<", ">", "!=")


@dataclass(frozen=True)
class Expect:
    """Evidence a compiled variant must show, checked by ``millkernels analyze --check``.

    ``metric`` names a number the analysis measures on the compiled code; ``op`` and ``value``
    say what it must satisfy; ``why`` says what the evidence proves (shown when it fails).
    ``triton`` restricts the expectation to Triton versions starting with that prefix
    (``"3.6"``); ``None`` checks it on every version. Metrics:

    - ``registers``, ``spill_bytes``, ``shared_bytes``, ``num_warps`` (warps of the compiled
      kernel, producer warps of a warp-specialised kernel included), ``tma`` (0 or 1);
    - ``kernel.op.<OPCODE>``: instructions of the whole kernel whose SASS opcode, up to its
      first dot, is ``<OPCODE>`` (``kernel.op.MUFU``, ``kernel.op.I2F``); 0 when none. Never
      executed padding (``@!PT``-guarded instructions, ``NOP``) is not counted anywhere;
    - ``loops``: the number of loops (backward branches; several to one target are one loop)
      in the SASS, not counting spin loops (at most 4 instructions, no tensor-core
      instruction: a wait's or a register reallocation's retry) nor the jump back from a
      wait's out-of-line retry stub (warp-specialised kernels);
    - ``loop.<field>``: the hot loop, the innermost loop with the most tensor-core
      instructions (innermost among loops with any; the first of equals), without any the
      innermost loop with the most instructions; spin loops inside do not count. Fields are
      per iteration, per thread: ``instructions``, ``mma`` (tensor-core instructions: HGMMA,
      QGMMA, HMMA, IMMA, ...), ``mma_ratio`` (mma / the other instructions), ``barriers``
      (CTA-wide barriers: ``BAR.SYNC`` of barrier 0 without a thread count; a named barrier
      of some warps such as ``BAR.SYNC 0x1, 0x100``, and ``BAR.ARV``, are not counted),
      ``global_loads`` (LDG), ``shared_loads`` (LDS, LDSM), ``async_copies`` (LDGSTS and TMA
      loads: UTMALDG, UBLKCP), ``i2f`` (I2F, I2FP), ``mufu`` (MUFU), ``wgmma_min_n`` (the
      smallest N of the warpgroup MMAs, ``HGMMA.64x<N>x16``: how wide the thinnest tile is;
      0 without any), and ``op.<OPCODE>`` as for the kernel. A kernel without a loop has no
      ``loop.*`` value (such an Expect fails);
    - ``dup_warp_dots`` (Triton only): dots in the TTGIR whose MMA layout puts more warps
      along M than the tile has 16-row slices (``warpsPerCTA[0] * 16 > M``; a Hopper
      warpgroup is 4 of them), or along N than it has ``instrShape[1]``-column slices, so
      several warps compute the same products.

    A metric name outside this list fails ``--check`` (no typo passes silently).
    """

    metric: str
    op: str
    value: float
    why: str
    triton: str | None = None

    def __post_init__(self) -> None:
        if self.op not in EXPECT_OPS:
            raise ValueError(f"Expect: op is one of {EXPECT_OPS}, got {self.op!r}")
        if not self.why:
            raise ValueError("Expect: give why, what the evidence proves")

    def holds(self, actual: float) -> bool:
        """Whether ``actual`` satisfies this expectation."""
        return {
            "<=": actual <= self.value,
            ">=": actual >= self.value,
            "==": actual == self.value,
            "<": actual < self.value,
            ">": actual > self.value,
            "!=": actual != self.value,
        }[self.op]


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
    expect
        :class:`Expect` evidence the compiled variant must show (``--check`` fails without it).
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
    expect: Sequence[Expect] = ()

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
class TritonAnalysis:
    """A Triton kernel to analyse: its report name, the kernel and its launch variants.

    ``name`` is ``<family>.<kernel>`` (e.g. ``"attention.decode"``), unique. ``fn`` is what
    ``@triton.jit`` returned, possibly wrapped by ``triton.autotune`` / ``triton.heuristics``,
    defined at module level (the analysis compiles it in a separate process). ``hot`` kernels
    fail ``millkernels analyze --check`` when they spill registers, overflow the
    architecture's shared memory or do not compile. The analysis checks the variants against
    the kernel's arguments when it collects them.
    """

    name: str
    fn: Any
    variants: Sequence[TritonVariant]
    hot: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"TritonAnalysis: name is a non-empty str, got {self.name!r}")
        object.__setattr__(self, "variants", tuple(self.variants))


@dataclass(frozen=True)
class CudaHot:
    """CUDA kernels (compiled from ``csrc/``) that ``--check`` guards, by plain function name.

    The plain name is the demangled name without namespace, template arguments and parameters
    (``copy_kernel`` for ``void mk::copy_kernel<4>(...)``); a qualified name
    (``mk::copy_kernel``) is accepted too.
    """

    kernels: tuple[str, ...]
    #: Plain kernel name -> :class:`Expect` evidence its compiled code must show.
    expect: Mapping[str, Sequence[Expect]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.kernels, str):
            raise TypeError(f"CudaHot: kernels is a tuple of names, got the str {self.kernels!r}")
        object.__setattr__(self, "kernels", tuple(self.kernels))
        unknown = set(self.expect) - set(self.kernels)
        if unknown:
            raise ValueError(f"CudaHot: expect names kernels not listed: {sorted(unknown)}")


def with_spill_allowance(
    variants: Sequence[TritonVariant], allowance: Mapping[int, Mapping[int, int]], reason: str
) -> list[TritonVariant]:
    """Give each variant whose ``HEAD_DIM`` constexpr is a key of ``allowance`` its known
    spills (capability -> bytes; see :class:`TritonVariant`), with ``reason``."""
    out = []
    for v in variants:
        head_dim = v.constexprs.get("HEAD_DIM")
        allowed = allowance.get(head_dim) if isinstance(head_dim, int) else None
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
