"""Attention: training forward/backward (dense and variable-length) and paged-KV decode.

Public functions: :func:`attention`, :func:`attention_varlen` (differentiable, custom ops
with fake kernels and registered autograd) and :func:`attention_decode`. The family's
backends are in :data:`TABLE` (:mod:`.capabilities`).
"""

from millkernels.ops.attention.api import attention, attention_decode, attention_varlen
from millkernels.ops.attention.capabilities import TABLE

__all__ = ["TABLE", "attention", "attention_decode", "attention_varlen"]
