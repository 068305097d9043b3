"""The quantised all-reduce's Triton kernels against the torch reference, in one process: the
same wire bytes and output bits (no process group needed), and, compiled offline for sm_90,
IEEE arithmetic on the GPU too (the bit-for-bit claim would not hold with approximate
divisions or contracted multiply-adds)."""

from __future__ import annotations

import pytest
import torch

from millkernels.analyze.core import triton_toolchain_missing
from millkernels.analyze.triton_compile import inexact_f32_ops, ptx_of
from millkernels.ops.comm import reference
from millkernels.ops.comm import triton_quant as tq

GROUP = 128


def _signal(n: int, device: str) -> torch.Tensor:
    """Random values over magnitudes 1e-4..3e4, one group of tiny negatives (they quantise to -0.0
    in fp8) and one all-zero group."""
    x = torch.randn(n).clamp(-4, 4) * torch.exp(torch.randn(n).clamp(-3, 3) * 3)  # fp16: finite
    x[GROUP : 2 * GROUP] = -torch.rand(GROUP) * 1e-6
    x[2 * GROUP] = -1.0  # the group's absmax: the tiny negatives round to -0.0
    x[3 * GROUP : 4 * GROUP] = 0.0
    return x.to(device)


@pytest.mark.parametrize("quant", ["int8", "fp8"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_kernels_match_reference_bit_for_bit(quant, dtype, triton_device):
    world, n = 3, 5 * GROUP * 3 + 77  # a partial last group
    xs = [_signal(n, triton_device).to(dtype) for _ in range(world)]
    bufs = []
    for x in xs:
        got = tq.quantize_rows(x, world, GROUP, quant)
        want = reference.quantize_rows(x, world, GROUP, quant)
        assert torch.equal(got, want), "quantize_rows: wire bytes differ"
        bufs.append(got)
    received = torch.stack([b[1] for b in bufs])  # every rank's shard 1, in rank order
    sent = tq.dequant_accumulate_requantize(received, GROUP, quant)
    assert torch.equal(sent, reference.dequant_accumulate_requantize(received, GROUP, quant))
    out = torch.full((n,), float("nan"), dtype=dtype, device=triton_device)
    tq.dequantize_into(bufs[0], out, GROUP, quant)
    want = reference.dequantize_rows(bufs[0], GROUP, quant).reshape(-1)[:n].to(dtype)
    assert torch.equal(out.view(torch.int8), want.view(torch.int8)), "dequantize_into differs"


@pytest.mark.skipif(triton_toolchain_missing() is not None, reason="no Triton toolchain")
@pytest.mark.parametrize(
    "kernel, divides",
    [
        ("comm.quantize_bf16", True),
        ("comm.quantize_fp32", True),
        ("comm.dequant_accumulate", True),
        ("comm.dequantize_bf16", False),
    ],
)
def test_compiled_arithmetic_is_ieee_on_sm90(kernel, divides):
    """sm_90 PTX: the scale divisions are ``div.rn.f32`` (a plain ``/`` gives ``div.full`` /
    ``div.approx``), and no multiply-add is contracted into an ``fma`` (torch rounds both)."""
    for label, ptx in ptx_of(kernel, 90).items():
        assert ("div.rn.f32" in ptx) == divides, (kernel, label)
        assert not inexact_f32_ops(ptx), f"{kernel} [{label}]: {inexact_f32_ops(ptx)} in the PTX"


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_custom_ops_compile_like_eager(backend, triton_device):
    """The quantised all-reduce's local steps as custom ops: torch.compile(fullgraph) sees them
    (fake kernels give the wire shapes) and produces the eager bytes."""
    from millkernels.ops.comm import custom_ops

    world, n = 2, 3 * GROUP + 5

    def steps(x, out):
        buf = custom_ops.quantize_rows(x, world, GROUP, "int8", backend)
        send = custom_ops.dequant_accumulate_requantize(buf, GROUP, "int8", backend)
        custom_ops.dequantize_into(buf, out, GROUP, "int8", backend)
        return send

    torch._dynamo.reset()
    x = _signal(n, triton_device).to(torch.bfloat16)
    eager_out = torch.full((n,), float("nan"), dtype=x.dtype, device=triton_device)
    compiled_out = eager_out.clone()
    want = steps(x, eager_out)
    got = torch.compile(steps, fullgraph=True)(x, compiled_out)
    assert torch.equal(got, want)
    assert torch.equal(compiled_out.view(torch.int16), eager_out.view(torch.int16))
