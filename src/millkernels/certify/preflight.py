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

  ``lost`` (None, or why NVML can no longer reach the GPU: it fell off the bus)

A sample (:meth:`DeviceLayer.sample`, for the sustained load) holds ``t, energy_mj, power_w,
sm_clock_mhz, temperature_c, clock_event_reasons, thermal_ns`` (accumulated thermal violation
time) ``, pcie_gen_current, pcie_width_current``.

Three views of the GPUs are compared, because a GPU that one of them cannot reach must never
turn into a smaller (or a CPU) certificate: the PCI bus (:func:`scan_pci`: what is plugged in,
whatever the driver's state), NVML (what the driver manages) and CUDA (:func:`cuda_census`:
what a program can use).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from millkernels.certify import verdict as V

T = TypeVar("T")

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

    def pci_scan(self) -> dict[str, Any]:
        """The NVIDIA GPUs on the PCI bus (:func:`scan_pci`'s answer)."""

    def cuda_devices(self) -> dict[str, Any]:
        """The GPUs CUDA can open (:func:`cuda_census`'s answer)."""


class CouldNotRun(RuntimeError):
    """The run could not start or finish its preflight (exit code 3). ``reason`` is the reason
    code (``DCGM_FR_*`` or ``MK_*``), also shown in the message."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(f"{message} [{reason}]")
        self.reason = reason


def guarded(fn: Callable[[], T], timeout: float, what: str) -> T:
    """``fn()`` with a deadline, for calls into NVML or the driver from this process.

    It runs in a daemon thread: a call stuck inside a C library cannot be interrupted, so on
    timeout the thread is abandoned (a daemon thread does not keep the process alive) and
    :class:`CouldNotRun` is raised (``MK_PREFLIGHT_TIMEOUT``). A call that raises ends the same
    way with ``DCGM_FR_API_FAIL`` and the exception's text.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # raised again below as CouldNotRun, in the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=target, name=f"guarded: {what}", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise CouldNotRun(
            f"{what} did not answer within {timeout:g} s (a hung NVML or driver call)",
            V.MK_PREFLIGHT_TIMEOUT,
        )
    if "error" in box:
        exc = box["error"]
        raise CouldNotRun(f"{what} raised {type(exc).__name__}: {exc}", V.FR_API_FAIL) from exc
    return box["value"]


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
        try:  # a GPU that fell off the bus fails here (NVML_ERROR_GPU_IS_LOST)
            h = self._h(index)
            self._nv.nvmlDeviceGetUUID(h)
        except Exception as exc:
            return {"index": index, "lost": f"NVML cannot reach GPU {index}: {exc}"}
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
            # mypy cannot type a lambda with a default argument (python/mypy#15459)
            s = q(lambda n, link=link: n.nvmlDeviceGetNvLinkState(h, link))  # type: ignore[misc]
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
            "lost": None,
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

    # -- the other views -----------------------------------------------------------------------
    def pci_scan(self) -> dict[str, Any]:
        return scan_pci()

    def cuda_devices(self) -> dict[str, Any]:
        return cuda_census()

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
            # mypy cannot type a lambda with a default argument (python/mypy#15459)
            uuid = self._q(lambda n, i=i: _text(n.nvmlDeviceGetUUID(self._h(i))))  # type: ignore[misc]
            index_of[uuid] = i

        def loop() -> None:
            while not self._xid_stop.is_set():
                try:
                    data = nv.nvmlEventSetWait(es, 500)
                except Exception:
                    continue  # timeout
                # mypy cannot type a lambda with a default argument (python/mypy#15459)
                uuid = self._q(lambda n, d=data: _text(n.nvmlDeviceGetUUID(d.device)))  # type: ignore[misc]
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


# ------------------------------------------------------------------------------ the PCI bus

