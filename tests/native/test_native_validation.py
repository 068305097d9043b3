"""C++ argument checks surface as ValueError naming the argument; no GPU -> RuntimeError.

The checks run before the GPU is needed (contiguity, sizes, alignment, device type, same
device), so views of CPU tensors reach them on any machine. Every call goes through the cuda
backend's wrappers (millkernels.ops.probes.cuda), i.e. the path api.py takes.
"""

from __future__ import annotations

import pytest
import torch

from millkernels import _native
from millkernels.ops.probes import cuda

pytestmark = pytest.mark.native


def words(n: int, dtype: torch.dtype = torch.int32) -> torch.Tensor:
    t = torch.zeros(n, dtype=dtype)
    assert t.data_ptr() % 16 == 0  # torch's CPU allocator aligns to 64 bytes
    return t


def misaligned(n: int) -> torch.Tensor:
    t = torch.zeros(n + 1, dtype=torch.int32)[1:]  # 4 bytes past an aligned allocation
    assert t.data_ptr() % 16 == 4
    return t


out64 = torch.zeros(1, dtype=torch.int64)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: cuda.copy(words(16), misaligned(16)), "mem_copy: src: expected a 16-byte aligned"),
        (lambda: cuda.copy(misaligned(16), words(16)), "mem_copy: dst: expected a 16-byte aligned"),
        (
            lambda: cuda.copy(words(16), words(15)),
            "mem_copy: dst and src: expected equal sizes in bytes, got 64 and 60",
        ),
        (
            lambda: cuda.copy(words(10, torch.uint8), words(10, torch.uint8)),
            "mem_copy: dst: expected a size in bytes divisible by 4, got 10",
        ),
        (
            lambda: cuda.copy(words(16), words(16)),
            "mem_copy: dst: expected an array in CUDA device memory, got device 'cpu'",
        ),
        (
            lambda: cuda.copy(words(16), words(32)[::2]),
            r"mem_copy: src: expected a contiguous \(C-order\) array",
        ),
        (lambda: cuda.read(misaligned(8), out64), "mem_read: src: expected a 16-byte aligned"),
        (
            lambda: cuda.read(words(7, torch.uint8), out64),
            "mem_read: src: expected a size in bytes divisible by 4, got 7",
        ),
        (
            lambda: cuda.read(words(8), torch.zeros(1, dtype=torch.int32)),
            "mem_read: out: expected a 1-element int64 array, got 1 element.s. of dtype 'i32'",
        ),
        (
            lambda: cuda.read(words(8), torch.zeros(2, dtype=torch.int64)),
            "mem_read: out: expected a 1-element int64 array, got 2 element",
        ),
        (
            lambda: cuda.read(words(8), out64),
            "mem_read: src: expected an array in CUDA device memory, got device 'cpu'",
        ),
        (lambda: cuda.write(misaligned(8), 0), "mem_write: dst: expected a 16-byte aligned"),
        (lambda: cuda.write(words(8), -1), "mem_write: value: expected 0 <= value <= 4294967295"),
        (lambda: cuda.write(words(8), 2**32), "mem_write: value: expected 0 <= value"),
        (lambda: cuda.write(words(8), 5), "mem_write: dst: expected an array in CUDA device"),
        (
            lambda: cuda.pattern_write(words(6, torch.uint8), 0, 0),
            "pattern_write: buf: expected a size in bytes divisible by 4, got 6",
        ),
        (lambda: cuda.pattern_write(words(8), 3, 0), "pattern_write: pattern_id: expected 0 <="),
        (lambda: cuda.pattern_write(words(8), 0, 2**32), "pattern_write: seed: expected 0 <="),
        (lambda: cuda.pattern_check(misaligned(8), 0, 0, 4), "pattern_check: buf: expected a 16"),
        (lambda: cuda.pattern_check(words(8), 0, 0, -1), "pattern_check: max_report: expected"),
        (lambda: cuda.pattern_check(words(8), 0, 0, 2**16 + 1), "pattern_check: max_report"),
        (lambda: cuda.pattern_check(words(8), 1, 0, 4), "pattern_check: buf: expected an array"),
    ],
)
def test_cpu_arguments_raise_value_error(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


class FakeCudaArray:
    """Describes device memory it does not own: only for calls that fail before any launch."""

    def __init__(self, words: int, device: int = 0, ptr: int = 0x7F0000000000):
        self.device = device
        self.__cuda_array_interface__ = {
            "data": (ptr, False),
            "shape": (words,),
            "typestr": "<u4",
            "strides": None,
            "version": 3,
        }

    def __dlpack_device__(self) -> tuple[int, int]:
        return (2, self.device)  # kDLCUDA


def test_different_devices_raise_value_error() -> None:
    with pytest.raises(
        ValueError, match="mem_copy: dst and src: expected the same device, got cuda:0 and cuda:1"
    ):
        cuda.copy(FakeCudaArray(8, 0), FakeCudaArray(8, 1))
    out = torch.zeros(1, dtype=torch.int64)
    with pytest.raises(ValueError, match="mem_read: out: expected an array in CUDA device"):
        cuda.read(FakeCudaArray(8, 0), out)


no_gpu = pytest.mark.skipif(
    _native.cuda_unavailable_reason() is None, reason="a GPU is visible: these calls would launch"
)


@no_gpu
@pytest.mark.parametrize(
    "call",
    [
        lambda a, b: cuda.copy(a, b),
        lambda a, b: cuda.write(a, 1),
        lambda a, b: cuda.pattern_write(a, 2, 7),
        lambda a, b: cuda.pattern_check(a, 1, 0, 16),
    ],
)
def test_without_gpu_wrappers_raise_runtime_error(call) -> None:
    with pytest.raises(RuntimeError, match="no CUDA GPU is visible: "):
        call(FakeCudaArray(1000, 0), FakeCudaArray(1000, 0))


@no_gpu
def test_without_gpu_read_and_require_gpu_raise_runtime_error() -> None:
    out = FakeCudaArray(2, 0)  # 8 bytes
    out.__cuda_array_interface__["typestr"] = "<i8"
    out.__cuda_array_interface__["shape"] = (1,)
    with pytest.raises(RuntimeError, match="mem_read: no CUDA GPU is visible: "):
        cuda.read(FakeCudaArray(1000, 0), out)
    with pytest.raises(RuntimeError, match="no CUDA GPU is visible: "):
        _native.require_gpu()
    assert "no CUDA GPU is visible" in (_native.cuda_unavailable_reason() or "")
