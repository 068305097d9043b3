"""Import path kept for ``attention_decode`` and its call facts.

The function lives in :mod:`.api`, its custom op in :mod:`.custom_ops`, its backend rules in
:mod:`.capabilities`, its reference in :mod:`.reference`.
"""

from __future__ import annotations

import torch

from millkernels.ops.attention.api import attention_decode
from millkernels.ops.attention.capabilities import DECODE_OP, AttentionCall
from millkernels.ops.attention.capabilities import call_facts as _call_facts

__all__ = ["attention_decode", "call_facts"]


def call_facts(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> AttentionCall:
    """The facts of a decode call (:func:`.capabilities.call_facts` for ``attention_decode``)."""
    return _call_facts(DECODE_OP, q, k_cache, v_cache)
