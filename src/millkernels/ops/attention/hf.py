"""Hugging Face transformers integration: ``attn_implementation="millkernels"``.

Usage::

    import millkernels.ops.attention.hf as mk_hf
    mk_hf.register()  # once per process
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="millkernels")

:func:`register` adds :func:`attention_forward` to transformers' ``AttentionInterface`` and
FlashAttention's mask builder to ``AttentionMaskInterface`` under the same name, so models
hand over either no mask (no padding: plain causal / sliding-window attention) or a 2-D
boolean padding mask, which is unpadded into :func:`millkernels.attention_varlen`.
Importing this module does not import transformers.
"""

from __future__ import annotations

import functools
from typing import Any, TypedDict

import torch

from millkernels.ops.attention.api import attention, attention_varlen

NAME = "millkernels"


class _Keywords(TypedDict):
    """The keywords passed on to :func:`attention` / :func:`attention_varlen`."""

    causal: bool
    softmax_scale: float | None
    window: tuple[int, int]
    softcap: float
    backend: str


def attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    is_causal: bool | None = None,
    backend: str = "auto",
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: ``query`` (batch, heads, seq_q, head_dim),
    ``key``/``value`` (batch, heads_kv, seq_k, head_dim); returns ((batch, seq_q, heads,
    head_dim), None). ``attention_mask`` is None or a 2-D boolean (batch, seq_k) padding mask.

    Raises ValueError for dropout > 0 while training (there is no dropout kernel) and for
    4-D masks (arbitrary masks are not supported; use the sdpa or eager implementations).
    """
    if dropout and module.training:
        raise ValueError(f"dropout: millkernels attention has no dropout, got {dropout}")
    causal = bool(getattr(module, "is_causal", True) if is_causal is None else is_causal)
    window = (-1, -1)
    if sliding_window is not None and sliding_window > 0:
        window = (int(sliding_window) - 1, -1 if causal else int(sliding_window) - 1)
    kw = _Keywords(
        causal=causal,
        softmax_scale=scaling,
        window=window,
        softcap=float(softcap or 0.0),
        backend=backend,
    )
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # (B, S, H, D) views
    if attention_mask is None:
        return attention(q, k, v, **kw), None
    if attention_mask.dim() != 2:
        raise ValueError(
            "attention_mask: millkernels takes no mask or a 2-D padding mask, got shape "
            f"{tuple(attention_mask.shape)}"
        )
    return _unpadded(q, k, v, attention_mask.bool(), kw), None


def _unpadded(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_mask: torch.Tensor, kw: _Keywords
) -> torch.Tensor:
    """Attention over the valid tokens of a padded batch, through attention_varlen."""
    seq_q = q.shape[1]
    kv_mask = kv_mask[:, -k.shape[1] :]
    q_mask = kv_mask[:, -seq_q:]
    lens_q, lens_k = q_mask.sum(1, dtype=torch.int32), kv_mask.sum(1, dtype=torch.int32)
    zero = torch.zeros(1, dtype=torch.int32, device=q.device)
    cu_q = torch.cat([zero, lens_q.cumsum(0, dtype=torch.int32)])
    cu_k = torch.cat([zero, lens_k.cumsum(0, dtype=torch.int32)])
    out_flat = attention_varlen(
        q[q_mask], k[kv_mask], v[kv_mask], cu_q, cu_k,
        int(lens_q.max()), int(lens_k.max()), **kw,
    )  # fmt: skip
    out = q.new_zeros(q.shape)
    out[q_mask] = out_flat
    return out


def register(name: str = NAME, backend: str = "auto") -> str:
    """Register millkernels attention with transformers under ``name``; returns ``name``.

    Raises ImportError when transformers is not installed.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    fn = (
        attention_forward
        if backend == "auto"
        else functools.partial(attention_forward, backend=backend)
    )
    AttentionInterface.register(name, fn)
    AttentionMaskInterface.register(name, flash_attention_mask)
    return name
