"""What this machine has: GPUs, the native extension, Triton and the interpreter.

Every query is lazy and cached: nothing here touches the GPU at import time.
"""

from __future__ import annotations

import functools
import importlib
import os
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class GPUInfo:
    """One CUDA device as torch sees it."""

    index: int
    name: str
    capability: tuple[int, int]
    memory_bytes: int
    multiprocessors: int

    @property
    def arch(self) -> str:
        """The architecture name, e.g. ``sm_90``."""
        return f"sm_{self.capability[0]}{self.capability[1]}"


@dataclass(frozen=True)
class NativeInfo:
    """Whether ``millkernels._C`` is importable, and what it was built for."""

    built: bool
    cuda_archs: list[str] = field(default_factory=list)
    cuda_version: str | None = None
    error: str | None = None


@functools.cache
def gpus() -> tuple[GPUInfo, ...]:
    """The CUDA GPUs torch can use (empty without a GPU or without a CUDA build of torch)."""
    import torch

    if not torch.cuda.is_available():
        return ()
    found = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        found.append(
            GPUInfo(i, p.name, (p.major, p.minor), int(p.total_memory), p.multi_processor_count)
        )
    return tuple(found)


def sm_count(device_index: int = 0) -> int:
    """Streaming multiprocessors of CUDA device ``device_index`` (cached with :func:`gpus`);
    kernels size their grids by it."""
    return gpus()[device_index].multiprocessors


#: Streaming multiprocessors grids are planned for where no GPU is visible (the interpreter):
#: an H100/H200's 132.
DEFAULT_SMS = 132


def device_sms(device: Any) -> int:
    """SMs of a torch ``device``'s GPU (cached, :func:`sm_count`), or :data:`DEFAULT_SMS` off a
    GPU, so heuristics that size grids plan the same under the interpreter as on an H100."""
    if getattr(device, "type", None) != "cuda":
        return DEFAULT_SMS
    if device.index is None:
        import torch

        return sm_count(torch.cuda.current_device())
    return sm_count(device.index)


def has_gpu() -> bool:
    """True when at least one CUDA GPU is usable."""
    return bool(gpus())


def capability(device: Any = None) -> tuple[int, int] | None:
    """Compute capability of ``device`` (a torch device or index; default: current GPU)."""
    import torch

    if not has_gpu():
        return None
    return tuple(torch.cuda.get_device_capability(device))  # type: ignore[return-value]


@functools.cache
def native() -> NativeInfo:
    """Import ``millkernels._C`` once and report what it was built with."""
    try:
        c = importlib.import_module("millkernels._C")
    except ImportError as exc:
        return NativeInfo(built=False, error=str(exc))
    info = c.build_info()
    archs = [a for a in str(info.get("cuda_archs", "")).replace(";", ",").split(",") if a]
    return NativeInfo(built=True, cuda_archs=archs, cuda_version=info.get("cuda_version"))


def triton_version() -> str | None:
    """The installed Triton version, or None when Triton is missing."""
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def triton_interpret() -> bool:
    """True when Triton kernels run on the CPU under ``TRITON_INTERPRET=1``.

    Triton decides this when a kernel is decorated, so set the variable before importing
    millkernels' kernel modules.
    """
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def triton_unavailable_reason() -> str | None:
    """Why Triton kernels cannot run on this machine at all (None: they can).

    The one answer for every family's ``triton`` backend: ``millkernels info`` shows it and a
    call that names the backend raises with it. Triton launches on a CUDA GPU, or on the CPU
    under ``TRITON_INTERPRET=1``; with neither, every call would refuse.
    """
    if triton_version() is None:
        return "Triton is not installed"
    if not triton_interpret() and not has_gpu():
        return (
            "no CUDA GPU is visible and TRITON_INTERPRET is not set (Triton runs on a CUDA "
            "GPU, or on the CPU under TRITON_INTERPRET=1)"
        )
    return None


def summary() -> dict[str, Any]:
    """Everything above as a JSON-ready dict (``millkernels info --format json``)."""
    import platform

    import torch

    from millkernels import __version__

    return {
        "version": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": triton_version(),
        "triton_interpret": triton_interpret(),
        "native": asdict(native()),
        "gpus": [asdict(g) | {"arch": g.arch} for g in gpus()],
    }
