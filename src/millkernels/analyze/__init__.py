"""Offline kernel analysis: compile every kernel for sm_80 / sm_90 without a GPU and report
registers, spills, shared memory and tensor-core instructions (``millkernels analyze``).

Kernel modules declare their Triton kernels and launch variants (and the CUDA kernels
``--check`` guards) as data, a module-level ``ANALYSIS`` (:mod:`millkernels.ops.analysis_spec`);
:func:`triton_kernels` collects them and :func:`analyze_kernels` compiles and reports.
Importing this package is cheap: it imports neither Triton's compiler nor anything that
touches a GPU.
"""

from typing import TYPE_CHECKING, Any

from millkernels.analyze.registry import (
    CudaHot,
    Registry,
    TritonAnalysis,
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
    "CudaHot",
    "KernelReport",
    "Registry",
    "TritonAnalysis",
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
