"""Attention: ``millkernels.ops.attention.attention`` (forward, and forward + backward) and
``attention_decode`` (paged KV cache) per backend, with PyTorch's
``scaled_dot_product_attention`` as the baseline (backend ``torch``).

Each result is checked with flash-attention's rule against SDPA in float32 before it is timed.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from millkernels.bench import counts
from millkernels.bench.suites import attention as attention_suite
from millkernels.bench.suites import decode as decode_suite
from millkernels.dispatch import BACKENDS
from millkernels.testing import flash_tolerance_ok

GPU = torch.cuda.is_available()
MODULE = "millkernels.ops.attention"
DTYPE = torch.bfloat16 if GPU else torch.float16
DTYPE_NAME = "bf16" if GPU else "fp16"

#: The reference backend (plain PyTorch, S x S scores) is timed on the CPU only: at GPU sizes it
#: would need tens of GiB and says nothing about the kernels.
BACKENDS_TIMED = tuple(b for b in BACKENDS if b != "reference" or not GPU)

# The cases of the ``attention`` and ``attention_decode`` suites (``millkernels bench``, quick
# sizes). (batch, seqlen, heads_q, heads_kv, head_dim, causal), forward and forward+backward:
FWD_SHAPES = [
    (b, s, h, h, d, causal)
    for b, s, h, d in attention_suite.shapes(GPU, quick=True)
    for causal in attention_suite.causals(GPU)
]
BWD_SHAPES = FWD_SHAPES
# (batch, heads_q, heads_kv, head_dim, cached tokens, block size): decode-step shapes.
DECODE_SHAPES = [
    (batch, *decode_suite.heads(GPU), decode_suite.HEAD_DIM, context, block)
    for batch, context, block in decode_suite.shapes(GPU, quick=True)
]


def _ids(shape: tuple) -> str:
    return "x".join(str(int(s)) if not isinstance(s, bool) else ("c" if s else "n") for s in shape)


def _sdpa(q, k, v, causal: bool) -> torch.Tensor:
    """SDPA on (batch, seq, heads, dim) tensors, GQA without copying KV heads. Causal cases
    here have seqlen_q == seqlen_k, where SDPA's causal mask is the bottom-right one."""
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    gqa = q.shape[2] != k.shape[2]
    return F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal, enable_gqa=gqa).transpose(
        1, 2
    )


def _inputs(b, s, hq, hk, d, device, requires_grad=False):
    make = lambda h: torch.randn(b, s, h, d, device=device, dtype=DTYPE)
    q, k, v = make(hq), make(hk), make(hk)
    return [t.requires_grad_(requires_grad) for t in (q, k, v)]


def _check(out, q, k, v, causal) -> None:
    ref32 = _sdpa(q.float(), k.float(), v.float(), causal)
    ref_lowp = _sdpa(q, k, v, causal)
    ok, err, base = flash_tolerance_ok(out.detach(), ref_lowp.detach(), ref32.detach())
    assert ok, f"max error {err:.3g} > 2 x torch's {base:.3g} + 1e-5"


@pytest.mark.parametrize("backend", ("torch", *BACKENDS_TIMED))
@pytest.mark.parametrize("shape", FWD_SHAPES, ids=_ids)
def test_attention_fwd(mk_bench, mk_family, mk_call, device, shape, backend) -> None:
    mod = mk_family(MODULE, "attention")
    b, s, hq, hk, d, causal = shape
    q, k, v = _inputs(b, s, hq, hk, d, device)
    if backend == "torch":
        fn = lambda: _sdpa(q, k, v, causal)
    else:
        fn = lambda: mod.attention(q, k, v, causal=causal, backend=backend)
    with torch.no_grad():
        _check(mk_call(fn), q, k, v, causal)
        mk_bench(fn, family="attention", op="attention",
                 shape={"B": b, "S": s, "Hq": hq, "Hkv": hk, "D": d, "causal": causal},
                 dtype=DTYPE_NAME, backend=backend,
                 flops=counts.attention_flops(b, hq, s, s, d, causal=causal),
                 bytes=counts.attention_bytes(b, hq, s, s, d, DTYPE, kv_heads=hk))  # fmt: skip


