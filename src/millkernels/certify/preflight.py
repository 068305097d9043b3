"""Preflight: GPU inventory and health through NVML (``pynvml`` from nvidia-ml-py).

Everything goes through a small :class:`DeviceLayer` protocol. :class:`NvmlLayer` reads the real
devices (``pynvml`` imported on first use, never at import time); ``certify.sim.SimLayer`` serves
injected readings to the same code in tests.

A snapshot is a plain dict per GPU (any value NVML cannot give is None):

- identity: ``index, name, uuid, serial, pci_bus_id, pci_device_id`` (hex string of NVML's
  32-bit id), ``vbios, inforom, board_part_number, memory_bytes``
- ECC and memory health: ``ecc_enabled, ecc_volatile_uncorrected, ecc_aggregate_uncorrected,
  ecc_volatile_corrected, retired_pages_pending, retired_pages_dbe, retired_pages_sbe,
  remap_corrected, remap_uncorrected, remap_pending, remap_failure``
- power and clocks: ``power_limit_w, power_limit_default_w, persistence_mode, temperature_c,
  sm_clock_mhz, sm_clock_max_mhz, mem_clock_mhz, clock_event_reasons``
- links: ``pcie_gen_current, pcie_gen_max, pcie_width_current, pcie_width_max, pcie_replay,
  nvlink_active, nvlink_total``

A sample (:meth:`DeviceLayer.sample`, for the sustained load) holds ``t, energy_mj, power_w,
sm_clock_mhz, temperature_c, clock_event_reasons, thermal_ns`` (accumulated thermal violation
time) ``, pcie_gen_current, pcie_width_current``.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

# nvmlClocksEventReasons bits (REFERENCES.md): which count as thermal / as a power problem.
REASON_SW_POWER_CAP = 0x4
REASON_HW_SLOWDOWN = 0x8
REASON_SW_THERMAL = 0x20
REASON_HW_THERMAL = 0x40
REASON_POWER_BRAKE = 0x80
THERMAL_BITS = REASON_SW_THERMAL | REASON_HW_THERMAL
POWER_PROBLEM_BITS = REASON_HW_SLOWDOWN | REASON_POWER_BRAKE  # the SW power cap is normal

# Accumulated throttle time: nvmlDeviceGetViolationStatus(NVML_PERF_POLICY_THERMAL) (ns, since
# Kepler). The newer clocks-event field values (NVML_FI_DEV_CLOCKS_EVENT_REASON_*) are NOT used:
# their ids differ between NVML headers (251-253 in one release, 269-271 in nvidia-ml-py 13.615,
# where 256-273 are power-smoothing fields in the other), so a mismatched pynvml/driver pair
# would read unrelated values as throttle time. Power brake / HW slowdown time comes from the
# reason bits sampled during the load instead.


@runtime_checkable
class DeviceLayer(Protocol):
    """What certification needs from the GPUs' management library."""

    def open(self) -> str | None:
        """Initialise; None when ready, else why the library cannot be used."""

    def driver(self) -> dict[str, Any]:
        """``driver_version``, ``cuda_driver_version``, ``nvml_version``."""

    def count(self) -> int:
        """How many GPUs the library sees."""

    def snapshot(self, index: int) -> dict[str, Any]:
        """Identity and health of GPU ``index`` (keys in the module docstring)."""

    def sample(self, index: int) -> dict[str, Any]:
        """Counters of GPU ``index`` now (energy, power, clocks, throttle times, link)."""

    def xid_watch_start(self) -> str | None:
        """Start collecting XID events; None when watching, else why not."""

    def xid_watch_stop(self) -> list[dict[str, Any]] | None:
        """Stop; the events seen (``gpu``, ``xid``, ``t``), or None when not readable."""


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class NvmlLayer:
    """The real devices, through ``pynvml``. Every query that fails gives None."""

    def __init__(self) -> None:
        self._nv: Any = None
        self._handles: dict[int, Any] = {}
        self._xid_thread: threading.Thread | None = None
        self._xid_stop = threading.Event()
        self._xids: list[dict[str, Any]] = []

    # -- setup ---------------------------------------------------------------------------------
    def open(self) -> str | None:
        if self._nv is not None:
            return None
        try:
            import pynvml
        except ImportError as exc:
            return f"pynvml (nvidia-ml-py) is not installed: {exc}"
        try:
            pynvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            return f"NVML could not be initialised: {exc}"
        self._nv = pynvml
        return None

    def _h(self, index: int) -> Any:
        if index not in self._handles:
            self._handles[index] = self._nv.nvmlDeviceGetHandleByIndex(index)
        return self._handles[index]

    def _q(self, fn: Callable[[Any], Any]) -> Any:
        try:
            return fn(self._nv)
        except Exception:
            return None

    def driver(self) -> dict[str, Any]:
        nv = self._nv
        cuda = self._q(lambda n: n.nvmlSystemGetCudaDriverVersion_v2())
        return {
            "driver_version": self._q(lambda n: _text(n.nvmlSystemGetDriverVersion())),
            "cuda_driver_version": f"{cuda // 1000}.{cuda % 1000 // 10}" if cuda else None,
            "nvml_version": self._q(lambda n: _text(n.nvmlSystemGetNVMLVersion())) if nv else None,
        }

    def count(self) -> int:
        return int(self._q(lambda n: n.nvmlDeviceGetCount()) or 0)

    def index_of_uuid(self, uuid: str) -> int | None:
        """NVML's index of the GPU with ``uuid``."""
        h = self._q(lambda n: n.nvmlDeviceGetHandleByUUID(uuid))
        return None if h is None else self._q(lambda n: n.nvmlDeviceGetIndex(h))

    # -- snapshot ------------------------------------------------------------------------------
    def snapshot(self, index: int) -> dict[str, Any]:
        h = self._h(index)
        q = self._q
        pci = q(lambda n: n.nvmlDeviceGetPciInfo(h))
        mem = q(lambda n: n.nvmlDeviceGetMemoryInfo(h))
        ecc = q(lambda n: n.nvmlDeviceGetEccMode(h))  # [current, pending]
        remap = q(lambda n: n.nvmlDeviceGetRemappedRows(h))  # (cor, unc, pending, failure)

        def ecc_count(kind: str, counter: str) -> int | None:
            def f(n: Any) -> int:
                et = getattr(n, f"NVML_MEMORY_ERROR_TYPE_{kind}")
                ct = getattr(n, f"NVML_{counter}_ECC")
                return int(n.nvmlDeviceGetTotalEccErrors(h, et, ct))

            return q(f)

        def retired(cause: str) -> int | None:
            def f(n: Any) -> int:
                return len(n.nvmlDeviceGetRetiredPages(h, getattr(n, cause)))

            return q(f)

        nvl_total = nvl_active = None
        states = []
        for link in range(18 * 2):  # NVML_NVLINK_MAX_LINKS is 18 (Hopper) / more on Blackwell
            s = q(lambda n, link=link: n.nvmlDeviceGetNvLinkState(h, link))
            if s is None:
                break
            states.append(int(s))
        if states:
            nvl_total, nvl_active = len(states), sum(1 for s in states if s)
        mw = lambda v: None if v is None else v / 1000.0
        return {
            "index": index,
            "name": q(lambda n: _text(n.nvmlDeviceGetName(h))),
            "uuid": q(lambda n: _text(n.nvmlDeviceGetUUID(h))),
            "serial": q(lambda n: _text(n.nvmlDeviceGetSerial(h))),
            "pci_bus_id": _text(pci.busId) if pci is not None else None,
            "pci_device_id": f"0x{pci.pciDeviceId:08x}" if pci is not None else None,
            "vbios": q(lambda n: _text(n.nvmlDeviceGetVbiosVersion(h))),
            "inforom": q(lambda n: _text(n.nvmlDeviceGetInforomImageVersion(h))),
            "board_part_number": q(lambda n: _text(n.nvmlDeviceGetBoardPartNumber(h))),
            "memory_bytes": int(mem.total) if mem is not None else None,
            "ecc_enabled": bool(ecc[0]) if ecc is not None else None,
            "ecc_volatile_uncorrected": ecc_count("UNCORRECTED", "VOLATILE"),
            "ecc_aggregate_uncorrected": ecc_count("UNCORRECTED", "AGGREGATE"),
            "ecc_volatile_corrected": ecc_count("CORRECTED", "VOLATILE"),
            "retired_pages_pending": _bool(
                q(lambda n: n.nvmlDeviceGetRetiredPagesPendingStatus(h))
            ),
            "retired_pages_dbe": retired("NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR"),
            "retired_pages_sbe": retired(
                "NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS"
            ),
            "remap_corrected": int(remap[0]) if remap is not None else None,
            "remap_uncorrected": int(remap[1]) if remap is not None else None,
            "remap_pending": bool(remap[2]) if remap is not None else None,
            "remap_failure": bool(remap[3]) if remap is not None else None,
            "power_limit_w": mw(q(lambda n: n.nvmlDeviceGetEnforcedPowerLimit(h))),
            "power_limit_default_w": mw(q(lambda n: n.nvmlDeviceGetPowerManagementDefaultLimit(h))),
            "persistence_mode": _bool(q(lambda n: n.nvmlDeviceGetPersistenceMode(h))),
            "temperature_c": q(lambda n: n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU)),
            "sm_clock_mhz": q(lambda n: n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM)),
            "sm_clock_max_mhz": q(lambda n: n.nvmlDeviceGetMaxClockInfo(h, n.NVML_CLOCK_SM)),
            "mem_clock_mhz": q(lambda n: n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_MEM)),
            "clock_event_reasons": self._reasons(h),
            "pcie_gen_current": q(lambda n: n.nvmlDeviceGetCurrPcieLinkGeneration(h)),
            "pcie_gen_max": q(lambda n: n.nvmlDeviceGetMaxPcieLinkGeneration(h)),
            "pcie_width_current": q(lambda n: n.nvmlDeviceGetCurrPcieLinkWidth(h)),
            "pcie_width_max": q(lambda n: n.nvmlDeviceGetMaxPcieLinkWidth(h)),
            "pcie_replay": q(lambda n: n.nvmlDeviceGetPcieReplayCounter(h)),
            "nvlink_active": nvl_active,
            "nvlink_total": nvl_total,
        }

    def _reasons(self, h: Any) -> int | None:
        def f(n: Any) -> int:
            fn = getattr(n, "nvmlDeviceGetCurrentClocksEventReasons", None)
            fn = fn or n.nvmlDeviceGetCurrentClocksThrottleReasons
            return int(fn(h))

        return self._q(f)

    # -- sampling ------------------------------------------------------------------------------
    def sample(self, index: int) -> dict[str, Any]:
        h = self._h(index)
        q = self._q
        vt = q(lambda n: n.nvmlDeviceGetViolationStatus(h, n.NVML_PERF_POLICY_THERMAL))
        thermal = int(vt.violationTime) if vt is not None else None
        power = q(lambda n: n.nvmlDeviceGetPowerUsage(h))
        return {
            "t": time.monotonic(),
            "energy_mj": q(lambda n: int(n.nvmlDeviceGetTotalEnergyConsumption(h))),
            "power_w": power / 1000.0 if power is not None else None,
            "sm_clock_mhz": q(lambda n: n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM)),
            "temperature_c": q(lambda n: n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU)),
            "clock_event_reasons": self._reasons(h),
            "thermal_ns": thermal,
            "pcie_gen_current": q(lambda n: n.nvmlDeviceGetCurrPcieLinkGeneration(h)),
            "pcie_width_current": q(lambda n: n.nvmlDeviceGetCurrPcieLinkWidth(h)),
        }

    # -- XID events ----------------------------------------------------------------------------
    def xid_watch_start(self) -> str | None:
        nv = self._nv
        try:
            es = nv.nvmlEventSetCreate()
            for i in range(self.count()):
                nv.nvmlDeviceRegisterEvents(self._h(i), nv.nvmlEventTypeXidCriticalError, es)
        except Exception as exc:
            return f"XID events are not readable: {exc}"
        index_of = {}
        for i in range(self.count()):
            uuid = self._q(lambda n, i=i: _text(n.nvmlDeviceGetUUID(self._h(i))))
            index_of[uuid] = i

        def loop() -> None:
            while not self._xid_stop.is_set():
                try:
                    data = nv.nvmlEventSetWait(es, 500)
                except Exception:
                    continue  # timeout
                uuid = self._q(lambda n, d=data: _text(n.nvmlDeviceGetUUID(d.device)))
                self._xids.append(
                    {"gpu": index_of.get(uuid), "xid": int(data.eventData), "t": time.time()}
                )
            with contextlib.suppress(Exception):
                nv.nvmlEventSetFree(es)

        self._xid_thread = threading.Thread(target=loop, name="xid-watch", daemon=True)
        self._xid_thread.start()
        return None

    def xid_watch_stop(self) -> list[dict[str, Any]] | None:
        if self._xid_thread is None:
            return None
        self._xid_stop.set()
        self._xid_thread.join(timeout=2)
        return list(self._xids)


