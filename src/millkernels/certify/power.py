"""Energy counters: RAPL on the host (``/sys/class/powercap``); NVML for GPUs is read through
:class:`millkernels.certify.preflight.NvmlLayer`.

RAPL is often not readable: VMs and containers rarely expose ``/sys/class/powercap``, and
since Linux 5.10 ``energy_uj`` is readable by root only (CVE-2020-8694). Then
:class:`RaplUnavailable` says why, and the ``cpu`` profile records the energy metrics as
skipped (not failed, not passed).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

POWERCAP = Path(os.environ.get("MILLKERNELS_POWERCAP_ROOT", "/sys/class/powercap"))


class RaplUnavailable(RuntimeError):
    """RAPL energy cannot be read here; the message says why."""


@dataclass(frozen=True)
class RaplDomain:
    name: str
    energy: Path
    max_range_uj: int


def rapl_domains(root: Path = POWERCAP) -> list[RaplDomain]:
    """The package-level RAPL domains (``intel-rapl:N`` named ``package-N``; AMD's too)."""
    if not root.is_dir():
        raise RaplUnavailable(f"{root} does not exist (RAPL not exposed: VM, container or non-x86)")
    out = []
    for d in sorted(root.glob("*rapl:*")):
        if d.name.count(":") != 1:  # sub-domains (core, uncore, dram) are inside packages
            continue
        energy = d / "energy_uj"
        if not energy.exists():
            continue
        try:
            name = (d / "name").read_text().strip()
        except OSError:
            name = d.name
        try:
            rng = int((d / "max_energy_range_uj").read_text())
        except (OSError, ValueError):
            rng = 2**32
        out.append(RaplDomain(name, energy, rng))
    if not out:
        raise RaplUnavailable(f"no RAPL package domains under {root}")
    return out


def read_uj(domains: list[RaplDomain]) -> list[int]:
    """Each domain's energy counter (microjoules)."""
    vals = []
    for d in domains:
        try:
            vals.append(int(d.energy.read_text()))
        except PermissionError as exc:
            raise RaplUnavailable(
                f"{d.energy} is not readable by this user (root only since Linux 5.10, "
                "CVE-2020-8694)"
            ) from exc
        except (OSError, ValueError) as exc:
            raise RaplUnavailable(f"cannot read {d.energy}: {exc}") from exc
    return vals


def delta_joules(domains: list[RaplDomain], before: list[int], after: list[int]) -> float:
    """Energy between two readings, summed over domains, with counter wrap-around."""
    total = 0
    for d, a, b in zip(domains, before, after, strict=True):
        total += b - a if b >= a else b + d.max_range_uj - a
    return total / 1e6
