"""The ``cuda`` backend of the quant family: the w4a16 kernel for M <= 16 (``csrc/quant/``).

The kernel reads its own weight layout (``csrc/quant/w4a16.h``): :func:`prepare` repacks the
canonical int32 (K/8, N) codes with the ``w4_repack`` CUDA kernel into the "tiled" layout,
int32 (ceil(N/32), 4K) = [strip][chunk][lane][tile], and pads scales and zeros to
(G, 32 * ceil(N/32)) with zero columns, once per weight (cached, keyed by the ``qweight``
tensor; the version counters of qweight, scales and zeros are checked, so an in-place change
prepares again). :func:`repack_reference` is the same repack on the CPU (the layout's
definition, used by the tests).

``matmul`` launches once, on torch's current stream. Paths: ``"mma"`` (mma.sync.m16n8k16
tensor cores; what ``"auto"`` picks for every M, see the crossover note in
``csrc/quant/w4a16.cu``), ``"fma"`` (fp32 FMAs, M <= 2), ``"pipe"`` (``w4a16_pipe_kernel``:
the mma path with the weight stream in a 3-stage cp.async pipeline through shared memory, L2
evict-first) and ``"wide"`` (that pipeline with two 32-column strips per block, each unit's x
fragments loaded once for both); all end in the same epilogue.

K split (``split > 1``): K is split across ``split`` blocks per 32-column strip and reduced
inside the same launch. Each block stores its float32 partial tile to a workspace, float32
(ceil(N/32), split, 512), and atomically arrives on its strip's counter, int32 (ceil(N/32),);
the last block to arrive sums the partials in the fixed order 0..split-1 (so results are
bitwise reproducible whatever the arrival order), adds the bias, stores the output in x's
dtype and puts the counter back to 0. The counters must be 0 when a launch starts; every
launch leaves them 0.

Workspace lifetime (:func:`get_workspace`): one (workspace, counters) pair per (device, stream,
strips, split), allocated on first use on that stream (counters zeroed there) and kept for
the life of the process (never freed, so a CUDA graph that captured it stays valid; about
``split * ceil(N/32) * 2`` KiB each). Launches that share a pair must not overlap: keying by
stream makes calls on one stream share (stream order serialises them) and calls on two
streams use separate pairs, so concurrent streams are safe. Under CUDA-graph capture a stream
without a cached pair gets a fresh one from the graph's memory pool, not cached, whose
counters are zeroed by a memset captured into the graph (one extra node per call; warm up on
the capture stream first, e.g. ``torch.cuda.graph(g, stream=s)`` after an eager call on
``s``, to capture the cached pair instead). A graph that captured a cached pair must not be
replayed concurrently with eager calls on the stream it was captured on. Callers that manage
memory themselves pass ``workspace=`` (a pair from :func:`new_workspace`) and own its
ordering.
"""

from __future__ import annotations

import weakref

import torch

from millkernels import runtime
from millkernels._native import require_native, view

CHUNK = 32  # K values per 16-byte load: K and the group size must be multiples of it
STRIP = 32  # output columns per block: N is padded to a multiple of it in the kernel layout
MAX_M = 16
WIDE_STRIPS = 2  # strips per block of the "wide" path (kW4WideStrips)
FMA_MAX_M = 2  # rows the "fma" path is compiled for
PATHS = {"auto": 0, "fma": 1, "mma": 2, "pipe": 3, "wide": 4}
WS_TILE = MAX_M * STRIP  # floats per (strip, split) workspace tile (kW4WorkspaceTile)
_NIBBLE_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # input feature held by nibble position p of a word

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# (device index, stream handle, strips, split) -> (workspace, counters); never evicted
_WORKSPACES: dict[tuple[int, int, int, int], tuple[torch.Tensor, torch.Tensor]] = {}


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


