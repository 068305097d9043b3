"""The attention compile criterion, checked offline: on sm_90 the training kernels use wgmma and do
not spill at head_dim 64 and 128.

The whole package is analysed by `millkernels analyze --check` in CI; this test pins the
attention part of it, including the tensor-core instruction, on the first (default) config of
each kernel and head dim, so a change that loses wgmma or starts spilling fails here with the
kernel named.
"""

from __future__ import annotations

import pytest

from millkernels.analyze.core import analyze_kernels
from millkernels.analyze.registry import Registry, triton_kernels

KERNELS = ("attention.fwd", "attention.bwd_dkdv", "attention.bwd_dq")


def _first_variants(head_dims: tuple[int, ...]) -> Registry:
    package = triton_kernels()
    reg = Registry()
    for name in KERNELS:
        k = package.triton[name]
        picked = []
        for d in head_dims:
            dense = [
                v
                for v in k.variants
                if v.constexprs["HEAD_DIM"] == d and not v.constexprs["VARLEN"]
            ]
            picked.append(dense[0])
        reg.register_triton(name, k.fn, picked, hot=True)
    return reg


@pytest.fixture(scope="module")
def sm90():
    return analyze_kernels("sm_90", registry=_first_variants((64, 128)), include_cuda=False)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("head_dim", [64, 128])
def test_training_kernels_use_wgmma_without_spills_on_sm90(sm90, kernel, head_dim):
    rows = [
        r for r in sm90.reports if r.kernel == kernel and f"HEAD_DIM={head_dim} " in r.variant + " "
    ]
    assert len(rows) == 1, [(r.kernel, r.variant) for r in sm90.reports]
    r = rows[0]
    assert r.status == "ok", r.reason
    assert "HGMMA" in r.tensor_core_ops, r.tensor_core_counts
    assert r.spill_bytes == 0, (r.variant, r.spill_bytes)


def test_analysis_assumes_only_strides_every_launch_has():
    """The analysis lets Triton assume the q/k/v/o/dO strides are multiples of 16 (as Triton's
    launch-time specialisation does when they are). For head_dim 64 and 128 they are, whether
    the tensors are contiguous or views of a packed qkv projection; lengths and lse strides,
    which follow seqlen, are never assumed."""
    import torch

    from millkernels.ops.attention.triton_fwd import aligned_for_analysis, fwd_signature

    aligned = set(aligned_for_analysis(fwd_signature()))
    assert {"seqlen_q", "seqlen_k", "stride_lb", "stride_lh"}.isdisjoint(aligned)
    assert {"stride_qs", "stride_kb", "stride_oh"} <= aligned
    for head_dim in (64, 128):
        for heads, seqlen in ((1, 1), (3, 17), (5, 113)):
            qkv = torch.empty(2, seqlen, 3, heads, head_dim)
            q = qkv[:, :, 0]
            dense = torch.empty(2, seqlen, heads, head_dim)
            for t in (q, dense):
                assert all(s % 16 == 0 for s in t.stride()[:3]), (t.stride(), head_dim)
