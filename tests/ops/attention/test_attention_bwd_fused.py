"""The fused Triton backward: one dK/dV pass that adds dQ with fp32 atomics, its
deterministic mode (a separate dQ pass), the GQA split (a group shared by several programs,
fp32 partials summed in a fixed order) and the legacy kernels kept behind
``MILLKERNELS_ATTENTION_BWD=legacy``.

Gradients are checked against a float64 reference with the flash-attention rule (at most
twice PyTorch's own error in the input dtype), on odd lengths (1, and not multiples of any
block), fp16 and bf16, causal and not, GQA groups 1, 2 and 4, head_dim 64 and 128.
"""

from __future__ import annotations

import math

import pytest
import torch
from _attention_cases import dense_inputs

from millkernels.ops.attention import attention, capabilities
from millkernels.ops.attention import reference as R
from millkernels.ops.attention import triton_bwd as B
from millkernels.ops.attention import triton_fwd as F
from millkernels.testing import assert_flash_close

F16, BF16 = torch.float16, torch.bfloat16
TOL = {F16: 4 * 2.0**-10, BF16: 4 * 2.0**-7}  # four units of each dtype's precision


def _run(q, k, v, dout, causal, varlen=None, **kw):
    """(dq, dk, dv) of the Triton forward + backward with the backward's keywords ``kw``."""
    scale = q.shape[-1] ** -0.5
    win = (-1, 0) if causal else (-1, -1)
    lens = (None, None, q.shape[1], k.shape[1]) if varlen is None else varlen
    out, lse = F.forward(q, k, v, *lens, scale, win, 0.0, False)
    return B.backward(dout, None, q, k, v, out, lse, *lens, scale, win, 0.0, False, **kw)


def _check64(grads, q, k, v, dout, causal, varlen=None):
    """The flash rule against the float64 reference (PyTorch in the input dtype as the bar)."""
    kw = dict(window=(-1, 0) if causal else (-1, -1))
    if varlen is not None:
        kw.update(cu_seqlens_q=varlen[0], cu_seqlens_k=varlen[1])
    args = (dout.cpu(), None, q.cpu(), k.cpu(), v.cpu())
    g64 = R.attention_backward_ref(*args, compute_dtype=torch.float64, **kw)
    gpt = R.attention_backward_ref(*args, compute_dtype=None, **kw)
    for name, g, p, r, x in zip(("dq", "dk", "dv"), grads, gpt, g64, (q, k, v), strict=True):
        assert g.shape == x.shape and g.dtype == x.dtype, name
        assert torch.isfinite(g).all(), f"{name}: non-finite values"
        assert_flash_close(g.cpu(), p, r, name)


def _close(a, b, dtype, name):
    """Equal up to summation order (a last-bit change can flip a 16-bit rounding of dS)."""
    tol = TOL[dtype] * max(1.0, b.float().abs().max().item())
    torch.testing.assert_close(a, b, atol=tol, rtol=TOL[dtype], msg=lambda m: f"{name}: {m}")


# (batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim, dtype, causal)
CASES = [
    pytest.param(1, 37, 45, 4, 1, 64, BF16, True, id="mqa4-causal-bf16"),
    pytest.param(2, 19, 19, 2, 1, 64, F16, False, id="gqa2-f16"),
    pytest.param(1, 1, 23, 2, 2, 128, BF16, False, id="q1-d128"),
    pytest.param(1, 29, 1, 4, 2, 128, F16, True, id="k1-causal-d128"),
    pytest.param(1, 41, 17, 4, 4, 64, F16, True, id="mha-causal-q>k"),
]


@pytest.mark.parametrize("b, sq, sk, hq, hkv, d, dtype, causal", CASES)
@pytest.mark.parametrize(
    "mode",
    [
        pytest.param({}, id="atomic"),
        pytest.param({"deterministic": True}, id="deterministic"),
        pytest.param({"group_split": 1}, id="atomic-unsplit"),
        pytest.param({"mode": "split"}, id="split"),
    ],
)
def test_fused_backward_matches_float64_reference(
    triton_device, b, sq, sk, hq, hkv, d, dtype, causal, mode
):
    q, k, v = dense_inputs(b, sq, sk, hq, hkv, d, dtype, triton_device)
    dout = torch.randn_like(q)
    grads = _run(q, k, v, dout, causal, **mode)
    _check64(grads, q, k, v, dout, causal)


