"""``millkernels.quant``: quantised weights and matmuls (:mod:`millkernels.ops.quant`).

The public names of the family, re-exported: ``from millkernels.quant import ...``."""

from millkernels.ops.quant import *  # noqa: F403
from millkernels.ops.quant import __all__  # noqa: F401  (the same public names)
