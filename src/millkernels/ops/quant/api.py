"""Quantised matmul: ``matmul(x, qweight, bias)``.

Layers (DESIGN.md): :func:`matmul` validates, builds the call facts and resolves the backend
once (``capabilities.resolve``), then calls the custom op ``millkernels::quant_matmul``
(``custom_ops``), which launches that backend's kernel (``triton_weight_only``,
``triton_fp8``, ``cuda``, ``reference``).
"""

from __future__ import annotations

from typing import Any

import torch

from millkernels.dispatch import constant_under_compile
from millkernels.ops.quant import custom_ops
from millkernels.ops.quant.capabilities import call_facts, quant_call, resolve
from millkernels.ops.quant.formats import QuantizedWeight, validate

__all__ = ["call_facts", "matmul"]  # call_facts: the facts matmul decides on, for callers

_X_DTYPES = (torch.float16, torch.bfloat16)


def _select(x: torch.Tensor, qweight: QuantizedWeight, backend: str) -> str:
    """The backend for this call, resolved once, before the custom op."""
    # Under torch.compile M may be a dynamic shape, not a constant to decide on.
    m = None if torch.compiler.is_compiling() else x.numel() // qweight.in_features
    return _resolve_constant(
        backend, x.device, x.dtype, qweight.scheme, qweight.group_size, qweight.in_features, m
    )


@constant_under_compile
def _resolve_constant(backend: str, *facts: Any) -> str:
    """:func:`resolve` on the plain values of :func:`quant_call`; under torch.compile it runs
    once at trace time and its answer is baked into the graph (the capability queries are not
    traceable)."""
    return resolve(quant_call(*facts), backend)


def _validate(x: Any, qweight: Any, bias: Any, backend: Any) -> None:
    if not isinstance(qweight, QuantizedWeight):
        raise TypeError(f"qweight: expected a QuantizedWeight, got {type(qweight).__name__}")
    validate(qweight)  # its fields may have been reassigned since it was built and checked
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _X_DTYPES:
        raise TypeError(f"x: expected float16 or bfloat16, got {x.dtype}")
    if x.dim() < 1 or x.shape[-1] != qweight.in_features:
        raise ValueError(
            f"x: expected (..., in_features={qweight.in_features}), got {tuple(x.shape)}"
        )
    if x.device != qweight.device:
        raise ValueError(f"x: on {x.device}, but qweight is on {qweight.device}")
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or not bias.is_floating_point():
            raise TypeError("bias: expected a floating-point torch.Tensor or None")
        if tuple(bias.shape) != (qweight.out_features,):
            raise ValueError(
                f"bias: expected shape ({qweight.out_features},), got {tuple(bias.shape)}"
            )
        if bias.device != x.device:
            raise ValueError(f"bias: on {bias.device}, but x is on {x.device}")
    if not isinstance(backend, str):
        raise TypeError(f"backend: expected a str, got {type(backend).__name__}")


def matmul(
    x: torch.Tensor,
    qweight: QuantizedWeight,
    bias: torch.Tensor | None = None,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """``x @ W^T (+ bias)`` with a quantised weight ``W``.

    Parameters
    ----------
    x
        (..., in_features) float16 or bfloat16.
    qweight
        A :class:`QuantizedWeight` of shape (out_features, in_features), on x's device.
    bias
        Optional (out_features,) floating-point tensor.
    backend
        ``"auto"``, ``"triton"``, ``"cuda"`` (w4a16, M <= 16) or ``"reference"`` (see
        ``millkernels info`` / ``capabilities.TABLE``). Fp8 schemes quantise x at call time
        (per tensor, per token, or per token in groups of 128 features).

    Returns
    -------
    (..., out_features) tensor in x's dtype.

    Raises
    ------
    TypeError, ValueError
        Naming the argument: x not fp16/bf16, in_features mismatch, a bad bias, an fp8 scheme
        on a GPU below compute capability 8.9; naming the field of ``qweight`` whose tensor no
        longer fits the weight's metadata (shape, dtype, device, contiguity: checked on every
        call, without a device sync; the values were checked when the weight was built).
    BackendUnavailable
        A named backend that cannot serve the call (with the reason).
    """
    _validate(x, qweight, bias, backend)
    return custom_ops.quant_matmul(
        x,
        qweight.qweight,
        qweight.scales,
        qweight.zeros,
        qweight.perm,
        bias,
        qweight.scheme,
        qweight.group_size,
        qweight.out_features,
        qweight.in_features,
        _select(x, qweight, backend),
    )
