"""Offline kernel analysis: compile every kernel for sm_80 / sm_90 without a GPU and report
registers, spills, shared memory and tensor-core instructions (``millkernels analyze``).

Kernel modules register their Triton kernels with :func:`register_triton` (and mark CUDA
kernels hot with :func:`register_cuda_hot`); :func:`analyze_kernels` compiles and reports.
Importing this package is cheap: it imports neither Triton's compiler nor anything that
touches a GPU.
"""

from typing import TYPE_CHECKING, Any

from millkernels.analyze.registry import (
    Registry,
    TritonKernel,
    TritonVariant,
    current_registry,
    register_cuda_hot,
    register_triton,
    triton_kernels,
    use_registry,
    variants_from_configs,
)
from millkernels.analyze.report import ARCHS, Arch, KernelReport, parse_arch

if TYPE_CHECKING:
    from millkernels.analyze.core import Analysis


def analyze_kernels(*args: Any, **kwargs: Any) -> "Analysis":
    """See :func:`millkernels.analyze.core.analyze_kernels`."""
    from millkernels.analyze.core import analyze_kernels as _analyze

    return _analyze(*args, **kwargs)


__all__ = [
    "ARCHS",
    "Arch",
    "KernelReport",
    "Registry",
    "TritonKernel",
    "TritonVariant",
    "analyze_kernels",
    "current_registry",
    "parse_arch",
    "register_cuda_hot",
    "register_triton",
    "triton_kernels",
    "use_registry",
    "variants_from_configs",
]
