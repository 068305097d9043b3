"""Reference quantised matmul: dequantise, then a float32 matmul (plain PyTorch, any device).

Fp8 schemes quantise the activations exactly as the kernels do (same scale rule, same
rounding: ``x / scale`` rounded to nearest-even e4m3, saturating at 448), so a kernel can be
held to float32-accumulation error against this.
"""

from __future__ import annotations

import math

import torch

from millkernels.ops.quant.formats import FP8_BLOCK, QuantizedWeight, fp8_cast, fp8_scale

#: Activation quantisation granularity per fp8 scheme.
ACT_MODE = {"fp8_tensor": "tensor", "fp8_rowwise": "token", "fp8_block": "group"}


def act_quant(x: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise activations ``x`` (M, K) to e4m3.

    ``mode``: ``"tensor"`` (scale (1,)), ``"token"`` (scale (M,)) or ``"group"`` (per token
    in groups of 128 input features; scale (M, ceil(K/128))). Scales are float32,
    ``amax / 448`` (1 for an all-zero slice). Returns ``(q, scale)``.
    """
    xf = x.float()
    m, k = xf.shape
    if mode == "tensor":
        s = fp8_scale(xf.abs().amax()).reshape(1)
        return fp8_cast(xf / s), s
    if mode == "token":
        s = fp8_scale(xf.abs().amax(1))
        return fp8_cast(xf / s[:, None]), s
    if mode != "group":
        raise ValueError(f"mode: expected 'tensor', 'token' or 'group', got {mode!r}")
    kb = math.ceil(k / FP8_BLOCK)
    padded = torch.zeros((m, kb * FP8_BLOCK), dtype=torch.float32, device=x.device)
    padded[:, :k] = xf
    groups = padded.view(m, kb, FP8_BLOCK)
    s = fp8_scale(groups.abs().amax(-1))
    q = fp8_cast(groups / s[..., None]).view(m, kb * FP8_BLOCK)[:, :k]
    return q.contiguous(), s


def act_dequant(q: torch.Tensor, scale: torch.Tensor, mode: str) -> torch.Tensor:
    """float32 values of quantised activations (inverse of :func:`act_quant`)."""
    qf = q.float()
    if mode == "tensor":
        return qf * scale
    if mode == "token":
        return qf * scale[:, None]
    s = scale.repeat_interleave(FP8_BLOCK, 1)[:, : q.shape[1]]
    return qf * s


def matmul(x: torch.Tensor, qw: QuantizedWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ W^T (+ bias)`` for x (M, K) fp16/bf16, in float32, returned in x's dtype."""
    w = qw.dequantize(torch.float32)
    if qw.is_fp8:
        mode = ACT_MODE[qw.scheme]
        xf = act_dequant(*act_quant(x, mode), mode)
    else:
        xf = x.float()
    out = xf @ w.t()
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)
