"""ArrayView construction from torch tensors, NumPy (DLPack) and __cuda_array_interface__."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from millkernels import _native

pytestmark = pytest.mark.native


class FakeCudaArray:
    """Describes device memory it does not own; only its description is ever read."""

    def __init__(self, ptr=0x10000, shape=(8,), typestr="<u4", strides=None, **extra):
        self.__cuda_array_interface__ = {
            "data": (ptr, False),
            "shape": shape,
            "typestr": typestr,
            "strides": strides,
            "version": 3,
            **extra,
        }


class FakeCudaArrayOnDevice(FakeCudaArray):
    def __init__(self, index: int, **kw):
        super().__init__(**kw)
        self.index = index

    def __dlpack_device__(self) -> tuple[int, int]:
        return (2, self.index)  # kDLCUDA


@pytest.mark.parametrize(
    ("dtype", "name"),
    [
        (torch.float32, "f32"),
        (torch.bfloat16, "bf16"),
        (torch.float16, "f16"),
        (torch.int32, "i32"),
        (torch.uint8, "u8"),
        (torch.int64, "i64"),
        (torch.float8_e4m3fn, "f8e4m3"),
    ],
)
def test_torch_cpu_tensor(dtype: torch.dtype, name: str) -> None:
    t = torch.zeros(3, 5, dtype=dtype)
    v = _native.view(t)
    assert v.ptr == t.data_ptr()
    assert (v.shape, v.strides) == ([3, 5], [5, 1])
    assert (v.dtype, v.itemsize) == (name, t.element_size())
    assert (v.device_type, v.device_index, v.stream) == ("cpu", -1, 0)
    assert v.nbytes == 15 * t.element_size() and v.numel == 15 and v.is_contiguous


def test_torch_strides_are_in_elements() -> None:
    t = torch.zeros(4, 6, dtype=torch.float64).t()
    v = _native.view(t)
    assert (v.shape, v.strides, v.is_contiguous) == ([6, 4], [1, 6], False)
    sliced = _native.view(torch.zeros(10, dtype=torch.int32)[1:])
    assert sliced.ptr % 16 == 4


def test_numpy_through_dlpack() -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    v = _native.view(a)
    assert v.ptr == a.ctypes.data
    assert (v.shape, v.strides, v.dtype, v.device_type) == ([3, 4], [4, 1], "f32", "cpu")


def test_cuda_array_interface() -> None:
    v = _native.view(FakeCudaArray(ptr=0x20000, shape=(2, 3), typestr="<f2"))
    assert (v.ptr, v.shape, v.strides) == (0x20000, [2, 3], [3, 1])
    assert (v.dtype, v.itemsize, v.device_type, v.device_index, v.stream) == (
        "f16",
        2,
        "cuda",
        -1,
        0,
    )
    v = _native.view(FakeCudaArray(shape=(2, 3), strides=(4, 8)))
    assert (v.strides, v.is_contiguous) == ([1, 2], False)
    assert _native.view(FakeCudaArray(stream=2)).stream == 2  # CAI v3: the producer's stream
    assert _native.view(FakeCudaArrayOnDevice(3)).device_index == 3
    assert _native.view(FakeCudaArray(typestr="|V2")).dtype == "V2"


def test_cuda_array_interface_rejects_partial_elements_and_masks() -> None:
    with pytest.raises(ValueError, match=r"x: byte strides \(6,\) are not multiples"):
        _native.view(FakeCudaArray(strides=(6,)), "x")
    with pytest.raises(ValueError, match="x: masked arrays"):
        _native.view(FakeCudaArray(mask=FakeCudaArray()), "x")


def test_unsupported_object() -> None:
    with pytest.raises(TypeError, match="buf: expected a torch.Tensor, a CuPy array"):
        _native.view([1, 2, 3], "buf")


def test_arrayview_constructor_validates() -> None:
    c = _native.require_native()
    with pytest.raises(ValueError, match="ArrayView: strides: expected 2 entries"):
        c.ArrayView(0, [2, 2], [1], "f32", 4, "cpu")
    with pytest.raises(ValueError, match="ArrayView: shape: expected non-negative"):
        c.ArrayView(0, [-1], [1], "f32", 4, "cpu")
    with pytest.raises(ValueError, match="ArrayView: itemsize: expected > 0"):
        c.ArrayView(0, [1], [1], "f32", 0, "cpu")
    v = c.ArrayView(0x40, [2], [1], "u32", 4, "cuda", 0, 7)
    assert "ptr=0x40" in repr(v) and "device='cuda:0'" in repr(v)