def choose_split(m: int, n: int, k: int, device: torch.device, strips_per_block: int = 1) -> int:
    """Split K until the blocks (``strips_per_block`` 32-column strips of 8 warps each; the
    "wide" path: 2) reach 2 per SM, keeping at least 8 chunks of 32 (one per warp) per split.
    Not tuned on a GPU yet."""
    blocks = -(-padded_n(n) // (STRIP * strips_per_block))
    want = max(1, -(-2 * runtime.sm_count(device.index or 0) // blocks))
    most = max(1, k // (8 * CHUNK))
    split = 1
    while split * 2 <= min(want, most, 16):
        split *= 2
    return split


def new_workspace(n: int, split: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A fresh K-split (workspace, counters) pair for N output columns and ``split`` splits:
    float32 (ceil(N/32), split, 512) (uninitialised) and int32 (ceil(N/32),) zeros, allocated
    on the current stream. Launches that use one pair must be ordered (see the module note)."""
    strips = padded_n(n) // STRIP
    ws = torch.empty((strips, split, WS_TILE), dtype=torch.float32, device=device)
    return ws, torch.zeros((strips,), dtype=torch.int32, device=device)


def get_workspace(n: int, split: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The (workspace, counters) pair for a launch on ``device``'s current stream: cached per
    (device, stream, strips, split) for the process; under CUDA-graph capture without a cached
    pair, a fresh uncached one (see the module note)."""
    device = torch.device(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    stream = torch.cuda.current_stream(index).cuda_stream
    key = (index, stream, padded_n(n) // STRIP, split)
    hit = _WORKSPACES.get(key)
    if hit is not None:
        return hit
    pair = new_workspace(n, split, torch.device("cuda", index))
    if not torch.cuda.is_current_stream_capturing():
        _WORKSPACES[key] = pair
    return pair


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
    workspace: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """x (M <= 16, K) contiguous fp16/bf16 -> (M, N) in x's dtype (+ bias), one kernel launch.

    ``path``: ``"auto"`` (the tensor-core path for every M), ``"mma"``, ``"fma"`` (M <= 2),
    ``"pipe"`` (mma with a cp.async weight pipeline) or ``"wide"`` (pipe, two strips a block).
    ``split``: blocks K is split across (default :func:`choose_split`), reduced in the kernel.
    ``workspace``: the (workspace, counters) pair for ``split > 1`` (:func:`new_workspace`;
    counters 0 on entry, left 0); default: the cached pair of the current stream
    (:func:`get_workspace`). Raises ``ValueError`` for an unknown path, x not on a GPU, or a
    bad split or workspace.
    """
    if path not in PATHS:
        raise ValueError(f"path: expected one of {tuple(PATHS)}, got {path!r}")
    if x.device.type != "cuda":
        raise ValueError(f"x: expected a CUDA tensor, got device {x.device}")
    m, k = x.shape
    repacked, scales_p, zeros_p = prepare(qweight, scales, zeros, k, n)
    if scales_p.dtype != x.dtype:
        scales_p = scales_p.to(x.dtype)
    if bias is not None:
        bias = bias.to(x.dtype).contiguous()
    if split is None:
        split = choose_split(m, n, k, x.device, WIDE_STRIPS if path == "wide" else 1)
    if not 1 <= split <= max(1, k // CHUNK):
        raise ValueError(f"split: expected 1 <= split <= K/{CHUNK} = {k // CHUNK}, got {split}")
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    ws = counters = None
    if split > 1:
        ws, counters = get_workspace(n, split, x.device) if workspace is None else workspace
    require_native().w4a16_small_m(
        view(x, "x"),
        view(repacked, "repacked"),
        view(scales_p, "scales"),
        None if zeros_p is None else view(zeros_p, "zeros"),
        None if bias is None else view(bias, "bias"),
        view(out, "out"),
        None if ws is None else view(ws, "workspace"),
        None if counters is None else view(counters, "counters"),
        group_size,
        split,
        PATHS[path],
    )
    return out
