"""``millkernels.comm``: collectives over torch.distributed (:mod:`millkernels.ops.comm`).

The public names of the family, re-exported: ``from millkernels.comm import ...``."""

from millkernels.ops.comm import *  # noqa: F403
from millkernels.ops.comm import __all__  # noqa: F401  (the same public names)
