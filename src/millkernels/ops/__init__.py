"""Op families. Importing this registers every family's capability table and kernels."""

from millkernels.ops import (
    attention,  # noqa: F401  (registers the attention table)
    comm,  # noqa: F401  (registers the comm table)
    probes,
    quant,  # noqa: F401  (registers the quant table)
)

__all__ = ["probes"]
