"""``millkernels.quant``: quantised weights and matmuls (see :mod:`millkernels.ops.quant`)."""

from millkernels.ops.quant import (
    FP8_SCHEMES,
    SCHEMES,
    TABLE,
    QuantizedWeight,
    QuantLinear,
    from_awq,
    from_gptq,
    matmul,
    quantize,
    quantize_model,
)

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
