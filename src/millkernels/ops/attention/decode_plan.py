"""How a paged decode call is cut into programs: the split count, the tokens per split and
the output and split workspace buffers, shared by the Triton and CUDA decode launchers (the
one home of both backends' split and launch heuristics).

The grid has ``splits`` programs per (sequence, key/value head, query-head tile), chosen on
the host from the table's capacity and the GPU's SM count (no device sync). Inside the
kernels a sequence of ``n`` tokens uses only :func:`live_splits` of them, about
``split_tokens`` tokens each: the programs past that exit at once, and with one live split the
kernel writes the output itself (the combine skips the row). So a 32K-token table holding 2K
live tokens runs 8 splits of 256 tokens, not 64 mostly empty ones.

``MILLKERNELS_DECODE_LEGACY`` (:func:`.capabilities.decode_legacy`) selects the previous rules
for GPU comparisons: ``splits`` keeps every grid split live (``split_tokens`` 0) with the old
grid size.
"""

from __future__ import annotations

import torch

from millkernels import runtime
from millkernels.ops.attention.capabilities import decode_legacy

#: Most splits per sequence (the combine reads all of them per output element).
MAX_SPLITS = 64
#: Tokens per live split on a GPU: below this the combine's traffic and the per-program setup
#: outweigh the extra parallelism (not yet measured on a GPU). Also the grid's floor: at most
#: ceil(capacity / SPLIT_TOKENS) splits.
SPLIT_TOKENS = 256
#: Tokens per live split under the Triton interpreter: small, so the tests' short sequences
#: use several splits.
CPU_SPLIT_TOKENS = 16
#: The previous rule's fewest tokens of the table's capacity per split (legacy ``splits``).
MIN_TOKENS_PER_SPLIT = SPLIT_TOKENS
#: Programs (CTAs) per SM the split count aims for. Both split kernels fit about 3 per SM
#: (Triton 160 registers at 4 warps, CUDA G=4 147); 512 programs on 132 SMs would be 1.3
#: waves (a 35% idle tail), ~8 per SM means many short waves, so the last partial wave costs
#: little. Estimated from the compile reports, not yet measured on a GPU.
PROGRAMS_PER_SM = 8
#: Most splits on a CPU (the Triton interpreter): a few, so that the combine is exercised.
CPU_SPLITS = 8
#: The previous rule's splits on a CPU (legacy ``splits``).
LEGACY_CPU_SPLITS = 4


def heads_per_cta(group: int) -> int:
    """Query heads one CUDA CTA handles: the group rounded up to a power of two, at most 8
    (mirrors decode_heads_per_cta in csrc/attention/decode.cu)."""
    g = 1
    while g < group and g < 8:
        g *= 2
    return g


def sm_count(device: torch.device) -> int | None:
    """SMs of ``device``'s GPU; None off a GPU."""
    return runtime.sm_count(device.index or 0) if device.type == "cuda" else None


def split_tokens(device: torch.device) -> int:
    """Tokens per live split for a call on ``device``: :data:`SPLIT_TOKENS` on a GPU,
    :data:`CPU_SPLIT_TOKENS` under the interpreter; 0 (every grid split live) with the legacy
    ``splits`` rule."""
    if "splits" in decode_legacy():
        return 0
    return SPLIT_TOKENS if device.type == "cuda" else CPU_SPLIT_TOKENS


def live_splits(seqlen: int, tokens: int, splits: int) -> int:
    """Splits a sequence of ``seqlen`` tokens uses out of the grid's ``splits``:
    ceil(seqlen / tokens) within [1, splits]; all of them when ``tokens`` is 0. The kernels
    compute the same (Triton ``_live_splits``, CUDA ``live_splits`` in decode.cu)."""
    if tokens <= 0:
        return splits
    return max(1, min(-(-seqlen // tokens), splits))


def num_splits(
    batch: int, heads_q: int, heads_kv: int, capacity: int, sms: int | None, heads_per_program: int
) -> int:
    """Grid splits per sequence: about :data:`PROGRAMS_PER_SM` programs per SM in all, at most
    one per :data:`SPLIT_TOKENS` tokens of the table's ``capacity``, at most
    :data:`MAX_SPLITS`. A program handles ``heads_per_program`` query heads of one key/value
    head. ``sms`` None (a CPU) gives one per :data:`CPU_SPLIT_TOKENS` tokens, at most
    :data:`CPU_SPLITS`. Each sequence uses only its :func:`live_splits` of them. The legacy
    ``splits`` rule floors ``capacity / MIN_TOKENS_PER_SPLIT`` and takes
    :data:`LEGACY_CPU_SPLITS` on a CPU, also capped by the programs per SM."""
    group = heads_q // heads_kv
    programs = max(batch * heads_kv * -(-group // heads_per_program), 1)
    want = -(-PROGRAMS_PER_SM * (sms or 1) // programs)
    if "splits" in decode_legacy():
        most = LEGACY_CPU_SPLITS if sms is None else max(capacity // MIN_TOKENS_PER_SPLIT, 1)
        return int(max(1, min(want, most, MAX_SPLITS)))
    if sms is None:
        return int(max(1, min(-(-capacity // CPU_SPLIT_TOKENS), CPU_SPLITS)))
    return int(max(1, min(want, -(-capacity // SPLIT_TOKENS), MAX_SPLITS)))


def empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Output and workspace allocation (tests replace it to poison the buffers)."""
    return torch.empty(shape, dtype=dtype, device=device)


def buffers(
    q: torch.Tensor, splits: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(out, lse, o_partial, lse_partial)`` for a decode of ``q`` (batch, heads_q, head_dim)
    in ``splits`` splits per sequence; the partials are float32 and, with one split (where no
    kernel reads them), ``lse`` stands in for both."""
    batch, heads_q, head_dim = q.shape
    out = empty((batch, heads_q, head_dim), q.dtype, q.device)
    lse = empty((batch, heads_q), torch.float32, q.device)
    if splits <= 1:
        return out, lse, lse, lse
    po = empty((batch, heads_q, splits, head_dim), torch.float32, q.device)
    plse = empty((batch, heads_q, splits), torch.float32, q.device)
    return out, lse, po, plse
