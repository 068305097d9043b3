"""Where a benchmark ran: device name, clocks, power limit, driver, versions and git sha.

NVML (``pynvml`` from nvidia-ml-py) is optional: every query returns None when it is
missing or fails. Nothing here touches the GPU until a function is called.
"""

from __future__ import annotations

import functools
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GIT_SHA_ENV = "MILLKERNELS_GIT_SHA"


@dataclass(frozen=True)
class Environment:
    """Facts that hold for a whole run on one device."""

    device: str
    driver: str | None = None
    power_limit_w: float | None = None
    versions: dict[str, Any] = field(default_factory=dict)
    git_sha: str = "unknown"


@functools.cache
def environment(device: str) -> Environment:
    """The run's facts for ``device`` ("cpu" or "cuda"), gathered once."""
    if device == "cpu":
        return Environment("cpu", versions=versions(), git_sha=git_sha())
    import torch

    name = torch.cuda.get_device_name(torch.cuda.current_device())
    handle = _nvml_handle()
    limit = _nvml(lambda nv: nv.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0, handle)
    driver = _nvml(lambda nv: _text(nv.nvmlSystemGetDriverVersion()), handle)
    return Environment(name, driver, limit, versions(), git_sha())


def clocks(device: str) -> dict[str, Any] | None:
    """Current SM and memory clocks (MHz) and the clock-event reason bits, read now."""
    if device == "cpu":
        return None
    handle = _nvml_handle()
    if handle is None:
        return None

    def read(nv: Any) -> dict[str, Any]:
        out: dict[str, Any] = {
            "sm_mhz": nv.nvmlDeviceGetClockInfo(handle, nv.NVML_CLOCK_SM),
            "mem_mhz": nv.nvmlDeviceGetClockInfo(handle, nv.NVML_CLOCK_MEM),
            "sm_max_mhz": nv.nvmlDeviceGetMaxClockInfo(handle, nv.NVML_CLOCK_SM),
        }
        reasons = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
            nv, "nvmlDeviceGetCurrentClocksThrottleReasons", None
        )
        if reasons is not None:
            out["event_reasons"] = int(reasons(handle))
        return out

    return _nvml(read, handle)


def versions() -> dict[str, Any]:
    """Versions of the software that shapes the numbers."""
    import platform

    import torch

    from millkernels import __version__, runtime

    return {
        "millkernels": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": runtime.triton_version(),
        "cuda": torch.version.cuda,
        "native_cuda": runtime.native().cuda_version,
    }


@functools.cache
def git_sha() -> str:
    """The source's git commit: ``$MILLKERNELS_GIT_SHA``, else ``git rev-parse HEAD`` when this
    package is imported from a checkout (an editable install; ``-dirty`` if tracked files
    changed), else the commit recorded when the package was built (:func:`recorded_sha`: a
    wheel installed from a clone), else "unknown"."""
    forced = os.environ.get(GIT_SHA_ENV, "").strip()
    if forced:
        return forced
    pkg = Path(__file__).resolve().parent.parent
    return _checkout_sha(pkg) or recorded_sha() or "unknown"


def recorded_sha() -> str | None:
    """The commit the build recorded in ``millkernels/_build_info.py`` (CMakeLists.txt writes
    it from ``git rev-parse HEAD`` of the source tree), or None when there is none or the
    build did not know it."""
    try:
        from millkernels._build_info import GIT_SHA
    except ImportError:
        return None
    sha = str(GIT_SHA).strip()
    return sha if sha and sha != "unknown" else None


def _checkout_sha(pkg: Path) -> str | None:
    """HEAD of the git checkout whose ``src/millkernels`` is ``pkg`` (None otherwise)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(pkg), *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if not top or (Path(top).resolve() / "src" / "millkernels") != pkg:
        return None
    sha = git("rev-parse", "HEAD")
    if not sha:
        return None
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return f"{sha}-dirty" if dirty else sha


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@functools.cache
def _pynvml() -> Any:
    """The initialised ``pynvml`` module, or None."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return None
    return pynvml


def _nvml(query: Any, handle: Any) -> Any:
    """``query(pynvml)``, or None when NVML or the handle is missing or the query fails."""
    nv = _pynvml()
    if nv is None or handle is None:
        return None
    try:
        return query(nv)
    except Exception:
        return None


@functools.cache
def _nvml_handle() -> Any:
    """NVML's handle for torch's current CUDA device, matched by UUID, then PCI bus id."""
    nv = _pynvml()
    if nv is None:
        return None
    import torch

    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    uuid = str(getattr(props, "uuid", "") or "")
    for candidate in (uuid, f"GPU-{uuid}") if uuid else ():
        try:
            return nv.nvmlDeviceGetHandleByUUID(candidate)
        except Exception:
            pass
    bus = getattr(props, "pci_bus_id", None)
    if bus is not None:
        domain = getattr(props, "pci_domain_id", 0)
        dev = getattr(props, "pci_device_id", 0)
        try:
            return nv.nvmlDeviceGetHandleByPciBusId(f"{domain:08x}:{bus:02x}:{dev:02x}.0")
        except Exception:
            pass
    if not os.environ.get("CUDA_VISIBLE_DEVICES"):
        try:
            return nv.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        except Exception:
            pass
    return None
