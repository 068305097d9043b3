"""Quantised all-reduce: fewer bytes on the wire for a stated, bounded error.

Steps (world = W ranks, flat input of n elements, groups of G = 128 elements by default):

1. **Quantise** the zero-padded input into W rows (shard w = row w): per group, scale =
   absmax / QMAX in float32 and one-byte codes (int8, QMAX = 127; or fp8 e4m3fn, QMAX = 448).
   A row is L codes then L / G scales (``reference.shard_layout``), about 1.03 bytes per
   element against 2 for bf16.
2. **Reduce-scatter** the quantised shards: ``all_to_all`` sends row w to rank w; rank r then
   dequantises the W copies of its shard and sums them in rank order 0, 1, ... in float32.
3. **Requantise** the float32 sum (same format), fused into step 2's kernel.
4. **All-gather** the requantised shards; every rank dequantises all W of them into ``out``
   (in the input dtype). Every rank decodes the same bytes, so results are identical.

Error bound (stated per element, relative to the per-group absmax). With A_j the absmax of
rank j's input over the element's group and delta the format's worst rounding relative to the
absmax (int8: half a step, 1/254; fp8 e4m3: half an ulp of the top binade [256, 448), 16/448
= 1/28), the first quantisation errs by at most delta * sum_j A_j; every dequantised value is
at most A_j in magnitude, so the float32 sum's group absmax is at most sum_j A_j and the
requantisation errs by at most delta * sum_j A_j again. So::

    |out - sum_j x_j| <= 2 * delta * sum_j A_j * (1 + u) + u * |sum_j x_j|
                         + 1e-6 * sum_j A_j + 1e-28

with u the unit roundoff of the output dtype (bf16 2**-8, fp16 2**-11, fp32 2**-24), 1e-6
covering float32 arithmetic and 1e-28 the groups whose absmax is below the 1e-30 floor
(they quantise to zero). For int8 the main term is 0.79% of sum_j A_j, for fp8 7.1%.
:func:`error_bound` computes it; the tests check it.

What runs where: on CUDA tensors the three kernels are Triton (fp8 needs sm_89+: its
conversions are hardware instructions); on CPU tensors they run under the Triton interpreter
(TRITON_INTERPRET=1), else as the torch functions of ``reference`` (same bytes). The wire is
always int8 tensors (fp8 codes travel as their bit patterns), so gloo, which has no fp8
dtype, carries both formats.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from millkernels.ops.comm import custom_ops, reference

#: Worst rounding error of one quantisation, relative to the group's absmax.
DELTA = {"int8": 1.0 / 254.0, "fp8": 16.0 / 448.0}
#: Unit roundoff of the output dtypes.
UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11, torch.float32: 2.0**-24}
DEFAULT_GROUP = 128


def error_bound(
    absmax_sum: torch.Tensor, exact: torch.Tensor, quant: str, dtype: torch.dtype
) -> torch.Tensor:
    """The per-element bound on ``|out - exact|`` (see the module docstring).

    ``absmax_sum``: sum over ranks of each element's group absmax (broadcastable to
    ``exact``); ``exact``: the exact sum (float64 is best); ``dtype``: the output dtype.
    """
    if quant not in DELTA:
        raise ValueError(f"quant: expected one of {tuple(DELTA)}, got {quant!r}")
    u = UNIT_ROUNDOFF[dtype]
    a = absmax_sum.double()
    return 2 * DELTA[quant] * a * (1 + u) + u * exact.double().abs() + 1e-6 * a + 1e-28


def group_absmax(x: torch.Tensor, world: int, group_size: int = DEFAULT_GROUP) -> torch.Tensor:
    """Each element's group absmax under the wire layout (flat, float64, like ``x``)."""
    n = x.numel()
    length, _, _ = reference.shard_layout(n, world, group_size)
    xf = torch.zeros(world * length, dtype=torch.float64, device=x.device)
    xf[:n] = x.reshape(-1).double()
    amax = xf.view(-1, group_size).abs().amax(dim=1)
    return amax.repeat_interleave(group_size)[:n]


def run_quantized(
    x: torch.Tensor, out: torch.Tensor, group, quant: str, group_size: int, backend: str
) -> torch.Tensor:
    """``out := `` quantised sum over ranks of ``x`` (validated by the caller). ``backend``:
    "triton" or "reference" (which implementation of the three steps)."""
    world = dist.get_world_size(group)
    buf = custom_ops.quantize_rows(x, world, group_size, quant, backend)
    received = torch.empty_like(buf)
    dist.all_to_all_single(received, buf, group=group)
    send = custom_ops.dequant_accumulate_requantize(received, group_size, quant, backend)
    gathered = torch.empty_like(buf)
    reference.gather_flat(gathered, send, group)
    custom_ops.dequantize_into(gathered, out, group_size, quant, backend)
    return out
