"""Bridge to the native extension ``millkernels._C``: array views and availability checks.

C++ never sees a framework object. :func:`view` describes a torch tensor, a CuPy array, or any
object with ``__cuda_array_interface__`` or ``__dlpack__`` as an ``_C.ArrayView`` (pointer,
shape, strides in elements, dtype, itemsize, device, and the stream to launch on), and the C++
side validates what its kernels rely on. CPU arrays get views too, so that validation is
testable on a machine without a GPU (the kernels themselves refuse them).

Nothing here touches a GPU at import time; CuPy is imported only for CuPy arrays.
"""

from __future__ import annotations

import ctypes
import functools
import importlib
import os
import sys
from types import ModuleType
from typing import Any

# DLPack device types (dlpack.h DLDeviceType) -> ArrayView.device_type.
_DLPACK_DEVICES = {1: "cpu", 2: "cuda", 3: "cuda_host", 10: "rocm", 13: "cuda_managed"}

# __cuda_array_interface__ typestr kind+bytes -> ArrayView.dtype.
_TYPESTR_DTYPES = {
    "f2": "f16", "f4": "f32", "f8": "f64",
    "i1": "i8", "i2": "i16", "i4": "i32", "i8": "i64",
    "u1": "u8", "u2": "u16", "u4": "u32", "u8": "u64",
    "b1": "bool", "c8": "c64", "c16": "c128",
}  # fmt: skip

_BUILD_HINT = "reinstall with nvcc on PATH: pip install --no-build-isolation -e ."

# cudaGetErrorString(cudaErrorInsufficientDriver). The CUDA runtime says this both when the
# driver is older than the runtime and when there is no NVIDIA driver at all.
_INSUFFICIENT_DRIVER = "CUDA driver version is insufficient for CUDA runtime version"
# The facts that tell the two apart: the loaded kernel driver, and its user-space library.
_DRIVER_VERSION_FILE = "/proc/driver/nvidia/version"
_LIBCUDA = "libcuda.so.1"


def require_native() -> ModuleType:
    """The extension module ``millkernels._C``.

    Raises
    ------
    RuntimeError
        When the extension is not built (no nvcc at install time) or cannot be loaded.
    """
    try:
        return importlib.import_module("millkernels._C")
    except ImportError as exc:
        raise RuntimeError(
            f"the native extension millkernels._C is not built or cannot load ({exc}); "
            f"{_BUILD_HINT}"
        ) from exc


def require_gpu() -> None:
    """Return when a CUDA GPU is visible.

    Asks the CUDA runtime through ``_C`` when it is built (works with a CPU-only torch),
    else torch.

    Raises
    ------
    RuntimeError
        ``"... no CUDA GPU is visible: <reason>"``.
    """
    try:
        native = importlib.import_module("millkernels._C")
    except ImportError:
        native = None
    if native is not None:
        try:
            native.require_gpu()
        except RuntimeError as exc:
            raise RuntimeError(_explain_no_gpu(str(exc))) from None
        return
    import torch

    if not torch.cuda.is_available():
        why = "torch.cuda.is_available() is False"
        if torch.version.cuda is None:
            why += f" (torch {torch.__version__} is a CPU-only build)"
        raise RuntimeError(f"no CUDA GPU is visible: {why}")


def nvidia_driver_present() -> bool:
    """True when an NVIDIA driver is installed: its kernel module is loaded (it writes
    ``/proc/driver/nvidia/version``) or its user-space library ``libcuda.so.1`` loads."""
    if os.path.exists(_DRIVER_VERSION_FILE):
        return True
    try:
        ctypes.CDLL(_LIBCUDA)
    except OSError:
        return False
    return True


def _explain_no_gpu(message: str) -> str:
    """``message`` from the CUDA runtime, with "driver version is insufficient" replaced by
    what it means when no NVIDIA driver is installed at all (kept for a driver too old)."""
    if _INSUFFICIENT_DRIVER not in message or nvidia_driver_present():
        return message
    return message.replace(
        _INSUFFICIENT_DRIVER,
        f"no NVIDIA driver / no CUDA GPU (no {_DRIVER_VERSION_FILE}, and {_LIBCUDA} does not load)",
    )


def cuda_unavailable_reason() -> str | None:
    """Why the native CUDA kernels cannot run here (None when they can); for backend tables."""
    try:
        require_native()
        require_gpu()
    except RuntimeError as exc:
        return str(exc)
    return None


