"""The ``cuda`` backend of the quant family: the w4a16 kernel for M <= 16 (``csrc/quant/``).

The kernel reads its own weight layout (``csrc/quant/w4a16.h``): :func:`prepare` repacks the
canonical int32 (K/8, N) codes with the ``w4_repack`` CUDA kernel into the "tiled" layout,
int32 (ceil(N/32), 4K) = [strip][chunk][lane][tile], and pads scales and zeros to
(G, 32 * ceil(N/32)) with zero columns, once per weight (cached, keyed by the ``qweight``
tensor; the version counters of qweight, scales and zeros are checked, so an in-place change
prepares again). :func:`repack_reference` is the same repack on the CPU (the layout's
definition, used by the tests).

``matmul`` launches on torch's current stream. The kernel has two paths: ``"mma"``
(mma.sync.m16n8k16 tensor cores; what ``"auto"`` picks for every M, see the crossover note in
``csrc/quant/w4a16.cu``) and ``"fma"`` (fp32 FMAs, M <= 2). With ``split > 1`` K is split
across blocks into float32 partials that are summed here.
"""

from __future__ import annotations

import functools
import weakref

import torch

from millkernels._native import require_native, view

CHUNK = 32  # K values per 16-byte load: K and the group size must be multiples of it
STRIP = 32  # output columns per block: N is padded to a multiple of it in the kernel layout
MAX_M = 16
FMA_MAX_M = 2  # rows the "fma" path is compiled for
PATHS = {"auto": 0, "fma": 1, "mma": 2}
_NIBBLE_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # input feature held by nibble position p of a word

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def padded_n(n: int) -> int:
    """N rounded up to the kernel's 32-column strips."""
    return -(-n // STRIP) * STRIP


def repack_reference(canonical: torch.Tensor, k: int, n: int) -> torch.Tensor:
    """CPU definition of ``w4_repack``: canonical int32 (K/8, N) -> tiled int32 (ceil(N/32), 4K).

    Word (strip, chunk, lane, tile) is canonical word (4 * chunk + lane % 4, 32 * strip +
    8 * tile + lane // 4) (zero past column N) with its nibbles reordered so that nibble
    position p holds input feature ``_NIBBLE_ORDER[p]`` of the word's 8.
    """
    if k % CHUNK:
        raise ValueError(f"k: expected a multiple of {CHUNK}, got {k}")
    if tuple(canonical.shape) != (k // 8, n):
        raise ValueError(f"canonical: expected shape {(k // 8, n)}, got {tuple(canonical.shape)}")
    npad = padded_n(n)
    src = torch.zeros((k // 8, npad), dtype=torch.int64)
    src[:, :n] = canonical.to(torch.int64) & 0xFFFFFFFF
    dst = torch.zeros_like(src)
    for p, e in enumerate(_NIBBLE_ORDER):
        dst |= ((src >> (4 * e)) & 0xF) << (4 * p)
    # (K/8, Npad) -> [chunk, t4][strip, tile, gid] -> [strip, chunk, gid, t4, tile]
    tiled = dst.view(k // CHUNK, 4, npad // STRIP, 4, 8).permute(2, 0, 4, 1, 3)
    tiled = tiled.reshape(npad // STRIP, 4 * k)
    return torch.where(tiled >= 2**31, tiled - 2**32, tiled).to(torch.int32)


def _pad_columns(t: torch.Tensor, npad: int, dtype: torch.dtype) -> torch.Tensor:
    out = torch.zeros((t.shape[0], npad), dtype=dtype, device=t.device)
    out[:, : t.shape[1]] = t
    return out


def prepare(
    qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, k: int, n: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The kernel's layout of a canonical w4a16 weight: (repacked, scales_p, zeros_p)."""
    versions = tuple(None if t is None else (id(t), t._version) for t in (qweight, scales, zeros))
    hit = _CACHE.get(qweight)
    if hit is not None and hit[0] == versions:
        return hit[1]
    repacked = torch.empty((padded_n(n) // STRIP, 4 * k), dtype=torch.int32, device=qweight.device)
    require_native().w4_repack(view(qweight, "canonical"), view(repacked, "repacked"), k, n)
    npad = padded_n(n)
    zeros_p = None if zeros is None else _pad_columns(zeros, npad, torch.uint8)
    prepared = (repacked, _pad_columns(scales, npad, scales.dtype), zeros_p)
    _CACHE[qweight] = (versions, prepared)
    return prepared


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def choose_split(m: int, n: int, k: int, device: torch.device) -> int:
    """Split K until the blocks (one 32-column strip of 8 warps each) reach 2 per SM, keeping
    at least 8 chunks of 32 (one per warp) per split. Not tuned on a GPU yet."""
    blocks = padded_n(n) // STRIP
    want = max(1, -(-2 * _sm_count(device.index or 0) // blocks))
    most = max(1, k // (8 * CHUNK))
    split = 1
    while split * 2 <= min(want, most, 16):
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
    path: str = "auto",
) -> torch.Tensor:
    """x (M <= 16, K) contiguous fp16/bf16 -> (M, N) in x's dtype.

    ``path``: ``"auto"`` (the tensor-core path for every M), ``"mma"`` or ``"fma"`` (M <= 2).
    """
    if path not in PATHS:
        raise ValueError(f"path: expected one of {tuple(PATHS)}, got {path!r}")
    m, k = x.shape
    repacked, scales_p, zeros_p = prepare(qweight, scales, zeros, k, n)
    if scales_p.dtype != x.dtype:
        scales_p = scales_p.to(x.dtype)
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
        view(scales_p, "scales"),
        None if zeros_p is None else view(zeros_p, "zeros"),
        None if bias is None or split > 1 else view(bias, "bias"),
        view(out, "out"),
        None if partial is None else view(partial, "partial"),
        group_size,
        split,
        PATHS[path],
    )
    if partial is not None:
        acc = partial.sum(0)
        if bias is not None:
            acc += bias.float()
        out.copy_(acc)
    return out
