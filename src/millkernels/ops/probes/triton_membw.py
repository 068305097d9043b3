"""Triton memory-bandwidth kernels: copy, read (a reduction) and write over 32-bit words.

Each program handles ``BLOCK`` consecutive words; pointers that are 16-byte aligned (the
api checks it) let Triton emit 16-byte vector loads and stores.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from millkernels.ops.analysis_spec import Expect, TritonAnalysis, TritonVariant

BLOCK = 4096  # words per program: 16 KiB, 4 x 16-byte accesses per thread at 8 warps
NUM_WARPS = 8


@triton.jit
def _copy_kernel(dst_ptr, src_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(dst_ptr + offs, tl.load(src_ptr + offs, mask=mask), mask=mask)


@triton.jit
def _read_kernel(src_ptr, partial_ptr, n, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    words = tl.load(src_ptr + offs, mask=offs < n, other=0)
    unsigned = words.to(tl.uint32, bitcast=True).to(tl.int64)
    tl.store(partial_ptr + pid, tl.sum(unsigned, axis=0))


@triton.jit
def _write_kernel(dst_ptr, value, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    fill = tl.full((BLOCK,), value, tl.int32)
    tl.store(dst_ptr + offs, fill, mask=offs < n)


def _grid(n: int) -> tuple[int]:
    return (triton.cdiv(n, BLOCK),)


def copy(dst: torch.Tensor, src: torch.Tensor) -> None:
    _copy_kernel[_grid(src.numel())](dst, src, src.numel(), BLOCK=BLOCK, num_warps=NUM_WARPS)


def read(src: torch.Tensor) -> torch.Tensor:
    grid = _grid(src.numel())
    partial = torch.empty(grid[0], dtype=torch.int64, device=src.device)
    _read_kernel[grid](src, partial, src.numel(), BLOCK=BLOCK, num_warps=NUM_WARPS)
    return partial.sum()


def write(dst: torch.Tensor, value: int) -> None:
    signed = value - 2**32 if value >= 2**31 else value
    _write_kernel[_grid(dst.numel())](dst, signed, dst.numel(), BLOCK=BLOCK, num_warps=NUM_WARPS)


def _variant(signature: dict[str, str], *vector_ops: str) -> TritonVariant:
    """The launch the probes make: 16-byte aligned buffers (the api checks it) of a word count
    that is a multiple of 16 (certification and the bench suite use whole MiB), which Triton
    specialises on, as it does on the pointers: the masked accesses become 16-byte vectors,
    ``BLOCK / (32 * NUM_WARPS) / 4`` of each of ``vector_ops`` per thread (without the word
    count's divisibility: four times as many 4-byte ones)."""
    aligned = [name for name, ty in signature.items() if ty.startswith("*")] + ["n"]
    signature = {**signature, "n": "i64", "BLOCK": "constexpr"}
    per_thread = BLOCK // (32 * NUM_WARPS) // 4
    expect = [
        Expect(f"kernel.op.{op}", "==", per_thread, "16-byte vector accesses") for op in vector_ops
    ]
    return TritonVariant(
        signature, {"BLOCK": BLOCK}, NUM_WARPS, divisible_by_16=aligned, expect=expect
    )


ANALYSIS = (
    TritonAnalysis(
        "probes.copy",
        _copy_kernel,
        [_variant({"dst_ptr": "*i32", "src_ptr": "*i32"}, "LDG", "STG")],
        hot=True,
    ),
    TritonAnalysis(
        "probes.read",
        _read_kernel,
        [_variant({"src_ptr": "*i32", "partial_ptr": "*i64"}, "LDG")],
        hot=True,
    ),
    TritonAnalysis(
        "probes.write",
        _write_kernel,
        [_variant({"dst_ptr": "*i32", "value": "i32"}, "STG")],
        hot=True,
    ),
)
