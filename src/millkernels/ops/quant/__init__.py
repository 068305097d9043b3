"""Quantised matmul: int4/int8 weight-only and fp8, GPTQ/AWQ import, drop-in linear layers.

Public API (also ``millkernels.quant``): :func:`quantize`, :class:`QuantizedWeight`,
:func:`matmul`, :func:`from_gptq`, :func:`from_awq`, :class:`QuantLinear`,
:func:`quantize_model`. Kernel modules (``triton_*``) load on first use.
"""

from millkernels.ops.quant.api import matmul
from millkernels.ops.quant.capabilities import TABLE
from millkernels.ops.quant.formats import (
    FP8_SCHEMES,
    SCHEMES,
    QuantizedWeight,
    from_awq,
    from_gptq,
    quantize,
)
from millkernels.ops.quant.nn import QuantLinear, quantize_model

__all__ = [
    "FP8_SCHEMES",
    "SCHEMES",
    "TABLE",
    "QuantLinear",
    "QuantizedWeight",
    "from_awq",
    "from_gptq",
    "matmul",
    "quantize",
    "quantize_model",
]
