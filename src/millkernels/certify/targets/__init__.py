"""Target profiles: per-SKU floors, spread limits, perf-per-watt floors and preflight rules.

Profiles are JSON data files beside this module (``<name>.json``, format
``millkernels-targets/1``); every floor carries ``source``, ``date`` and ``basis`` (how the
margin below the public measurement was chosen). Operators pass their own file with
``--targets FILE`` (same format; it may name a built-in ``"extends"`` profile and override
only some keys).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TypeGuard

from millkernels.certify.probes.registry import probes_for

FORMAT = "millkernels-targets/1"
DEFAULT_VALIDITY_DAYS = 30
DEFAULT_QUICK_VALIDITY_DAYS = 7
MAX_VALIDITY_DAYS = 365


def validity_days(data: dict[str, Any], mode: str) -> int:
    """How many days a certificate of profile ``data`` run in ``mode`` stays valid.

    A standard run gets ``validity_days`` (default 30). A ``quick`` run measures less, so it
    gets ``quick_validity_days`` (default 7), never more than the standard validity. Both are
    capped at ``MAX_VALIDITY_DAYS``; ``verify`` applies the same rule to what it reads.
    """
    standard = int(data.get("validity_days", DEFAULT_VALIDITY_DAYS))
    if mode == "quick":
        days = min(int(data.get("quick_validity_days", DEFAULT_QUICK_VALIDITY_DAYS)), standard)
    else:
        days = standard
    return max(1, min(days, MAX_VALIDITY_DAYS))


@dataclass(frozen=True)
class Profile:
    """A loaded targets profile: its data, where it came from, and the data's sha256."""

    name: str
    data: dict[str, Any]
    source: str  # "builtin" or the file path
    sha256: str

    @property
    def device_class(self) -> str:
        return self.data.get("device_class", "gpu")

    @property
    def floors(self) -> dict[str, Any]:
        return self.data.get("floors", {})

    @property
    def optional(self) -> set[str]:
        return set(self.data.get("optional", []))

    @property
    def preflight(self) -> dict[str, Any]:
        return self.data.get("preflight", {})

    @property
    def spread(self) -> dict[str, Any]:
        return self.data.get("spread", {})

    def summary(self) -> dict[str, Any]:
        """What a certificate records: name, source, sha256 and the full data."""
        return {
            "name": self.name,
            "source": self.source,
            "sha256": self.sha256,
            "targets": self.data,
        }


def builtin_names() -> list[str]:
    """Names of the profiles shipped in the package."""
    pkg = resources.files(__name__)
    return sorted(p.name[:-5] for p in pkg.iterdir() if p.name.endswith(".json"))


def _read_builtin(name: str) -> dict[str, Any]:
    if name not in builtin_names():
        raise ValueError(
            f"profile: unknown profile {name!r}; built-in: {', '.join(builtin_names())}"
        )
    return json.loads(resources.files(__name__).joinpath(f"{name}.json").read_text())


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


# What a targets file may hold. Keys ending in "_note" (and "comment") are free text.
_TOP_KEYS = {
    "format": str,
    "profile": str,
    "description": str,
    "status": str,
    "device_class": str,
    "match": dict,
    "validity_days": int,
    "quick_validity_days": int,
    "gpus_expected": int,
    "floors": dict,
    "optional": list,
    "expect": list,
    "skip_probes": list,
    "spread": dict,
    "preflight": dict,
}
_FLOOR_TEXT = ("unit", "source", "date", "basis", "reason", "note")
_PREFLIGHT_BOOLS = ("ecc_required", "persistence_mode_required", "xid_allowed")
_PREFLIGHT_COUNTS = (
    "pcie_gen_min",
    "pcie_width_min",
    "nvlinks_min",
    "max_pending_row_remaps",
    "max_row_remap_failures",
    "max_volatile_dbe",
    "max_aggregate_dbe",
    "max_pending_retired_pages",
    "max_pcie_replays",
    "temperature_max_c",
)
# NVML telemetry of the GPU sustained load: read on every supported GPU, so on a GPU profile
# it is always expected and never optional (a missing value means broken telemetry).
GPU_TELEMETRY = (
    "sustained_energy_j",
    "sustained_power_w",
    "sustained_tflops_per_w",
    "throttle_thermal_frac",
    "throttle_power_frac",
    "sm_clock_cv",
)


def _free_text(key: str) -> bool:
    return key.endswith("_note") or key == "comment"


def _is_number(v: Any) -> TypeGuard[float]:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _strings(v: Any) -> TypeGuard[list[str]]:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


class _Errors(list):
    """Problems found in one targets document, raised together as one ValueError."""

    def __init__(self, where: str) -> None:
        super().__init__()
        self.where = where

    def add(self, key: str, problem: str) -> None:
        self.append(f"{key}: {problem}")

    def raise_any(self) -> None:
        if self:
            raise ValueError(f"targets: {self.where}: " + "; ".join(self))


