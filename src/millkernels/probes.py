"""``millkernels.probes``: memory bandwidth and pattern probes (:mod:`millkernels.ops.probes`).

The public names of the family, re-exported: ``from millkernels.probes import ...``."""

from millkernels.ops.probes import *  # noqa: F403
from millkernels.ops.probes import __all__  # noqa: F401  (the same public names)
