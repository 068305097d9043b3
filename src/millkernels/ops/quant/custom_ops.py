"""The quantised matmul as the custom op ``millkernels::quant_matmul`` (via ``family_op``, so
eager calls skip the dispatcher and ``torch.compile`` sees one opaque op with a fake kernel).

``quant_matmul(x, qweight, scales, zeros, perm, bias, scheme, group_size, out_features,
in_features, backend) -> out``: the tensors of a :class:`QuantizedWeight`, flattened.
``backend`` is the name :func:`millkernels.ops.quant.api.matmul` resolved ("triton", "cuda",
"reference"); ``"auto"`` (for callers of ``torch.ops.millkernels.quant_matmul`` itself) is
resolved here by the same rule.
"""

from __future__ import annotations

import torch

from millkernels.ops.custom_op import family_op
from millkernels.ops.quant import reference
from millkernels.ops.quant.capabilities import CUDA_DEFAULT_PATH, call_facts, resolve
from millkernels.ops.quant.formats import FP8_SCHEMES, QuantizedWeight

_FP8_MODE = {"fp8_tensor": 0, "fp8_rowwise": 1, "fp8_block": 2}


def _launch(
    name: str,
    x2: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    bias: torch.Tensor | None,
    scheme: str,
    group_size: int,
    out_features: int,
) -> torch.Tensor:
    """``x2 @ W^T (+ bias)`` for a contiguous (M, K) ``x2`` on backend ``name``."""
    if name == "reference" or x2.shape[0] == 0:
        qw = QuantizedWeight(
            scheme=scheme,
            shape=(out_features, x2.shape[1]),
            qweight=qweight,
            scales=scales,
            zeros=zeros,
            group_size=group_size,
            symmetric=zeros is None,
            check=False,  # the fields of a weight matmul validated
        )
        return reference.matmul(x2, qw, bias)
    if name == "cuda":
        from millkernels.ops.quant import cuda

        return cuda.matmul(
            x2, qweight, scales, zeros, bias, group_size=group_size, n=out_features,
            path=CUDA_DEFAULT_PATH,
        )  # fmt: skip
    if scheme in FP8_SCHEMES:
        from millkernels.ops.quant import triton_fp8

        xq, xs = triton_fp8.act_quant(x2, reference.ACT_MODE[scheme])
        return triton_fp8.gemm(xq, xs, qweight, scales, bias, x2.dtype, _FP8_MODE[scheme])
    from millkernels.ops.quant import triton_weight_only

    return triton_weight_only.matmul(
        x2,
        qweight,
        scales,
        zeros,
        bias,
        bits=4 if scheme == "w4a16" else 8,
        group_size=group_size,
        n=out_features,
    )


@family_op("millkernels::quant_matmul")
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
    """``x @ W^T (+ bias)`` for x (..., in_features) on the resolved ``backend``."""
    if backend == "auto":
        backend = resolve(call_facts(x, scheme, group_size, in_features), backend)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, in_features)
    if perm is not None:
        x2 = x2.index_select(1, perm)
    out = _launch(
        backend, x2.contiguous(), qweight, scales, zeros, bias, scheme, group_size, out_features
    )
    return out.reshape(*lead, out_features)


@quant_matmul.register_fake
def _(
    x, qweight, scales, zeros, perm, bias, scheme, group_size, out_features, in_features, backend
):
    return x.new_empty((*x.shape[:-1], out_features))