SYSFS_PCI = Path("/sys/bus/pci/devices")
NVIDIA_VENDOR = 0x10DE
# PCI base class 0x03 (display controller: 0x0300 VGA, 0x0302 3D, 0x0380 other). Not GPUs:
# NVSwitches (0x0680) and the audio function of a GPU board (0x0403).
DISPLAY_CLASS = 0x03
_LSPCI_LINE = re.compile(
    r"^(?P<bus>[0-9a-fA-F:.]+)\s+(?P<cls>[0-9a-fA-F]{4}):\s+(?P<ven>[0-9a-fA-F]{4}):"
    r"(?P<dev>[0-9a-fA-F]{4})"
)


def norm_bus_id(bus: Any) -> str | None:
    """A PCI address in sysfs form, ``0000:18:00.0`` (4-digit domain, lower case). NVML writes
    an 8-digit domain (``00000000:18:00.0``); ``lspci`` without ``-D`` none. None for no id."""
    if not isinstance(bus, str) or not bus.strip():
        return None
    parts = bus.strip().lower().split(":")
    if len(parts) == 2:
        parts = ["0", *parts]
    try:
        return f"{int(parts[0], 16):04x}:{parts[1]}:{parts[2]}" if len(parts) == 3 else None
    except ValueError:
        return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _sysfs_gpus(root: Path) -> list[dict[str, Any]]:
    out = []
    for d in sorted(root.iterdir()):
        vendor, cls = _read(d / "vendor"), _read(d / "class")
        try:
            if int(vendor or "", 16) != NVIDIA_VENDOR or int(cls or "", 16) >> 16 != DISPLAY_CLASS:
                continue
        except ValueError:
            continue
        drv = d / "driver"
        out.append(
            {
                "bus_id": norm_bus_id(d.name),
                "device_id": _read(d / "device"),
                "driver": os.path.basename(os.readlink(drv)) if drv.is_symlink() else "",
            }
        )
    return out


def _lspci_gpus(text: str) -> list[dict[str, Any]]:
    """Parse ``lspci -Dnk``: a device line, then indented lines (``Kernel driver in use: x``)."""
    out: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for line in text.splitlines():
        m = _LSPCI_LINE.match(line)
        if m:
            current = None
            if int(m["ven"], 16) == NVIDIA_VENDOR and int(m["cls"], 16) >> 8 == DISPLAY_CLASS:
                current = {"bus_id": norm_bus_id(m["bus"]), "device_id": f"0x{m['dev']}"}
                current["driver"] = ""
                out.append(current)
        elif current is not None and "Kernel driver in use:" in line:
            current["driver"] = line.split(":", 1)[1].strip()
    return out