@pytest.mark.parametrize("backend", ("torch", *BACKENDS_TIMED))
@pytest.mark.parametrize("shape", BWD_SHAPES, ids=_ids)
def test_attention_fwd_bwd(mk_bench, mk_family, mk_call, device, shape, backend) -> None:
    mod = mk_family(MODULE, "attention")
    b, s, hq, hk, d, causal = shape
    q, k, v = _inputs(b, s, hq, hk, d, device, requires_grad=True)
    grad = torch.randn(b, s, hq, d, device=device, dtype=DTYPE)
    if backend == "torch":
        forward = lambda: _sdpa(q, k, v, causal)
    else:
        forward = lambda: mod.attention(q, k, v, causal=causal, backend=backend)

    def fn():
        q.grad = k.grad = v.grad = None
        forward().backward(grad)

    out = mk_call(forward)
    _check(out, q, k, v, causal)
    fn()
    assert all(t.grad is not None and bool(t.grad.isfinite().all()) for t in (q, k, v))
    flops = counts.attention_flops(b, hq, s, s, d, causal=causal, direction="fwd_bwd")
    mk_bench(fn, family="attention", op="attention_fwd_bwd",
             shape={"B": b, "S": s, "Hq": hq, "Hkv": hk, "D": d, "causal": causal},
             dtype=DTYPE_NAME, backend=backend, flops=flops)  # fmt: skip


def _paged(batch, hk, d, seqlen, block, device):
    """A paged cache holding ``seqlen`` tokens per sequence in shuffled blocks, and the same
    keys/values contiguous (for the reference and the baseline)."""
    per_seq = math.ceil(seqlen / block)
    num_blocks = batch * per_seq + 3
    k_cache = torch.randn(num_blocks, block, hk, d, device=device, dtype=DTYPE)
    v_cache = torch.randn(num_blocks, block, hk, d, device=device, dtype=DTYPE)
    perm = torch.randperm(num_blocks, device=device)[: batch * per_seq]
    table = perm.view(batch, per_seq).to(torch.int32)
    lens = torch.full((batch,), seqlen, dtype=torch.int32, device=device)
    k = k_cache[table.long()].reshape(batch, per_seq * block, hk, d)[:, :seqlen]
    v = v_cache[table.long()].reshape(batch, per_seq * block, hk, d)[:, :seqlen]
    return k_cache, v_cache, table, lens, k.contiguous(), v.contiguous()


@pytest.mark.parametrize("backend", ("torch", *BACKENDS_TIMED))
@pytest.mark.parametrize("shape", DECODE_SHAPES, ids=_ids)
def test_attention_decode(mk_bench, mk_family, mk_call, device, shape, backend) -> None:
    mod = mk_family(MODULE, "attention_decode")
    batch, hq, hk, d, seqlen, block = shape
    k_cache, v_cache, table, lens, k, v = _paged(batch, hk, d, seqlen, block, device)
    q = torch.randn(batch, hq, d, device=device, dtype=DTYPE)
    if backend == "torch":  # SDPA over the contiguous copy of the cache (no paging)
        fn = lambda: _sdpa(q[:, None], k, v, False)[:, 0]
    else:
        fn = lambda: mod.attention_decode(q, k_cache, v_cache, table, lens, backend=backend)
    out = mk_call(fn)
    _check(out[:, None], q[:, None], k, v, False)
    mk_bench(fn, family="attention", op="attention_decode",
             shape={"B": batch, "Hq": hq, "Hkv": hk, "D": d, "L": seqlen, "block": block},
             dtype=DTYPE_NAME, backend=backend,
             flops=counts.attention_flops(batch, hq, 1, seqlen, d),
             bytes=counts.attention_bytes(batch, hq, 1, seqlen, d, DTYPE, kv_heads=hk))  # fmt: skip
