"""What the analysis reports per kernel variant, and the per-architecture limits it checks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Status = Literal["ok", "spills", "waived", "smem_overflow", "skipped", "error"]

#: Statuses that fail ``millkernels analyze --check`` for a hot kernel.
FAILING: frozenset[str] = frozenset({"spills", "smem_overflow", "error"})


@dataclass(frozen=True)
class Arch:
    """A target architecture: its name in reports, compute capability and the code it gets."""

    name: str  # "sm_90"
    capability: int  # 90
    gpu_name: str  # what nvcc / ptxas target: "sm_90a" (wgmma and TMA need the "a" target)
    max_shared_per_block: int  # bytes a block may use (opt-in maximum)


#: Shared memory per block, opt-in maximum (CUDA programming guide, compute capabilities
#: table): 227 KiB on sm_90, 163 KiB on sm_80.
ARCHS: dict[str, Arch] = {
    "sm_90": Arch("sm_90", 90, "sm_90a", 227 * 1024),
    "sm_80": Arch("sm_80", 80, "sm_80", 163 * 1024),
}
_ALIASES = {"sm_90": "sm_90", "sm_90a": "sm_90", "sm90": "sm_90", "sm_80": "sm_80", "sm80": "sm_80"}


def parse_arch(text: str) -> Arch:
    """``"sm_90"``, ``"sm_90a"`` or ``"sm_80"`` -> :class:`Arch`. Raises ``ValueError``."""
    key = _ALIASES.get(text.strip().lower())
    if key is None:
        raise ValueError(f"unknown architecture {text!r}: use sm_90 (or sm_90a) or sm_80")
    return ARCHS[key]


@dataclass
class KernelReport:
    """One compiled kernel (one variant of a Triton kernel; one CUDA ``__global__`` function).

    ``spill_bytes`` is spill stores plus spill loads (bytes per thread, as ptxas counts them);
    ``shared_bytes`` is per block (Triton: dynamic + static; CUDA: static). ``status`` is
    ``ok``, ``spills``, ``waived`` (spills within the variant's documented allowance: shown,
    not failed; a spill beyond the allowance is ``spills``), ``smem_overflow`` (over the
    architecture's per-block maximum),
    ``skipped`` (not compiled, see ``reason``) or ``error`` (did not compile, see ``reason``).
    """

    kernel: str
    backend: Literal["triton", "cuda"]
    arch: str
    variant: str = ""
    registers: int | None = None
    spill_bytes: int | None = None
    shared_bytes: int | None = None
    tensor_core_ops: list[str] = field(default_factory=list)
    tma: bool = False
    hot: bool = False
    status: Status = "ok"
    reason: str = ""
    spill_stores: int | None = None
    spill_loads: int | None = None
    tensor_core_counts: dict[str, int] = field(default_factory=dict)
    source: str = ""  # CUDA: the .cu file, relative to csrc/; Triton: module:function
    symbol: str = ""  # the compiled function: CUDA's demangled signature, Triton's kernel name
    #: Measured metrics, named as in :class:`~millkernels.ops.analysis_spec.Expect`.
    metrics: dict[str, float] = field(default_factory=dict)
    #: One row per declared Expect (:func:`millkernels.analyze.expect.evaluate`).
    expect: list[dict[str, Any]] = field(default_factory=list)
    #: The Triton version that compiled a Triton kernel ("" for CUDA kernels).
    triton_version: str = ""

    @property
    def expect_failures(self) -> list[dict[str, Any]]:
        """Declared Expects that neither hold nor are skipped (hot or not, they fail --check)."""
        return [r for r in self.expect if not r["skipped"] and not r["holds"]]

    @property
    def failed(self) -> bool:
        """True when this is a hot kernel whose status fails ``--check``, or any kernel with
        an Expect that does not hold."""
        return (self.hot and self.status in FAILING) or bool(self.expect_failures)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def measured(
    *,
    kernel: str,
    backend: Literal["triton", "cuda"],
    arch: Arch,
    variant: str,
    hot: bool,
    source: str,
    registers: int | None,
    spill_stores: int,
    spill_loads: int,
    shared_bytes: int,
    tensor_core: dict[str, int],
    tma: bool,
    note: str = "",
    symbol: str = "",
) -> KernelReport:
    """A report from measurements, with its status judged against ``arch``'s limits."""
    spill = spill_stores + spill_loads
    reasons = []
    status: Status = "ok"
    if shared_bytes > arch.max_shared_per_block:
        status = "smem_overflow"
        reasons.append(
            f"{shared_bytes} B shared memory per block > {arch.max_shared_per_block} B "
            f"allowed on {arch.name}"
        )
    if spill:
        if status == "ok":
            status = "spills"
        reasons.append(f"spills {spill_stores} B stored, {spill_loads} B loaded per thread")
    if note:
        reasons.append(note)
    return KernelReport(
        kernel=kernel,
        backend=backend,
        arch=arch.name,
        variant=variant,
        registers=registers,
        spill_bytes=spill,
        shared_bytes=shared_bytes,
        tensor_core_ops=sorted(tensor_core),
        tma=tma,
        hot=hot,
        status=status,
        reason="; ".join(reasons),
        spill_stores=spill_stores,
        spill_loads=spill_loads,
        tensor_core_counts=dict(sorted(tensor_core.items())),
        source=source,
        symbol=symbol,
    )


def selected(name: str, only: Sequence[str] | None) -> bool:
    """Whether ``name`` contains one of ``only`` (everything is, when ``only`` is None)."""
    return only is None or any(s in name for s in only)
