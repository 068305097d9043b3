"""How a paged decode call is cut into programs: the split count and the output and split
workspace buffers, shared by the Triton and CUDA decode launchers.

Each sequence's tokens are split between ``splits`` programs per (sequence, key/value head,
query-head tile); a combine step merges the splits. The count is chosen on the host from the
table's capacity and the GPU's SM count (no device sync).
"""

from __future__ import annotations

import torch

from millkernels import runtime

#: Most splits per sequence (the combine reads all of them per output element).
MAX_SPLITS = 64
#: Fewest tokens of the table's capacity per split: below this the combine's traffic and the
#: per-program setup outweigh the extra parallelism (not yet measured on a GPU).
MIN_TOKENS_PER_SPLIT = 256
#: Programs (CTAs) per SM the split count aims for. Both split kernels fit about 3 per SM
#: (Triton 160 registers at 4 warps, CUDA G=4 147); 512 programs on 132 SMs would be 1.3
#: waves (a 35% idle tail), ~8 per SM means many short waves, so the last partial wave costs
#: little. Estimated from the compile reports, not yet measured on a GPU.
PROGRAMS_PER_SM = 8
#: Splits on a CPU (the Triton interpreter): a few, so that the combine is exercised.
CPU_SPLITS = 4


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


def num_splits(
    batch: int, heads_q: int, heads_kv: int, capacity: int, sms: int | None, heads_per_program: int
) -> int:
    """Splits per sequence: about :data:`PROGRAMS_PER_SM` programs per SM in all, each split
    with at least :data:`MIN_TOKENS_PER_SPLIT` tokens of the table's ``capacity``, at most
    :data:`MAX_SPLITS`. A program handles ``heads_per_program`` query heads of one key/value
    head. ``sms`` None (a CPU) gives up to :data:`CPU_SPLITS`."""
    group = heads_q // heads_kv
    programs = max(batch * heads_kv * -(-group // heads_per_program), 1)
    want = -(-PROGRAMS_PER_SM * (sms or 1) // programs)
    most = CPU_SPLITS if sms is None else max(capacity // MIN_TOKENS_PER_SPLIT, 1)
    return int(max(1, min(want, most, MAX_SPLITS)))


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