def pci_gpu_count(root: Path = Path("/sys/bus/pci/devices")) -> tuple[int | None, str]:
    """NVIDIA display/3D controllers on the PCI bus (sysfs), to catch a GPU that fell off NVML's
    view: (count, how). None when the count cannot be compared: no sysfs, or the container sees
    only some GPUs (``NVIDIA_VISIBLE_DEVICES`` / ``CUDA_VISIBLE_DEVICES`` set to a subset)."""
    for var in ("NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"):
        v = os.environ.get(var)
        if v is not None and v.strip().lower() not in ("", "all"):
            return None, f"{var} selects a subset of the GPUs"
    if not root.is_dir():
        return None, f"{root} is not readable"
    n = 0
    for d in root.iterdir():
        try:
            vendor = (d / "vendor").read_text().strip()
            cls = (d / "class").read_text().strip()
        except OSError:
            continue
        if vendor == "0x10de" and cls[:6] in ("0x0300", "0x0302"):
            n += 1
    return n, f"NVIDIA display/3D controllers under {root}"


def _bool(v: Any) -> bool | None:
    return None if v is None else bool(v)


def inventory(layer: DeviceLayer) -> dict[str, Any]:
    """``{"available": bool, "error": str|None, "driver": {...}, "gpus": [snapshot, ...],
    "pci_gpus": int|None, "pci_gpus_how": str}``."""
    why = layer.open()
    counter = getattr(layer, "pci_gpu_count", pci_gpu_count)
    pci, pci_how = counter()
    if why is not None:
        return {
            "available": False,
            "error": why,
            "driver": {},
            "gpus": [],
            "pci_gpus": pci,
            "pci_gpus_how": pci_how,
        }
    return {
        "available": True,
        "error": None,
        "driver": layer.driver(),
        "gpus": [layer.snapshot(i) for i in range(layer.count())],
        "pci_gpus": pci,
        "pci_gpus_how": pci_how,
    }