def _check_floors(data: dict[str, Any], known: set[str], err: _Errors) -> None:
    floors = data.get("floors")
    if not isinstance(floors, dict) or not floors:
        err.add("floors", "a non-empty mapping of metric -> {min|max, unit, source, ...}")
        return
    for metric, lim in floors.items():
        key = f"floors.{metric}"
        if metric not in known:
            err.add(key, f"no {data.get('device_class', 'gpu')} probe measures this metric")
        if not isinstance(lim, dict) or not ({"min", "max"} & set(lim)):
            err.add(key, "needs 'min' or 'max'")
            continue
        for k, v in lim.items():
            if k in ("min", "max"):
                if not _is_number(v):
                    err.add(f"{key}.{k}", f"must be a number, got {v!r}")
            elif k == "gpus":
                if not _is_int(v) or v < 1:
                    err.add(f"{key}.gpus", f"must be a GPU count (1 or more), got {v!r}")
            elif k in _FLOOR_TEXT or _free_text(k):
                if not isinstance(v, str):
                    err.add(f"{key}.{k}", f"must be text, got {v!r}")
            else:
                err.add(f"{key}.{k}", "unknown key (min, max, unit, source, date, basis, ...)")
        lo, hi = lim.get("min"), lim.get("max")
        if _is_number(lo) and _is_number(hi) and lo > hi:
            err.add(key, f"min {lo} is above max {hi}")


def _check_lists(data: dict[str, Any], known: set[str], probes: set[str], err: _Errors) -> None:
    for key in ("optional", "expect", "skip_probes"):
        v = data.get(key, [])
        if not _strings(v):
            err.add(key, f"must be a list of names, got {v!r}")
            continue
        names = probes if key == "skip_probes" else known
        for name in sorted(set(v) - names):
            what = "probe" if key == "skip_probes" else "metric"
            err.add(key, f"unknown {what} {name!r} for device class {data.get('device_class')}")
    if data.get("device_class") == "gpu" and _strings(data.get("optional", [])):
        for m in sorted(set(data.get("optional", [])) & set(GPU_TELEMETRY)):
            err.add("optional", f"{m} cannot be optional on a GPU profile (NVML telemetry)")


def _check_skips(data: dict[str, Any], err: _Errors) -> None:
    """No floor or expected metric may lose the only probes that measure it."""
    skip = set(data.get("skip_probes", [])) if _strings(data.get("skip_probes", [])) else set()
    cls = data.get("device_class", "gpu")
    specs = probes_for(cls)
    kept = [s for s in specs if s.name not in skip]
    if specs and not kept:
        err.add("skip_probes", "removes every probe: nothing would be measured")
        return
    measured = {m for s in kept for m in s.metrics}
    wanted = set(data.get("floors") or {}) if isinstance(data.get("floors"), dict) else set()
    wanted |= set(data.get("expect", [])) if _strings(data.get("expect", [])) else set()
    if cls == "gpu":
        wanted |= set(GPU_TELEMETRY)
    everything = {m for s in specs for m in s.metrics}
    for m in sorted((wanted & everything) - measured):
        err.add("skip_probes", f"removes every probe that measures {m}")


def _check_spread(data: dict[str, Any], known: set[str], err: _Errors) -> None:
    sp = data.get("spread", {})
    if not isinstance(sp, dict):
        return
    lim = sp.get("limit")
    if lim is not None and not (_is_number(lim) and 0 < lim < 1):
        err.add("spread.limit", f"must be a fraction in (0, 1), got {lim!r}")
    metrics = sp.get("metrics", [])
    if not _strings(metrics):
        err.add("spread.metrics", f"must be a list of metric names, got {metrics!r}")
    else:
        for m in sorted(set(metrics) - known):
            err.add("spread.metrics", f"no probe measures {m!r}")
        if metrics and lim is None:
            err.add("spread", "'metrics' without a 'limit' judges nothing")
    for k, v in sp.items():
        if k in ("limit", "metrics"):
            continue
        if not ((k in _FLOOR_TEXT or _free_text(k)) and isinstance(v, str)):
            err.add(f"spread.{k}", "unknown key or not text (limit, metrics, source, *_note)")


def _check_preflight(data: dict[str, Any], err: _Errors) -> None:
    pf = data.get("preflight", {})
    if not isinstance(pf, dict):
        return
    for k, v in pf.items():
        key = f"preflight.{k}"
        if k in _PREFLIGHT_BOOLS:
            ok = isinstance(v, bool)
        elif k in _PREFLIGHT_COUNTS:
            ok = v is None or (_is_number(v) and v >= 0)
        elif k == "power_limit_min_fraction":
            ok = _is_number(v) and 0 < v <= 1
        elif k in ("source", "date") or _free_text(k):
            ok = isinstance(v, str)
        else:
            err.add(key, "unknown preflight rule")
            continue
        if not ok:
            err.add(key, f"invalid value {v!r}")