def view(x: Any, name: str = "array") -> Any:
    """An ``_C.ArrayView`` of ``x``, launching on the current stream of ``x``'s framework.

    ``x`` is a torch tensor (any device; the stream is ``torch.cuda.current_stream``), a CuPy
    array (``cupy.cuda.get_current_stream``), an object with ``__cuda_array_interface__`` (the
    stream it names, else the legacy default stream), or an object with ``__dlpack__`` (taken
    through ``torch.from_dlpack``; torch's current stream). ``name`` appears in errors.

    Raises
    ------
    RuntimeError
        When ``_C`` is not built.
    TypeError
        When ``x`` is none of the above.
    ValueError
        When ``x``'s strides are not whole elements or it has a mask.
    """
    native = require_native()
    loaded_torch = sys.modules.get("torch")  # x can only be a tensor if torch is imported
    if loaded_torch is not None and isinstance(x, loaded_torch.Tensor):
        return _torch_view(native, x)
    cai = getattr(x, "__cuda_array_interface__", None)
    if cai is not None:
        if type(x).__module__.split(".")[0] == "cupy":
            return _cai_view(native, cai, name, "cuda", x.device.id, _cupy_stream(x.device.id))
        device_type, index = _dlpack_device(x)
        stream = cai.get("stream") or 0  # CAI v3: the producer's stream; absent -> default
        return _cai_view(native, cai, name, device_type, index, stream)
    if hasattr(x, "__dlpack__"):
        import torch

        return _torch_view(native, torch.from_dlpack(x))
    raise TypeError(
        f"{name}: expected a torch.Tensor, a CuPy array, or an object with "
        f"__cuda_array_interface__ or __dlpack__; got {type(x).__name__}"
    )


def _torch_view(native: ModuleType, t: Any) -> Any:
    import torch

    stream = 0
    if t.device.type == "cuda":
        stream = torch.cuda.current_stream(t.device).cuda_stream
    index = -1 if t.device.index is None else t.device.index
    return native.ArrayView(
        t.data_ptr(),
        tuple(t.shape),
        tuple(t.stride()),
        _torch_dtype_name(t.dtype),
        t.element_size(),
        t.device.type,
        index,
        stream,
    )


@functools.cache
def _torch_dtype_names() -> dict[Any, str]:
    import torch

    names = {
        "float16": "f16", "bfloat16": "bf16", "float32": "f32", "float64": "f64",
        "int8": "i8", "int16": "i16", "int32": "i32", "int64": "i64",
        "uint8": "u8", "uint16": "u16", "uint32": "u32", "uint64": "u64",
        "bool": "bool", "complex64": "c64", "complex128": "c128",
        "float8_e4m3fn": "f8e4m3", "float8_e5m2": "f8e5m2",
    }  # fmt: skip
    # getattr: older torch builds lack some (e.g. uint32); skip those.
    return {getattr(torch, k): v for k, v in names.items() if hasattr(torch, k)}


def _torch_dtype_name(dtype: Any) -> str:
    return _torch_dtype_names().get(dtype) or str(dtype).removeprefix("torch.")


def _cai_view(
    native: ModuleType, cai: dict, name: str, device_type: str, index: int, stream: int
) -> Any:
    if cai.get("mask") is not None:
        raise ValueError(
            f"{name}: masked arrays (__cuda_array_interface__ 'mask') are not supported"
        )
    typestr = cai["typestr"]
    itemsize = int(typestr[2:])
    dtype = _TYPESTR_DTYPES.get(typestr[1:], typestr[1:])
    shape = tuple(int(s) for s in cai["shape"])
    if cai.get("strides") is None:  # C-contiguous
        strides: list[int] = []
        step = 1
        for s in reversed(shape):
            strides.insert(0, step)
            step *= max(s, 1)
    else:
        if any(b % itemsize for b in cai["strides"]):
            raise ValueError(
                f"{name}: byte strides {tuple(cai['strides'])} are not multiples of the "
                f"itemsize {itemsize}"
            )
        strides = [b // itemsize for b in cai["strides"]]
    ptr = int(cai["data"][0] or 0)
    return native.ArrayView(ptr, shape, tuple(strides), dtype, itemsize, device_type, index, stream)


def _dlpack_device(x: Any) -> tuple[str, int]:
    """(device_type, index) from ``__dlpack_device__``; ("cuda", -1: ask the driver) without."""
    get = getattr(x, "__dlpack_device__", None)
    if get is None:
        return "cuda", -1
    kind, index = get()
    return _DLPACK_DEVICES.get(int(kind), f"dlpack{int(kind)}"), int(index)


def _cupy_stream(device_id: int) -> int:
    import cupy  # already imported: x is a CuPy array

    return int(cupy.cuda.get_current_stream(device_id).ptr)
