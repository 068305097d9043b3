"""The ``cuda`` backend of the quant family: the w4a16 kernel for M <= 16 (``csrc/quant/``).

The kernel reads its own weight layout: :func:`prepare` repacks the canonical int32 (K/8, N)
codes with the ``w4_repack`` CUDA kernel into (N, K/8) words with interleaved nibbles and
transposes scales and zeros to (N, G), once per weight (cached, keyed by the ``qweight``
tensor and its version counter, so an in-place change repacks again). ``matmul`` launches on
torch's current stream; with ``split > 1`` K is split across blocks into float32 partials
that are summed here.
"""

from __future__ import annotations

import functools
import weakref

import torch

from millkernels._native import require_native, view

CHUNK = 32  # K values per 16-byte load: K and the group size must be multiples of it
MAX_M = 16

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def prepare(
    qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, k: int, n: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The kernel's layout of a canonical w4a16 weight: (repacked, scales_t, zeros_t)."""
    hit = _CACHE.get(qweight)
    if hit is not None and hit[0] == qweight._version:
        return hit[1]
    repacked = torch.empty((n, k // 8), dtype=torch.int32, device=qweight.device)
    require_native().w4_repack(view(qweight, "canonical"), view(repacked, "repacked"), k, n)
    zeros_t = None if zeros is None else zeros.t().contiguous().to(torch.uint8)
    prepared = (repacked, scales.t().contiguous(), zeros_t)
    _CACHE[qweight] = (qweight._version, prepared)
    return prepared


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def choose_split(m: int, n: int, k: int, device: torch.device) -> int:
    """Split K until the blocks (8 columns each) cover every SM ~8 times, keeping at least
    1024 K values (one pass of a warp) per split."""
    blocks = -(-n // 8)
    want = max(1, (8 * _sm_count(device.index or 0)) // blocks)
    most = max(1, k // 1024)
    split = 1
    while split * 2 <= min(want, most):
        split *= 2
    return split


def matmul(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    bias: torch.Tensor | None,
    *,
    group_size: int,
    n: int,
    split: int | None = None,
) -> torch.Tensor:
    """x (M <= 16, K) contiguous fp16/bf16 -> (M, N) in x's dtype."""
    m, k = x.shape
    repacked, scales_t, zeros_t = prepare(qweight, scales, zeros, k, n)
    if scales_t.dtype != x.dtype:
        scales_t = scales_t.to(x.dtype)
    if bias is not None:
        bias = bias.to(x.dtype).contiguous()
    if split is None:
        split = choose_split(m, n, k, x.device)
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    partial = (
        torch.empty((split, m, n), dtype=torch.float32, device=x.device) if split > 1 else None
    )
    require_native().w4a16_small_m(
        view(x, "x"),
        view(repacked, "repacked"),
        view(scales_t, "scales_t"),
        None if zeros_t is None else view(zeros_t, "zeros_t"),
        None if bias is None or split > 1 else view(bias, "bias"),
        view(out, "out"),
        None if partial is None else view(partial, "partial"),
        group_size,
        split,
    )
    if partial is not None:
        acc = partial.sum(0)
        if bias is not None:
            acc += bias.float()
        out.copy_(acc)
    return out
