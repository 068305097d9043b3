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
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

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


def _validate(data: dict[str, Any], where: str) -> None:
    if data.get("format") != FORMAT:
        raise ValueError(
            f"targets: {where}: 'format' must be {FORMAT!r}, got {data.get('format')!r}"
        )
    if not isinstance(data.get("profile"), str):
        raise ValueError(f"targets: {where}: 'profile' (a name) is required")
    for metric, lim in data.get("floors", {}).items():
        if not isinstance(lim, dict) or not ({"min", "max"} & set(lim)):
            raise ValueError(f"targets: {where}: floor {metric!r} needs 'min' or 'max'")
        for key in ("min", "max"):
            if key in lim and not isinstance(lim[key], (int, float)):
                raise ValueError(f"targets: {where}: floor {metric!r}.{key} must be a number")
    lim = data.get("spread", {}).get("limit")
    if lim is not None and not (0 < lim < 1):
        raise ValueError(f"targets: {where}: spread.limit must be a fraction in (0, 1)")


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
    base = data.pop("extends", None)
    if base:
        merged = _merge(_read_builtin(base), data)
        merged.setdefault("format", FORMAT)
        data = merged
    _validate(data, str(path))
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
