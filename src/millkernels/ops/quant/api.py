"""Quantised matmul: ``matmul(x, qweight, bias)`` and the custom op ``millkernels::quant_matmul``.

Layers (DESIGN.md): the launchers live in ``triton_weight_only`` / ``triton_fp8`` /
``reference``; :func:`_quant_matmul_impl` resolves the backend and launches; the custom op
wraps it for ``torch.compile`` (with ``register_fake``); :func:`matmul` validates and calls
the custom op while compiling, and the implementation directly in eager mode (the fast path:
the custom-op dispatcher costs tens of microseconds per call on a CPU host, comparable to a
decode-sized kernel).
"""

from __future__ import annotations

from typing import Any

import torch

from millkernels import runtime
from millkernels.ops.quant import reference
from millkernels.ops.quant.capabilities import TABLE, fp8_reason
from millkernels.ops.quant.formats import FP8_SCHEMES, QuantizedWeight, validate

_X_DTYPES = (torch.float16, torch.bfloat16)
_FP8_MODE = {"fp8_tensor": 0, "fp8_rowwise": 1, "fp8_block": 2}


def call_facts(x: torch.Tensor, scheme: str, group_size: int, in_features: int) -> dict[str, Any]:
    """The facts the capability table decides on (see ``capabilities``)."""
    dev = x.device.type
    return {
        "op": "matmul",
        "scheme": scheme,
        "device": dev,
        "dtype": str(x.dtype).removeprefix("torch."),
        "capability": runtime.capability(x.device) if dev == "cuda" else None,
        "group_size": group_size,
        "in_features": in_features,
        "m": x.numel() // max(in_features, 1),
    }


def _quant_matmul_impl(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    perm: torch.Tensor | None,
    bias: torch.Tensor | None,
    scheme: str,
    group_size: int,
    out_features: int,
    in_features: int,
    backend: str,
) -> torch.Tensor:
    facts = call_facts(x, scheme, group_size, in_features)
    why = fp8_reason(facts)
    if why:
        raise ValueError(f"qweight: {why}")
    name = TABLE.select(backend, facts, "matmul")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, in_features)
    if perm is not None:
        x2 = x2.index_select(1, perm)
    x2 = x2.contiguous()
    if name == "reference" or x2.shape[0] == 0:
        qw = QuantizedWeight(
            scheme=scheme,
            shape=(out_features, in_features),
            qweight=qweight,
            scales=scales,
            zeros=zeros,
            group_size=group_size,
            symmetric=zeros is None,
            check=False,  # the fields of a weight matmul validated
        )
        out = reference.matmul(x2, qw, bias)
    elif name == "cuda":
        from millkernels.ops.quant import cuda

        out = cuda.matmul(x2, qweight, scales, zeros, bias, group_size=group_size, n=out_features)
    elif scheme in FP8_SCHEMES:
        from millkernels.ops.quant import triton_fp8

        mode = reference.ACT_MODE[scheme]
        xq, xs = triton_fp8.act_quant(x2, mode)
        out = triton_fp8.gemm(xq, xs, qweight, scales, bias, x.dtype, _FP8_MODE[scheme])
    else:
        from millkernels.ops.quant import triton_weight_only

        out = triton_weight_only.matmul(
            x2,
            qweight,
            scales,
            zeros,
            bias,
            bits=4 if scheme == "w4a16" else 8,
            group_size=group_size,
            n=out_features,
        )
    return out.reshape(*lead, out_features)


@torch.library.custom_op("millkernels::quant_matmul", mutates_args=())
def quant_matmul(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    perm: torch.Tensor | None,
    bias: torch.Tensor | None,
    scheme: str,
    group_size: int,
    out_features: int,
    in_features: int,
    backend: str,
) -> torch.Tensor:
    """Custom op behind :func:`matmul` (tensors of a :class:`QuantizedWeight`, flattened)."""
    return _quant_matmul_impl(
        x,
        qweight,
        scales,
        zeros,
        perm,
        bias,
        scheme,
        group_size,
        out_features,
        in_features,
        backend,
    )


@quant_matmul.register_fake
def _(
    x, qweight, scales, zeros, perm, bias, scheme, group_size, out_features, in_features, backend
):
    return x.new_empty((*x.shape[:-1], out_features))


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
    args = (
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
        backend,
    )
    if torch.compiler.is_compiling():
        return quant_matmul(*args)
    return _quant_matmul_impl(*args)
