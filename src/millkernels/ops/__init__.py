"""Op families. Importing this registers every family's capability table and kernels."""

from millkernels.ops import probes

__all__ = ["probes"]
