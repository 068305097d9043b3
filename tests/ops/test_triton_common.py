"""The bf16 ``tl.dot`` workaround: ``triton_common.dot`` must be right under the interpreter."""

import pytest
import torch
import triton
import triton.language as tl

from millkernels.ops.triton_common import cast, dot, sub


@triton.jit
def _matmul_kernel(
    a_ptr, b_ptr, c_ptr, M, N, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr
):
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        a = tl.load(
            a_ptr + rm[:, None] * K + (k0 + rk)[None, :],
            mask=(rm[:, None] < M) & ((k0 + rk)[None, :] < K),
            other=0.0,
        )
        b = tl.load(
            b_ptr + (k0 + rk)[:, None] * N + rn[None, :],
            mask=((k0 + rk)[:, None] < K) & (rn[None, :] < N),
            other=0.0,
        )
        acc = dot(a, b, acc)
    tl.store(c_ptr + rm[:, None] * N + rn[None, :], acc, mask=(rm[:, None] < M) & (rn[None, :] < N))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize(("m", "n", "k"), [(1, 1, 1), (17, 33, 45), (64, 16, 16)])
def test_dot_matches_fp32_reference(triton_device, dtype, m, n, k):
    a = torch.randn(m, k, device=triton_device).to(dtype)
    b = torch.randn(k, n, device=triton_device).to(dtype)
    c = torch.full((m, n), float("nan"), device=triton_device)
    grid = (triton.cdiv(m, 16), triton.cdiv(n, 16))
    _matmul_kernel[grid](a, b, c, m, n, k, BM=16, BN=16, BK=16)
    ref = a.double() @ b.double()
    # Products of bf16/fp16 values are exact in fp32; only the fp32 accumulation rounds
    # (tf32 on a GPU for fp32 inputs).
    tol = 2e-2 if dtype == torch.float32 and triton_device == "cuda" else 1e-4
    assert not c.isnan().any()
    torch.testing.assert_close(c.double(), ref, atol=tol * (k**0.5), rtol=tol)


@triton.jit
def _cast_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n)
    tl.store(y_ptr + offs, cast(x, y_ptr.dtype.element_ty), mask=offs < n)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cast_rounds_to_nearest_even_like_torch(triton_device, dtype):
    x = torch.randn(1000, device=triton_device) * 3
    x[:4] = torch.tensor([1.1244, float("inf"), float("-inf"), 0.0])
    y = torch.full_like(x, float("nan"), dtype=dtype)
    _cast_kernel[(triton.cdiv(x.numel(), 256),)](x, y, x.numel(), BLOCK=256)
    assert torch.equal(y, x.to(dtype))  # torch's cast rounds to nearest even


@triton.jit
def _sub_kernel(a_ptr, b_ptr, c_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    a = tl.load(a_ptr + offs, mask=offs < n)
    b = tl.load(b_ptr + offs, mask=offs < n)
    tl.store(c_ptr + offs, sub(a, b), mask=offs < n)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sub_matches_torch(triton_device, dtype):
    a = (torch.randn(1000, device=triton_device) * 100).to(dtype)
    b = (torch.randn(1000, device=triton_device) * 100).to(dtype)
    a[:2] = torch.tensor([129.0, 131.0])  # the interpreter's bf16 bit-pattern subtraction: NaN
    b[:2] = torch.tensor([131.0, 131.0])
    c = torch.full_like(a, float("nan"))
    _sub_kernel[(triton.cdiv(a.numel(), 256),)](a, b, c, a.numel(), BLOCK=256)
    assert torch.equal(c, a - b)  # one rounding of the exact difference, as torch does