def _validate(data: dict[str, Any], where: str, base: dict[str, Any] | None = None) -> None:
    """Check a targets document before any probe runs; raise ValueError naming ``where`` and
    every bad key. ``base``: the built-in profile an operator's file extends."""
    err = _Errors(where)
    if data.get("format") != FORMAT:
        err.add("format", f"must be {FORMAT!r}, got {data.get('format')!r}")
    if not isinstance(data.get("profile"), str) or not data.get("profile"):
        err.add("profile", "a name is required")
    for k, v in data.items():
        want = _TOP_KEYS.get(k)
        if want is None and not _free_text(k):
            err.add(k, f"unknown key; known: {', '.join(sorted(_TOP_KEYS))}, *_note")
        elif want is int and not _is_int(v):
            err.add(k, f"must be an integer, got {v!r}")
        elif want is not None and want is not int and not isinstance(v, want):
            err.add(k, f"must be {want.__name__}, got {type(v).__name__}")
    for k in ("validity_days", "quick_validity_days"):
        v = data.get(k)
        if _is_int(v) and not 1 <= v <= MAX_VALIDITY_DAYS:
            err.add(k, f"must be 1..{MAX_VALIDITY_DAYS} days, got {v}")
    if _is_int(data.get("gpus_expected")) and data["gpus_expected"] < 1:
        err.add("gpus_expected", f"must be 1 or more, got {data['gpus_expected']}")
    cls = data.get("device_class", "gpu")
    if cls not in ("gpu", "cpu"):
        err.add("device_class", f"must be 'gpu' or 'cpu', got {cls!r}")
        err.raise_any()
    base_cls = base.get("device_class", "gpu") if base else None
    if base is not None and base_cls != cls:
        err.add("device_class", f"{cls!r} under {base.get('profile')!r}, a {base_cls} profile")
    gpu_names = {n for n in builtin_names() if n != "cpu"}
    if cls == "cpu" and isinstance(data.get("profile"), str) and data["profile"] in gpu_names:
        err.add("device_class", f"'cpu' under the GPU profile name {data['profile']!r}")
    specs = probes_for(cls)
    known = {m for sp in specs for m in sp.metrics}
    _check_floors(data, known, err)
    _check_lists(data, known, {sp.name for sp in specs}, err)
    _check_spread(data, known, err)
    _check_preflight(data, err)
    if not err:
        _check_skips(data, err)
    err.raise_any()


def _digest(data: dict[str, Any]) -> str:
    canon = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canon.encode()).hexdigest()


def load(name: str) -> Profile:
    """A built-in profile by name (``h100-sxm``, ``h200``, ..., ``cpu``)."""
    data = _read_builtin(name)
    _validate(data, name)
    return Profile(name, data, "builtin", _digest(data))


def load_file(path: str | Path) -> Profile:
    """An operator's targets file. ``"extends": NAME`` starts from a built-in profile."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"targets: cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"targets: {path}: expected a JSON object")
    name = data.pop("extends", None)
    base = None
    if name is not None:
        if not isinstance(name, str):
            raise ValueError(f"targets: {path}: extends: must be a built-in profile name")
        try:
            base = _read_builtin(name)
        except ValueError as exc:
            raise ValueError(f"targets: {path}: extends: {exc}") from None
        data = _merge(base, data)
        data.setdefault("format", FORMAT)
    _validate(data, str(path), base)
    return Profile(data["profile"], data, str(path), _digest(data))


def detect(name: str | None, pci_device_id: int | str | None) -> str | None:
    """The built-in profile for a GPU, by PCI device id first, then by NVML name; None if no
    profile matches.

    ``pci_device_id`` is NVML's 32-bit ``pciDeviceId`` (device << 16 | vendor 0x10de) or the
    16-bit device id, as an int or a hex string.
    """
    dev: int | None = None
    if isinstance(pci_device_id, str):
        pci_device_id = int(pci_device_id, 16)
    if isinstance(pci_device_id, int):
        dev = pci_device_id >> 16 if pci_device_id > 0xFFFF else pci_device_id
    lowered = (name or "").lower()
    by_name = None
    for prof in builtin_names():
        match = _read_builtin(prof).get("match", {})
        ids = {int(x, 16) for x in match.get("pci_device_ids", [])}
        if dev is not None and dev in ids:
            return prof
        if by_name is None and any(p in lowered for p in match.get("name_patterns", [])):
            by_name = prof
    return by_name