@pytest.mark.parametrize("split", [1, 2, 4])
def test_group_split_deterministic_and_equal_to_the_legacy_kernels(triton_device, split):
    """Every split of a group of 4 gives the same gradients as the legacy kernels (to the
    rounding of fp32 partial sums), and the deterministic mode is bitwise reproducible."""
    q, k, v = dense_inputs(1, 33, 27, 4, 1, 64, BF16, triton_device)
    dout = torch.randn_like(q)
    legacy = _run(q, k, v, dout, True, mode="legacy")
    first = _run(q, k, v, dout, True, deterministic=True, group_split=split)
    again = _run(q, k, v, dout, True, deterministic=True, group_split=split)
    for name, a, r, x in zip(("dq", "dk", "dv"), first, again, legacy, strict=True):
        assert torch.equal(a, r), f"{name}: deterministic=True differs between two runs"
        _close(a, x, BF16, name)
    atomic = _run(q, k, v, dout, True, group_split=split)
    for name, a, x in zip(("dq", "dk", "dv"), atomic, legacy, strict=True):
        _close(a, x, BF16, name)


def test_group_split_rejects_a_non_divisor(triton_device):
    q, k, v = dense_inputs(1, 5, 5, 4, 1, 64, F16, triton_device)
    with pytest.raises(ValueError, match="group_split"):
        _run(q, k, v, torch.randn_like(q), False, group_split=3)


def test_default_split_covers_the_gpu_only_when_the_grid_is_small():
    cpu = torch.device("cpu")  # the interpreter assumes an H100/H200's 132 SMs
    assert B._group_split(200, 8, cpu) == 1  # the grid already fills the GPU
    assert B._group_split(40, 8, cpu) == 4  # 40 * 4 >= 132
    assert B._group_split(10, 8, cpu) == 8  # the whole group, still below one wave
    assert B._group_split(10, 1, cpu) == 1  # MHA: nothing to split


def test_poisoned_buffers_are_overwritten(triton_device, monkeypatch):
    """Outputs and fp32 partials start as NaN: every element must be written (dense GQA with a
    split group, atomic dQ)."""
    q, k, v = dense_inputs(2, 21, 18, 4, 2, 64, F16, triton_device)
    dout = torch.randn_like(q)
    real_empty, real_empty_like = torch.empty, torch.empty_like

    def empty(*size, **kw):
        return real_empty(*size, **kw).fill_(math.nan)

    def empty_like(x, **kw):
        return real_empty_like(x, **kw).fill_(math.nan)

    monkeypatch.setattr(torch, "empty", empty)
    monkeypatch.setattr(torch, "empty_like", empty_like)
    grads = _run(q, k, v, dout, False, group_split=2)
    monkeypatch.undo()
    _check64(grads, q, k, v, dout, False)


@pytest.mark.parametrize(
    "d, modes",
    [
        (64, ({"group_split": 2}, {"deterministic": True, "group_split": 2})),
        (128, ({"mode": "split", "group_split": 2},)),
    ],
)
def test_varlen_split_keeps_sequences_apart(triton_device, d, modes):
    """Varlen with a split group: a length-1 sequence, tokens past cu_seqlens get zero."""
    lens_q, lens_k = [1, 19, 6], [7, 13, 1]
    cu_q = torch.tensor([0, *torch.tensor(lens_q).cumsum(0).tolist()], dtype=torch.int32)
    cu_k = torch.tensor([0, *torch.tensor(lens_k).cumsum(0).tolist()], dtype=torch.int32)
    tq, tk = int(cu_q[-1]) + 3, int(cu_k[-1]) + 2  # padding tokens past the last sequence
    q = torch.randn(tq, 4, d).to(BF16).to(triton_device)
    k = torch.randn(tk, 2, d).to(BF16).to(triton_device)
    v = torch.randn(tk, 2, d).to(BF16).to(triton_device)
    dout = torch.randn_like(q)
    varlen = (cu_q.to(triton_device), cu_k.to(triton_device), max(lens_q), max(lens_k))
    for mode in modes:
        dq, dk, dv = _run(q, k, v, dout, True, varlen=varlen, **mode)
        assert not dq[int(cu_q[-1]) :].any() and not dk[int(cu_k[-1]) :].any()
        assert not dv[int(cu_k[-1]) :].any()
        n_q, n_k = int(cu_q[-1]), int(cu_k[-1])
        grads = (dq[:n_q], dk[:n_k], dv[:n_k])
        _check64(grads, q[:n_q], k[:n_k], v[:n_k], dout[:n_q], True, varlen=(cu_q, cu_k))