def scan_pci(root: Path = SYSFS_PCI, lspci: str = "lspci") -> dict[str, Any]:
    """The NVIDIA GPUs plugged into this machine, whatever the state of their driver.

    ``{"gpus": [{"bus_id", "device_id", "driver"}] | None, "how": str}``: read from sysfs
    (``vendor`` 0x10de, ``class`` 0x03xxxx), else from ``lspci -Dnk``; ``gpus`` is None when
    neither can be read. ``driver`` is the bound kernel driver ("" for none).
    """
    if root.is_dir():
        try:
            return {"gpus": _sysfs_gpus(root), "how": f"sysfs {root}"}
        except OSError as exc:
            why = f"{root} is not readable: {exc}"
    else:
        why = f"{root} does not exist"
    try:
        run = subprocess.run([lspci, "-Dnk"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return {"gpus": None, "how": f"{why}; lspci failed: {exc}"}
    if run.returncode != 0:
        return {"gpus": None, "how": f"{why}; lspci exited {run.returncode}"}
    return {"gpus": _lspci_gpus(run.stdout), "how": f"{why}; lspci -Dnk"}


def visible_subset(environ: dict[str, str] | None = None) -> list[str] | None:
    """The GPUs a container runtime gave this container (``NVIDIA_VISIBLE_DEVICES`` as a list;
    ``[]`` for ``none``/``void``), or None when it exposes all of them or is not set. The PCI
    bus in sysfs still lists every GPU of the host, so only this many are expected in NVML."""
    v = (os.environ if environ is None else environ).get("NVIDIA_VISIBLE_DEVICES")
    if v is None or v.strip().lower() in ("", "all"):
        return None
    if v.strip().lower() in ("none", "void"):
        return []
    return [e.strip() for e in v.split(",") if e.strip()]


# ------------------------------------------------------------------------------ CUDA

CUDA_CENSUS_TIMEOUT_S = 120.0
_CENSUS = """
import json
out = {"devices": [], "error": None}
try:
    import torch
    torch.cuda.init()
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        bus = None
        if hasattr(p, "pci_bus_id"):
            bus = f"{p.pci_domain_id:04x}:{p.pci_bus_id:02x}:{p.pci_device_id:02x}.0"
        out["devices"].append({"bus_id": bus, "name": p.name})
except Exception as exc:
    out["error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""


def cuda_census(timeout: float = CUDA_CENSUS_TIMEOUT_S) -> dict[str, Any]:
    """The GPUs CUDA can open, asked in a child process (a driver that hangs or crashes on
    ``cuInit`` takes the child with it, not this process):
    ``{"devices": [{"bus_id", "name"}], "error": str | None}``; ``bus_id`` is None with a torch
    that does not report PCI addresses. The child sees this process's ``CUDA_VISIBLE_DEVICES``."""
    env = {**os.environ, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    try:
        run = subprocess.run(
            [sys.executable, "-c", _CENSUS],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return {"devices": [], "error": f"CUDA did not initialise within {timeout:g} s"}
    except OSError as exc:
        return {"devices": [], "error": f"cannot start the CUDA check: {exc}"}
    try:
        out = json.loads(run.stdout.strip().splitlines()[-1])
        if isinstance(out, dict) and isinstance(out.get("devices"), list):
            return out
    except (IndexError, json.JSONDecodeError):
        pass
    tail = run.stderr.strip().splitlines()[-1:] or [""]
    return {"devices": [], "error": f"the CUDA check exited {run.returncode}: {tail[0][:300]}"}


# ------------------------------------------------------------------------------ inventory


def _bool(v: Any) -> bool | None:
    return None if v is None else bool(v)


def inventory(layer: DeviceLayer) -> dict[str, Any]:
    """``{"available": bool, "error": str|None, "driver": {...}, "gpus": [snapshot, ...],
    "pci": {"gpus": [...] | None, "how": str, "subset": [...] | None}}``. ``pci.subset``: the
    container's ``NVIDIA_VISIBLE_DEVICES`` entries (:func:`visible_subset`). The CUDA view
    (``"cuda"``) is added by the caller when the profile needs GPUs."""
    why = layer.open()
    pci = {**layer.pci_scan(), "subset": visible_subset()}
    inv: dict[str, Any] = {"available": why is None, "error": why, "driver": {}, "gpus": []}
    if why is None:
        inv["driver"] = layer.driver()
        inv["gpus"] = [layer.snapshot(i) for i in range(layer.count())]
    inv["pci"] = pci
    return inv


def pci_bus_ids(inv: dict[str, Any]) -> list[str] | None:
    """Bus ids of the NVIDIA GPUs on the PCI bus (None: the bus could not be read)."""
    gpus = (inv.get("pci") or {}).get("gpus")
    return None if gpus is None else [g["bus_id"] for g in gpus if g.get("bus_id")]


def cuda_reachable(inv: dict[str, Any], snapshots: list[dict[str, Any]]) -> set[int]:
    """NVML indices of ``snapshots`` that CUDA can open (all of them when CUDA was not asked).
    Without PCI addresses from CUDA, all of them as soon as CUDA sees any GPU: the count check
    judges a shortfall, and a probe pinned to a GPU that CUDA lacks errors on its own."""
    cuda = inv.get("cuda")
    every = {s["index"] for s in snapshots}
    if cuda is None:
        return every
    buses = [norm_bus_id(d.get("bus_id")) for d in cuda.get("devices", [])]
    if cuda.get("error") or not buses:
        return set()
    if all(buses):
        return {s["index"] for s in snapshots if norm_bus_id(s.get("pci_bus_id")) in buses}
    return every
