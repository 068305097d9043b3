"""Quantised matmul: ``millkernels.quant.matmul(x, quantize(w, scheme))`` per scheme and backend,
with the unquantised ``torch.nn.functional.linear`` (cuBLAS) at the same shape as the baseline
(backend ``torch``, scheme ``none``).

Each result is checked against ``x @ dequantize(W)^T`` in float32 (SQNR floor) before timing.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from millkernels.bench import counts
from millkernels.bench.suites import quant as quant_suite
from millkernels.dispatch import BACKENDS
from millkernels.testing import sqnr_db

GPU = torch.cuda.is_available()
MODULE = "millkernels.quant"
DTYPE = torch.bfloat16 if GPU else torch.float16
DTYPE_NAME = "bf16" if GPU else "fp16"

# (scheme, M, N, K): the ``quant`` suite's cases (``millkernels bench``, quick sizes): Llama-3
# projection shapes and 8192x8192 at decode and prefill batch sizes; tiny on a CPU.
CASES = [
    (scheme, m, n, k)
    for _, _, n, k in quant_suite.shapes(GPU, quick=True)
    for m in quant_suite.batch_sizes(GPU, quick=True)
    for scheme in quant_suite.SCHEMES
]
#: SQNR floors (dB) of the kernel against the fp32 product with the dequantised weight: weight-
#: only only rounds the output; fp8 also quantises the activations at call time.
MIN_SQNR = {"w4a16": 35.0, "w8a16": 35.0, "fp8_tensor": 25.0, "fp8_rowwise": 25.0,
            "fp8_block": 25.0}  # fmt: skip


def _ids(case: tuple) -> str:
    return "-".join(str(c) for c in case)


@pytest.mark.parametrize("mnk", sorted({c[1:] for c in CASES}), ids=lambda s: "x".join(map(str, s)))
def test_linear_baseline(mk_bench, mk_family, device, mnk) -> None:
    """The unquantised product at each shape: ``F.linear`` (cuBLAS on a GPU)."""
    mk_family(MODULE, "quantize", "matmul")
    m, n, k = mnk
    w = torch.randn(n, k, device=device, dtype=DTYPE)
    x = torch.randn(m, k, device=device, dtype=DTYPE)
    torch.testing.assert_close(F.linear(x, w).float(), x.float() @ w.float().T, atol=0.1, rtol=0.02)
    mk_bench(lambda: F.linear(x, w), family="quant", op="matmul",
             shape={"M": m, "N": n, "K": k, "scheme": "none"}, dtype=DTYPE_NAME,
             backend="torch", flops=counts.matmul_flops(m, n, k),
             bytes=counts.matmul_bytes(m, n, k, DTYPE))  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_quant_matmul(mk_bench, mk_family, mk_call, device, case, backend) -> None:
    quant = mk_family(MODULE, "quantize", "matmul")
    scheme, m, n, k = case
    w = torch.randn(n, k, device=device, dtype=DTYPE)
    x = torch.randn(m, k, device=device, dtype=DTYPE)
    shape = {"M": m, "N": n, "K": k}
    try:
        qw = quant.quantize(w, scheme, group_size=128)
    except (TypeError, ValueError) as exc:  # a scheme this machine cannot hold
        pytest.skip(f"quantize({scheme}) is not available here: {exc}")
    fn = lambda: quant.matmul(x, qw, backend=backend)
    out = mk_call(fn)
    ref = x.float() @ qw.dequantize(torch.float32).to(device).T
    snr = sqnr_db(ref, out.float())
    assert snr >= MIN_SQNR[scheme], f"{scheme} {backend}: SQNR {snr:.1f} dB < {MIN_SQNR[scheme]}"
    weight_bytes = sum(
        counts.tensor_bytes(t)
        for t in (getattr(qw, a, None) for a in ("qweight", "scales", "zeros"))
        if isinstance(t, torch.Tensor)
    )
    act_bytes = counts.tensor_bytes(x, out)
    mk_bench(fn, family="quant", op="matmul", shape={**shape, "scheme": scheme},
             dtype=DTYPE_NAME, backend=backend, flops=counts.matmul_flops(m, n, k),
             bytes=weight_bytes + act_bytes)  # fmt: skip