def test_api_passes_deterministic_and_the_legacy_switch(triton_device, monkeypatch):
    """``deterministic`` reaches the launcher through autograd, and
    ``MILLKERNELS_ATTENTION_BWD=legacy`` selects the legacy kernels."""
    seen: list[dict] = []
    real = B.backward

    def spy(*args, **kwargs):
        seen.append({k: kwargs[k] for k in ("deterministic", "mode")})
        return real(*args, **kwargs)

    monkeypatch.setattr(B, "backward", spy)
    q, k, v = dense_inputs(1, 9, 9, 2, 1, 64, F16, triton_device)
    for det in (False, True):
        qg = q.clone().requires_grad_(True)
        attention(qg, k, v, deterministic=det, backend="triton").float().sum().backward()
    for mode in ("legacy", "split"):
        monkeypatch.setenv(capabilities.BWD_ENV, mode)
        qg = q.clone().requires_grad_(True)
        attention(qg, k, v, backend="triton").float().sum().backward()
        assert mode in capabilities.backward_setting()
    assert seen == [
        {"deterministic": False, "mode": "fused"},
        {"deterministic": True, "mode": "fused"},
        {"deterministic": False, "mode": "legacy"},
        {"deterministic": False, "mode": "split"},
    ]
    monkeypatch.setenv(capabilities.BWD_ENV, "fast")
    with pytest.raises(ValueError, match=capabilities.BWD_ENV):
        capabilities.backward_mode()
    assert capabilities.backward_setting().startswith("invalid")


def test_split_backward_runs_three_passes_deterministically(triton_device, monkeypatch):
    """``mode="split"`` at head_dim bucket 128 (d80 pads to it): the dV pass and the dK pass
    (``PART``) and the dQ pass, no atomics (bitwise reproducible), equal to the fused
    backward up to rounding; GQA with a split group, causal, odd lengths. At head_dim 64 it
    is the fused backward."""
    launches: list[int] = []
    real = B._attn_bwd_dkdv_kernel

    class Spy:
        def __getitem__(self, grid):
            def launch(*args, **kw):
                launches.append(kw["PART"])
                return real[grid](*args, **kw)

            return launch

    q, k, v = dense_inputs(1, 23, 30, 4, 2, 80, BF16, triton_device)
    dout = torch.randn_like(q)
    monkeypatch.setattr(B, "_attn_bwd_dkdv_kernel", Spy())
    first = _run(q, k, v, dout, True, mode="split", group_split=2)
    assert launches == [B.PART_DV.value, B.PART_DK.value]
    again = _run(q, k, v, dout, True, mode="split", group_split=2)
    monkeypatch.undo()
    _check64(first, q, k, v, dout, True)
    fused = _run(q, k, v, dout, True)
    for name, a, r, x in zip(("dq", "dk", "dv"), first, again, fused, strict=True):
        assert torch.equal(a, r), f"{name}: the split backward differs between two runs"
        _close(a, x, BF16, name)
    launches.clear()
    monkeypatch.setattr(B, "_attn_bwd_dkdv_kernel", Spy())
    q64, k64, v64 = dense_inputs(1, 5, 5, 2, 2, 64, BF16, triton_device)
    _run(q64, k64, v64, torch.randn_like(q64), False, mode="split")
    assert launches == [B.PART_BOTH.value]


def test_backward_rejects_an_unknown_mode(triton_device):
    q, k, v = dense_inputs(1, 3, 3, 1, 1, 64, F16, triton_device)
    with pytest.raises(ValueError, match="mode"):
        _run(q, k, v, torch.randn_like(q), False, mode="fast")
