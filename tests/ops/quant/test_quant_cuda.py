"""The CUDA w4a16 kernel (csrc/quant/): argument checks (no GPU needed: they run before the
GPU check, on CPU views) and, on a GPU, results against the float32 reference."""

from __future__ import annotations

import pytest
import torch

from millkernels import quant
from millkernels.dispatch import BackendUnavailable
from millkernels.ops.quant import api

pytestmark = pytest.mark.native


def _c():
    from millkernels._native import require_native

    return require_native()


def _views(**tensors):
    from millkernels._native import view

    return {k: (None if v is None else view(v, k)) for k, v in tensors.items()}


def _small_m_args(m=2, k=128, n=16, group=32, split=1, x_dtype=torch.float16, **override):
    t = {
        "x": torch.zeros(m, k, dtype=x_dtype),
        "repacked": torch.zeros(n, k // 8, dtype=torch.int32),
        "scales_t": torch.zeros(n, k // group, dtype=x_dtype),
        "zeros_t": torch.zeros(n, k // group, dtype=torch.uint8),
        "bias": None,
        "out": torch.zeros(m, n, dtype=x_dtype),
        "partial": torch.zeros(split, m, n) if split > 1 else None,
    }
    t.update(override)
    return {**_views(**t), "group": group, "split": split}


@pytest.mark.parametrize(
    "override,match",
    [
        ({"m": 17}, "M"),
        ({"k": 100}, "multiple of 32"),
        ({"group": 48}, "group"),
        ({"x_dtype": torch.float32}, "x"),
        ({"repacked": torch.zeros(16, 8, dtype=torch.int32)}, "repacked"),
        ({"scales_t": torch.zeros(16, 4, dtype=torch.bfloat16)}, "scales_t"),
        ({"zeros_t": torch.zeros(16, 3, dtype=torch.uint8)}, "zeros_t"),
        ({"out": torch.zeros(2, 15, dtype=torch.float16)}, "out"),
        ({"split": 2}, "partial"),
        ({"split": 5}, "split"),
        ({}, "CUDA device memory"),  # everything right but on the CPU: the device check
    ],
)
def test_small_m_argument_checks(override, match):
    sizes = {k: override.pop(k) for k in ("m", "k", "group", "x_dtype") if k in override}
    split = override.pop("split", 1)
    args = _small_m_args(**sizes, split=split, **override)
    if split == 2:
        args["partial"] = None
    with pytest.raises(ValueError, match=match):
        _c().w4a16_small_m(**args)


def test_repack_argument_checks():
    canon = torch.zeros(8, 16, dtype=torch.int32)
    with pytest.raises(ValueError, match="k"):
        _c().w4_repack(**_views(canonical=canon, repacked=torch.zeros(16, 8, dtype=torch.int32)),
                       k=60, n=16)  # fmt: skip
    with pytest.raises(ValueError, match="repacked"):
        _c().w4_repack(**_views(canonical=canon, repacked=torch.zeros(16, 4, dtype=torch.int32)),
                       k=64, n=16)  # fmt: skip
    with pytest.raises(ValueError, match="canonical"):
        _c().w4_repack(**_views(canonical=canon.float(), repacked=torch.zeros(16, 8,
                       dtype=torch.int32)), k=64, n=16)  # fmt: skip


def test_table_serves_only_what_the_kernel_does():
    facts = {
        "op": "matmul", "scheme": "w4a16", "device": "cuda", "dtype": "float16",
        "capability": (9, 0), "group_size": 128, "in_features": 4096, "m": 16,
    }  # fmt: skip
    spec = quant.TABLE.spec("cuda")
    assert spec.serves(facts) is None
    assert "M <= 16" in spec.serves({**facts, "m": 17})
    assert "w4a16 only" in spec.serves({**facts, "scheme": "w8a16"})
    assert "multiples of 32" in spec.serves({**facts, "group_size": 48})
    assert "CUDA tensors" in spec.serves({**facts, "device": "cpu"})
    # auto never reaches cuda while triton serves (cuda is unverified on a GPU so far)
    assert quant.TABLE.names().index("triton") < quant.TABLE.names().index("cuda")


def test_cuda_backend_refuses_cpu_tensors():
    qw = quant.quantize(torch.randn(16, 64), "w4a16", group_size=32)
    with pytest.raises(BackendUnavailable, match="cuda"):
        quant.matmul(torch.randn(1, 64).half(), qw, backend="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 2, 3, 8, 13, 16])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("group_size,symmetric", [(32, False), (128, True), (-1, False)])
def test_cuda_w4a16_gpu(m, dtype, group_size, symmetric):
    k, n = 1024, 136
    qw = quant.quantize(
        torch.randn(n, k, device="cuda"), "w4a16", group_size=group_size, symmetric=symmetric
    )
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    assert _reason(x, qw) is None
    _check(quant.matmul(x, qw, backend="cuda"), x, qw)


@pytest.mark.gpu
@pytest.mark.parametrize("split", [1, 2, 4])
def test_cuda_w4a16_split_and_bias_gpu(split):
    from millkernels.ops.quant import cuda

    k, n, m = 4096, 200, 5
    qw = quant.quantize(torch.randn(n, k, device="cuda"), "w4a16", group_size=128)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    bias = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    out = cuda.matmul(x, qw.qweight, qw.scales, qw.zeros, bias, group_size=128, n=n, split=split)
    _check(out, x, qw, bias)


@pytest.mark.gpu
def test_cuda_repack_cache_follows_in_place_changes():
    from millkernels.ops.quant import cuda

    qw = quant.quantize(torch.randn(64, 256, device="cuda"), "w4a16", group_size=64)
    x = torch.randn(2, 256, device="cuda", dtype=torch.float16)
    first = quant.matmul(x, qw, backend="cuda")
    qw.qweight.copy_(quant.quantize(torch.randn(64, 256, device="cuda"), "w4a16",
                                    group_size=64).qweight)  # fmt: skip
    again = quant.matmul(x, qw, backend="cuda")
    assert not torch.equal(first, again)
    ref = x.float() @ qw.dequantize().t()
    assert (again.float() - ref).abs().max() <= 1e-2 * ref.abs().max()
    assert cuda.prepare(qw.qweight, qw.scales, qw.zeros, 256, 64)[0].shape == (64, 32)


def _reason(x, qw):
    return quant.TABLE.reason("cuda", api.call_facts(x, qw.scheme, qw.group_size, qw.in_features))


def _check(out, x, qw, bias=None):
    """Output rounding (half an ulp, a full one allowed) plus fp32 accumulation slack."""
    w = qw.dequantize()
    ref = x.float() @ w.t() + (0 if bias is None else bias.float())
    bound = 2.0**-7 * ref.abs() + 2.0**-12 * (x.float().abs() @ w.abs().t()) + 1e-6
    err = (out.float() - ref).abs()
    assert out.dtype == x.dtype and (err <= bound).all(), f"max err {err.max():.3g}"


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_layout_model(dtype):
    """A NumPy model of csrc/quant/w4a16.cu's bit manipulation: the repack's nibble order and
    the kernel's lop3 magic-number decode give back the canonical codes in K order (checks
    the layout design; the CUDA code itself runs only in the GPU tests above)."""
    import numpy as np

    from millkernels.ops.quant import formats

    k, n = 64, 3
    codes = torch.randint(0, 16, (k, n), dtype=torch.int32)
    canonical = formats.pack(codes, 4).numpy().view(np.uint32)  # (K/8, N)
    order = [0, 2, 4, 6, 1, 3, 5, 7]
    repacked = np.zeros((n, k // 8), dtype=np.uint32)  # w4_repack_kernel
    for p, e in enumerate(order):
        repacked |= ((canonical.T >> np.uint32(4 * e)) & np.uint32(0xF)) << np.uint32(4 * p)
    magic, base = (0x64006400, 1024.0) if dtype == "f16" else (0x43004300, 128.0)
    decoded = np.zeros((n, k), dtype=np.float32)
    for word in range(k // 8):  # per 32-bit word: 4 lop3 steps, each a pair of neighbours
        for sh in range(4):
            bits = ((repacked[:, word] >> np.uint32(4 * sh)) & np.uint32(0x000F000F)) | np.uint32(
                magic
            )
            lo, hi = (bits & 0xFFFF).astype(np.uint16), (bits >> 16).astype(np.uint16)
            if dtype == "f16":
                pair = [
                    lo.view(np.float16).astype(np.float32),
                    hi.view(np.float16).astype(np.float32),
                ]
            else:
                pair = [(v.astype(np.uint32) << 16).view(np.float32) for v in (lo, hi)]
            decoded[:, 8 * word + 2 * sh] = pair[0] - base
            decoded[:, 8 * word + 2 * sh + 1] = pair[1] - base
    assert np.array_equal(decoded, codes.numpy().T.astype(np.float32))
