"""From preflight readings and probe records to checks, against a target profile.

Rules (each documented where it is applied). Nothing that could not be measured passes: it is
an ``error``, or ``skipped`` only where the profile allows it and the reason is stated.

- Three views of the GPUs must agree (GPU profiles): the PCI bus, NVML and CUDA. NVML that
  cannot start, or no GPU reachable at all, is an error (could not run); a GPU on the bus that
  NVML or CUDA lacks while others answer is a failure naming its PCI bus id.
- NVML unavailable on a GPU profile: ``nvml`` errors (``DCGM_FR_CANNOT_OPEN_LIB``, or
  ``DCGM_FR_DENYLISTED_DRIVER`` with nouveau bound) and every NVML-derived check errors.
- Per-GPU health at rest: the table :data:`HEALTH_RULES` (ECC, row remapping, power limit,
  persistence, temperature, clock events, NVLink, PCIe replays, identity).
- A GPU NVML cannot reach (before the probes, or after them) fell off the bus: it fails with
  ``DCGM_FR_FALLEN_OFF_BUS``; so does XID 79 during the run.
- A planned probe with no record, or one that crashed, hung or raised: one ``probe.<name>``
  check in ``error`` with the runner's reason; none of its metrics are judged.
- A probe the run did not plan (``skip_probes``, a selected subset): ``skipped``, listed. A run
  with no probe at all errors: nothing was measured.
- Every reading goes through :mod:`~millkernels.certify.readings`: NaN, infinite, negative,
  non-numeric or out-of-range values are ``error`` (``MK_INVALID_READING``).
- A metric a probe declares but did not produce: ``error`` unless the probe said why; with a
  reason it is ``skipped`` when the profile marks it optional or does not expect it, else
  ``error``. NVML telemetry (energy, power, throttling) is always expected on a GPU profile.
- An energy counter that did not advance over the sustained load (0 J) cannot give energy,
  power or perf-per-watt: those are unavailable with ``DCGM_FR_POWER_UNREADABLE``.
- PCIe generation and width: the highest of the readings taken under load (pcie and sustained
  probes). Without one, the link at rest when it already meets the floor, else an error (idle
  links train down, so a low reading at rest proves nothing). Not judged (skipped) when no
  probe that loads the link was planned.
- Spread: each GPU against the node median of the spread metrics (two or more GPUs).
- SDC: the GEMM digests of all GPUs must agree; a GPU outside the majority fails; with no
  majority (e.g. two GPUs that differ) every GPU fails; an OK probe without a digest errors.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from millkernels.certify import verdict as V
from millkernels.certify.preflight import (
    THERMAL_BITS,
    cuda_reachable,
    norm_bus_id,
    pci_bus_ids,
)
from millkernels.certify.probes.registry import ProbeSpec, probes_for
from millkernels.certify.readings import number, probe_readings
from millkernels.certify.targets import GPU_TELEMETRY, Profile

Task = tuple[ProbeSpec, "int | None"]
Rule = Callable[[dict[str, Any], dict[str, Any]], list[V.Check]]

# Metrics judged by dedicated rules below rather than by their own floor.
_LINK_METRICS = {"pcie_gen_load", "pcie_width_load"}
_LINK_PROBES = {"pcie", "sustained"}  # the probes that read the link under load
# Node-scope probe metrics reported per GPU (the others are one value for the node).
_NODE_PER_GPU = {"p2p_min_gbps"}
# An energy counter and what is derived from it: all unmeasurable when it did not advance.
_ENERGY = {
    "sustained_energy_j": ("sustained_power_w", "sustained_tflops_per_w"),
    "cpu_energy_j": ("cpu_power_w", "cpu_gflops_per_w"),
}
XID_FALLEN_OFF_BUS = 79


def evaluate(
    profile: Profile,
    inventory: dict[str, Any],
    records: dict[tuple[str, int | None], dict[str, Any]],
    tasks: list[Task],
    gpu_indices: list[int],
    xids: list[dict[str, Any]] | None,
    xid_reason: str | None = None,
    *,
    probe_gpus: list[int] | None = None,
    postflight: dict[str, Any] | None = None,
) -> list[V.Check]:
    """Every check of a node run. ``gpu_indices``: the GPUs certified; ``probe_gpus``: those
    the probes ran on (default: all); ``postflight``: the inventory taken after the probes."""
    checks: list[V.Check] = []
    gpu_class = profile.device_class == "gpu"
    if gpu_class:
        checks += device_checks(profile, inventory, gpu_indices)
    else:
        checks += _untested_gpus(inventory)
    ran_on = gpu_indices if probe_gpus is None else probe_gpus
    measured, link = _probe_checks(profile, records, tasks, ran_on, checks)
    if gpu_class and inventory.get("available"):
        linked = {g for s, g in tasks if s.name in _LINK_PROBES}
        checks += _pcie_checks(profile, inventory, link, linked)
    checks += _spread(profile, measured)
    checks += _sdc(records, tasks)
    if gpu_class:
        checks += _xid_checks(profile, gpu_indices, xids, xid_reason)
        checks += _postflight_checks(inventory, postflight, gpu_indices)
    return checks


# ------------------------------------------------------------------------------ the GPU set


def _ids(buses: list[str]) -> str:
    return ", ".join(buses[:8]) + (f" and {len(buses) - 8} more" if len(buses) > 8 else "")


def device_checks(profile: Profile, inv: dict[str, Any], gpus: list[int]) -> list[V.Check]:
    """NVML, the PCI bus and CUDA against each other, then each GPU's health at rest."""
    out = [_nvml_check(inv), *_pci_count_check(inv), *_cuda_checks(inv, gpus)]
    want = profile.data.get("gpus_expected")
    n = len(inv["gpus"])
    if want is not None and inv.get("available") and n != want:
        msg = f"expected {want} GPUs, NVML sees {n}"
        out.append(
            V.Check("gpu_count", None, n, "GPUs", V.FAIL, V.MK_GPU_COUNT, msg, {"min": want})
        )
    out += _duplicate_ids(inv["gpus"])
    for s in inv["gpus"]:
        out += _gpu_health(s, profile.preflight, inv)
    return out


def _nvml_check(inv: dict[str, Any]) -> V.Check:
    if inv.get("available"):
        return V.Check("nvml", None, len(inv["gpus"]), "GPUs", V.PASS, V.OK)
    msg, reason = inv.get("error") or "NVML is not available", V.FR_CANNOT_OPEN_LIB
    pci = (inv.get("pci") or {}).get("gpus") or []
    if pci:
        msg += f"; the PCI bus has {len(pci)} NVIDIA GPU(s) ({_ids([g['bus_id'] for g in pci])})"
        drivers = {g.get("driver") for g in pci}
        if "nouveau" in drivers:
            msg, reason = msg + ", bound to nouveau instead of nvidia", V.FR_DENYLISTED_DRIVER
        elif "" in drivers:
            msg += ", some with no kernel driver bound"
    return V.Check("nvml", None, None, "", V.ERROR, reason, msg)


def _pci_count_check(inv: dict[str, Any]) -> list[V.Check]:
    """NVML's GPUs against the NVIDIA GPUs on the PCI bus (or the container's share of them)."""
    name, pci = "gpu_count.pci", pci_bus_ids(inv)
    if pci is None:
        how = (inv.get("pci") or {}).get("how", "unknown")
        msg = f"PCI bus not readable, count not compared: {how}"
        return [V.Check(name, None, None, "GPUs", V.SKIPPED, V.MK_UNAVAILABLE, msg)]
    nv = inv["gpus"] if inv.get("available") else []
    subset = (inv.get("pci") or {}).get("subset")
    want = len(subset) if subset is not None else len(pci)
    if subset is not None:
        short = [] if len(nv) >= want else [f"{want - len(nv)} of NVIDIA_VISIBLE_DEVICES"]
        where = f"NVIDIA_VISIBLE_DEVICES gives this container {want}"
    else:
        known = {norm_bus_id(s.get("pci_bus_id")) for s in nv if not s.get("lost")} - {None}
        missing = [b for b in pci if b not in known]
        short = missing if len(missing) > len(nv) - len(known) else []
        where = f"the PCI bus has {len(pci)}"
    lim = {"min": want}
    if not short:
        return [V.Check(name, None, len(nv), "GPUs", V.PASS, V.OK, where, lim)]
    msg = f"NVML sees {len(nv)} GPUs, {where}; not reachable: {_ids(short)}"
    if not nv:  # nothing answers at all: the node could not be tested
        why = inv.get("error") or "NVML lists no GPU"
        return [V.Check(name, None, 0, "GPUs", V.ERROR, V.FR_DEVICE_COUNT, f"{msg} ({why})", lim)]
    msg += " (fell off the bus or lost its driver)"
    return [V.Check(name, None, len(nv), "GPUs", V.FAIL, V.FR_DEVICE_COUNT, msg, lim)]


def _cuda_checks(inv: dict[str, Any], gpus: list[int]) -> list[V.Check]:
    """Every GPU of the run must be one CUDA can open (``DCGM_FR_CUDA_DEVICE``)."""
    cuda = inv.get("cuda")
    if cuda is None:
        return []
    devices = cuda.get("devices") or []
    run = [s for s in inv["gpus"] if s["index"] in gpus and not s.get("lost")]
    if cuda.get("error") or not devices:
        why = f"CUDA cannot open any GPU: {cuda.get('error') or 'it sees none'}"
        out = [V.Check("gpu_count.cuda", None, 0, "GPUs", V.ERROR, V.FR_CUDA_DEVICE, why)]
        return out + [
            V.Check("cuda.device", s["index"], None, "", V.ERROR, V.FR_CUDA_DEVICE, why)
            for s in run
        ]
    buses = [norm_bus_id(d.get("bus_id")) for d in devices]
    ref: list[str | None]  # None: a GPU whose bus id NVML could not read
    if inv.get("available"):
        ref = [norm_bus_id(s.get("pci_bus_id")) for s in run]
    else:  # NVML is down: CUDA against the PCI bus
        pci = pci_bus_ids(inv) if (inv.get("pci") or {}).get("subset") is None else None
        ref = list(pci or [])
    out = []
    reach = cuda_reachable(inv, run)
    for s in run:
        bus = norm_bus_id(s.get("pci_bus_id"))
        if s["index"] in reach:
            out.append(V.Check("cuda.device", s["index"], bus, "", V.PASS, V.OK))
        else:
            msg = f"CUDA does not see the GPU at {bus}"
            out.append(V.Check("cuda.device", s["index"], bus, "", V.FAIL, V.FR_CUDA_DEVICE, msg))
    n, lim = len(devices), {"min": len(ref)}
    missing = [b for b in ref if b is not None and b not in buses] if all(buses) else []
    if n < len(ref) or missing:
        msg = f"CUDA sees {n} GPUs, expected {len(ref)}" + (
            f"; missing: {_ids(missing)}" if missing else ""
        )
        out.append(V.Check("gpu_count.cuda", None, n, "GPUs", V.FAIL, V.FR_DEVICE_COUNT, msg, lim))
    else:
        out.append(V.Check("gpu_count.cuda", None, n, "GPUs", V.PASS, V.OK, "", lim))
    return out


def _duplicate_ids(snapshots: list[dict[str, Any]]) -> list[V.Check]:
    """Two GPUs that report one UUID or serial: a firmware fault or a forged inventory."""
    out = []
    for field in ("uuid", "serial"):
        owners: dict[str, list[int]] = {}
        for s in snapshots:
            v = s.get(field)
            if isinstance(v, str) and v.strip() and v.strip().upper() not in ("N/A", "0"):
                owners.setdefault(v.strip(), []).append(s["index"])
        for v, gs in owners.items():
            if len(gs) > 1:
                msg = f"{field} {v} is reported by GPUs {gs}"
                out += [
                    V.Check(f"preflight.{field}", g, v, "", V.FAIL, V.MK_DUPLICATE_GPU_ID, msg)
                    for g in gs
                ]
    return out


def _untested_gpus(inv: dict[str, Any]) -> list[V.Check]:
    """The cpu profile on a machine with NVIDIA GPUs: say so (they are not certified)."""
    pci = pci_bus_ids(inv)
    if not pci:
        return []
    msg = (
        f"the PCI bus has {len(pci)} NVIDIA GPU(s) ({_ids(pci)}) that this cpu-profile run "
        "did not test: this certificate says nothing about them"
    )
    return [
        V.Check("pci.nvidia_gpus", None, len(pci), "GPUs", V.SKIPPED, V.MK_GPUS_NOT_CERTIFIED, msg)
    ]


# ------------------------------------------------------------------------------ health at rest


def _flag(raw: Any) -> tuple[float | None, str | None]:
    """A yes/no NVML reading as 1/0 (NVML's ints 0/1 as well as bools)."""
    if isinstance(raw, bool):
        return float(raw), None
    return number(raw, nonneg=True, at_most=1, whole=True)


def _shown(x: float) -> float | int:
    return int(x) if x.is_integer() else x


def _bound(
    name: str,
    field: str,
    unit: str,
    reason: str,
    what: str,
    *,
    limit: Callable[[dict[str, Any]], Any],
    bound: str = "max",
    missing: str = "error",
    flag: bool = False,
    applies: Callable[[dict[str, Any]], bool] | None = None,
    note: str = "recorded",
) -> Rule:
    """A health rule: snapshot ``field`` against ``limit(rules)`` (``bound`` "max" or "min";
    None: recorded, no limit). ``missing``: "error" (no value is an error), "ignore" (not every
    GPU has it) or "limited" (an error only when there is a limit). ``what`` is the failure
    message, formatted with ``v`` (the value) and ``lim``."""

    def rule(s: dict[str, Any], r: dict[str, Any]) -> list[V.Check]:
        if applies is not None and not applies(r):
            return []
        g, lim, raw = s["index"], limit(r), s.get(field)
        if raw is None:
            if missing == "ignore" or (missing == "limited" and lim is None):
                return []
            return [
                V.Check(name, g, None, unit, V.ERROR, V.FR_CANNOT_GET_STAT, "NVML gave no value")
            ]
        value, why = _flag(raw) if flag else number(raw, nonneg=True)
        if value is None:
            msg = f"NVML gave an invalid value: {why}"
            return [V.Check(name, g, None, unit, V.ERROR, V.MK_INVALID_READING, msg)]
        v = _shown(value)
        if lim is None:
            return [V.Check(name, g, v, unit, V.PASS, V.MK_NO_LIMIT, note)]
        bad = value > lim if bound == "max" else value < lim
        if bad:
            msg = what.format(v=v, lim=lim)
            return [V.Check(name, g, v, unit, V.FAIL, reason, msg, {bound: lim})]
        return [V.Check(name, g, v, unit, V.PASS, V.OK, "", {bound: lim})]

    return rule


def _power_limit(s: dict[str, Any], r: dict[str, Any]) -> list[V.Check]:
    """The enforced power limit must be (nearly) the default: a lowered cap throttles."""
    name, g = "preflight.power_limit", s["index"]
    if s.get("power_limit_w") is None or s.get("power_limit_default_w") is None:
        return [V.Check(name, g, None, "W", V.ERROR, V.FR_CANNOT_GET_STAT, "NVML gave no value")]
    (lim, w1), (dflt, w2) = (
        number(s[k], nonneg=True) for k in ("power_limit_w", "power_limit_default_w")
    )
    if lim is None or dflt is None:
        msg = f"NVML gave an invalid value: {w1 or w2}"
        return [V.Check(name, g, None, "W", V.ERROR, V.MK_INVALID_READING, msg)]
    floor = {"min": round(dflt * r.get("power_limit_min_fraction", 0.99), 1)}
    if lim < floor["min"]:
        msg = f"enforced power limit {lim:g} W is below the default {dflt:g} W"
        return [V.Check(name, g, lim, "W", V.FAIL, V.FR_ENFORCED_POWER_LIMIT, msg, floor)]
    return [V.Check(name, g, lim, "W", V.PASS, V.OK, "", floor)]


def _clock_events(s: dict[str, Any], r: dict[str, Any]) -> list[V.Check]:
    """Thermal slowdown bits set while the GPU is idle."""
    name, g = "preflight.clock_events", s["index"]
    ev, why = number(s.get("clock_event_reasons"), nonneg=True, whole=True)
    if ev is None:
        reason, msg = (
            (V.FR_CANNOT_GET_STAT, "NVML gave no value")
            if s.get("clock_event_reasons") is None
            else (V.MK_INVALID_READING, f"NVML gave an invalid value: {why}")
        )
        return [V.Check(name, g, None, "bitmask", V.ERROR, reason, msg)]
    bits = int(ev)
    if bits & THERMAL_BITS:
        msg = f"thermal slowdown at rest (0x{bits:x})"
        return [V.Check(name, g, bits, "bitmask", V.FAIL, V.FR_THROTTLE_THERMAL, msg)]
    return [V.Check(name, g, bits, "bitmask", V.PASS, V.OK)]


def _uuid(s: dict[str, Any], r: dict[str, Any]) -> list[V.Check]:
    """Probes are pinned to a GPU by its UUID: without one they could land on another GPU."""
    if isinstance(s.get("uuid"), str) and s["uuid"]:
        return []
    msg = "NVML gave no UUID: probes cannot be pinned to this GPU"
    return [V.Check("preflight.uuid", s["index"], None, "", V.ERROR, V.FR_CANNOT_GET_STAT, msg)]


HEALTH_RULES: tuple[Rule, ...] = (
    _uuid,
    _bound(
        "preflight.ecc_enabled", "ecc_enabled", "bool", V.FR_ECC_DISABLED, "ECC is disabled",
        limit=lambda r: 1, bound="min", flag=True, applies=lambda r: r.get("ecc_required", True),
    ),
    _bound(
        "preflight.ecc_volatile_uncorrected", "ecc_volatile_uncorrected", "errors",
        V.FR_VOLATILE_DBE, "{v} uncorrectable ECC errors since the driver loaded",
        limit=lambda r: r.get("max_volatile_dbe", 0),
    ),
    _bound(
        "preflight.ecc_aggregate_uncorrected", "ecc_aggregate_uncorrected", "errors",
        V.FR_DBE_THRESHOLD, "{v} uncorrectable ECC errors over the GPU's life",
        limit=lambda r: r.get("max_aggregate_dbe"),
    ),
    # Row remapping (Ampere and newer).
    _bound(
        "preflight.remap_pending", "remap_pending", "bool", V.FR_PENDING_ROW_REMAP,
        "row remapping is pending: the GPU needs a reset",
        limit=lambda r: r.get("max_pending_row_remaps", 0), flag=True,
    ),
    _bound(
        "preflight.remap_failure", "remap_failure", "bool", V.FR_ROW_REMAP_FAILURE,
        "a row remap failed", limit=lambda r: r.get("max_row_remap_failures", 0), flag=True,
    ),
    _bound(
        "preflight.remap_uncorrected", "remap_uncorrected", "rows", V.OK, "",
        limit=lambda r: None, missing="ignore",
        note="rows remapped after uncorrectable errors (recorded)",
    ),
    # Page retirement: not supported from Ampere on (row remapping replaces it).
    _bound(
        "preflight.retired_pages_pending", "retired_pages_pending", "bool",
        V.FR_PENDING_PAGE_RETIREMENTS, "a page retirement is pending",
        limit=lambda r: r.get("max_pending_retired_pages", 0), flag=True, missing="ignore",
    ),
    _power_limit,
    _bound(
        "preflight.persistence_mode", "persistence_mode", "bool", V.FR_PERSISTENCE_MODE,
        "persistence mode is off", bound="min", flag=True, missing="limited",
        limit=lambda r: 1 if r.get("persistence_mode_required") else None,
        note="recorded; not required by this profile",
    ),
    _bound(
        "preflight.temperature", "temperature_c", "C", V.FR_TEMP_VIOLATION, "{v} C at rest",
        limit=lambda r: r.get("temperature_max_c"),
    ),
    _clock_events,
    _bound(
        "preflight.nvlink_active", "nvlink_active", "links", V.FR_NVLINK_DOWN,
        "{v} of {lim} NVLinks are up", bound="min", limit=lambda r: r.get("nvlinks_min", 0),
        applies=lambda r: bool(r.get("nvlinks_min", 0)),
    ),
    _bound(
        "preflight.pcie_replay", "pcie_replay", "replays", V.FR_PCIE_REPLAY, "{v} PCIe replays",
        limit=lambda r: r.get("max_pcie_replays"), missing="ignore",
    ),
)  # fmt: skip


def _unaccounted(inv: dict[str, Any]) -> list[str]:
    """PCI bus ids of NVIDIA GPUs that no reachable NVML GPU accounts for."""
    known = {norm_bus_id(s.get("pci_bus_id")) for s in inv["gpus"] if not s.get("lost")}
    return [b for b in pci_bus_ids(inv) or [] if b not in known]


def _gpu_health(s: dict[str, Any], r: dict[str, Any], inv: dict[str, Any]) -> list[V.Check]:
    """One GPU at rest: present (not fallen off the bus), then every health rule."""
    g = s["index"]
    if s.get("lost"):
        where = _unaccounted(inv)
        msg = s["lost"] + (
            f"; PCI bus id(s) NVML cannot account for: {_ids(where)}" if where else ""
        )
        return [V.Check("preflight.present", g, None, "", V.FAIL, V.FR_FALLEN_OFF_BUS, msg)]
    out = [V.Check("preflight.present", g, norm_bus_id(s.get("pci_bus_id")), "", V.PASS, V.OK)]
    for rule in HEALTH_RULES:
        out += rule(s, r)
    return out


def _postflight_checks(
    inv: dict[str, Any], post: dict[str, Any] | None, gpus: list[int]
) -> list[V.Check]:
    """Each GPU that answered before the probes must still answer after them (same UUID, still
    on the PCI bus): a GPU that fell off the bus mid-run fails, named by its bus id."""
    if post is None or not inv.get("available"):
        return []
    name = "postflight.present"
    if not post.get("available"):
        msg = f"NVML could not be read after the probes: {post.get('error')}"
        return [V.Check(name, None, None, "", V.ERROR, V.FR_API_FAIL, msg)]
    after = {s.get("uuid"): s for s in post["gpus"] if s.get("uuid") and not s.get("lost")}
    on_bus = pci_bus_ids(post)
    out = []
    for s in inv["gpus"]:
        g, bus = s["index"], norm_bus_id(s.get("pci_bus_id"))
        if g not in gpus or s.get("lost") or not s.get("uuid"):
            continue  # judged before the probes
        gone = s["uuid"] not in after or (on_bus is not None and bus not in on_bus)
        if gone:
            msg = f"GPU {g} ({bus}) stopped answering during the run: it fell off the bus"
            out.append(V.Check(name, g, bus, "", V.FAIL, V.FR_FALLEN_OFF_BUS, msg))
        else:
            out.append(V.Check(name, g, bus, "", V.PASS, V.OK))
    return out


def _pcie_checks(
    profile: Profile,
    inv: dict[str, Any],
    link: dict[tuple[str, int], list[float]],
    linked: set[int | None],
) -> list[V.Check]:
    r = profile.preflight
    out = []
    for s in inv["gpus"]:
        g = s["index"]
        if s.get("lost"):
            continue
        for kind, key_cur, need, reason, unit in (
            ("gen", "pcie_gen_current", r.get("pcie_gen_min"), V.FR_PCIE_GENERATION, "gen"),
            ("width", "pcie_width_current", r.get("pcie_width_min"), V.FR_PCIE_WIDTH, "lanes"),
        ):
            name = f"pcie.{kind}"
            loaded = link.get((kind, g), [])
            rest, _ = number(s.get(key_cur), nonneg=True)
            if loaded:
                value, basis = max(loaded), "under load"
            elif g not in linked:
                msg = "no probe that loads the link was run"
                out.append(V.Check(name, g, None, unit, V.SKIPPED, V.MK_NOT_RUN, msg))
                continue
            elif rest is not None and (need is None or rest >= need):
                value, basis = rest, "at rest (no reading under load)"
            else:
                msg = f"no reading under load; at rest {kind} {rest} (idle links train down)"
                out.append(V.Check(name, g, None, unit, V.ERROR, V.MK_NO_MEASUREMENT, msg))
                continue
            value = _shown(value)
            if need is not None and value < need:
                msg = f"PCIe {kind} {value} ({basis}) is below {need}"
                out.append(V.Check(name, g, value, unit, V.FAIL, reason, msg, {"min": need}))
            else:
                st = V.OK if need is not None else V.MK_NO_LIMIT
                lim = {"min": need} if need is not None else {}
                out.append(V.Check(name, g, value, unit, V.PASS, st, basis, lim))
    return out


# ------------------------------------------------------------------------------ probes


def _not_planned(profile: Profile, tasks: list[Task]) -> list[V.Check]:
    """A skipped check for each probe of the device class the run did not plan; an error when
    it planned none (nothing would be measured)."""
    planned = {s.name for s, _ in tasks}
    skip = set(profile.data.get("skip_probes", []))
    out = []
    for spec in probes_for(profile.device_class):
        if spec.name in planned:
            continue
        why = (
            "skipped by the profile (skip_probes)"
            if spec.name in skip
            else "not run: no reachable GPU"
            if not tasks
            else "not selected for this run"
        )
        out.append(V.Check(f"probe.{spec.name}", None, None, "", V.SKIPPED, V.MK_NOT_RUN, why))
    if not tasks:
        msg = "no probe ran: nothing was measured"
        out.append(V.Check("probes", None, None, "", V.ERROR, V.MK_NO_MEASUREMENT, msg))
    return out


def _record_error(spec: ProbeSpec, gpu: int | None, rec: dict[str, Any]) -> V.Check:
    msg = str(rec.get("message", ""))
    tail = str(rec.get("stderr_tail") or "").strip().splitlines()[-1:] or [""]
    if tail[0] and tail[0] not in msg:
        msg = f"{msg} | {tail[0]}"[:500]
    reason = rec.get("reason") if isinstance(rec.get("reason"), str) else V.MK_PROBE_ERROR
    return V.Check(f"probe.{spec.name}", gpu, None, "", V.ERROR, reason or V.MK_PROBE_ERROR, msg)


def _frozen(readings: list[Any]) -> dict[tuple[str, int | None], str]:
    """Metrics that a 0 J energy reading makes unmeasurable, with the reason."""
    out = {}
    for r in readings:
        if r.metric in _ENERGY and r.value == 0:
            why = f"the energy counter did not advance (0 J over the load): {r.metric} unreadable"
            for m in (r.metric, *_ENERGY[r.metric]):
                out[(m, r.gpu)] = why
    return out


def _probe_checks(
    profile: Profile,
    records: dict[tuple[str, int | None], dict[str, Any]],
    tasks: list[Task],
    gpu_indices: list[int],
    checks: list[V.Check],
) -> tuple[dict[str, dict[int, float]], dict[tuple[str, int], list[float]]]:
    checks += _not_planned(profile, tasks)
    n_gpus = len(gpu_indices)
    measured: dict[str, dict[int, float]] = {}
    link: dict[tuple[str, int], list[float]] = {}
    for spec, gpu in tasks:
        rec = records.get((spec.name, gpu))
        name = f"probe.{spec.name}"
        if rec is None:
            msg = "the probe did not run"
            checks.append(V.Check(name, gpu, None, "", V.ERROR, V.MK_NO_MEASUREMENT, msg))
            continue
        status = rec.get("status")
        if status == "not_applicable":
            if spec.scope == "node" and n_gpus < spec.min_gpus:
                msg = str(rec.get("message") or f"needs {spec.min_gpus} or more GPUs")
                checks.append(V.Check(name, gpu, None, "", V.SKIPPED, V.MK_NOT_APPLICABLE, msg))
            else:
                msg = f"recorded as not applicable, but the run has {n_gpus} GPUs"
                checks.append(V.Check(name, gpu, None, "", V.ERROR, V.MK_PROBE_ERROR, msg))
            continue
        if status != "ok":
            checks.append(_record_error(spec, gpu, rec))
            continue
        readings, problems = probe_readings(rec)
        checks += [V.Check(name, gpu, None, "", V.ERROR, V.MK_INVALID_READING, p) for p in problems]
        frozen = _frozen(readings)
        seen = set()
        for r in readings:
            key = (r.metric, r.gpu)
            allowed = {gpu} if spec.scope == "gpu" else {None, *gpu_indices}
            if r.gpu not in allowed:
                msg = f"the probe of GPU {gpu} reported {r.metric} for GPU {r.gpu}"
                checks.append(V.Check(name, gpu, None, "", V.ERROR, V.MK_INVALID_READING, msg))
                continue
            if key in frozen:
                continue
            seen.add(key)
            if r.value is None:  # then ``problem`` says why
                msg = f"invalid reading: {r.problem}"
                checks.append(
                    V.Check(r.metric, r.gpu, None, r.unit, V.ERROR, V.MK_INVALID_READING, msg)
                )
                continue
            if r.metric in _LINK_METRICS:
                if r.gpu is not None:
                    link.setdefault((r.metric.split("_")[1], r.gpu), []).append(r.value)
                continue
            limit = profile.floors.get(r.metric)
            if limit and limit.get("gpus") is not None and limit["gpus"] != n_gpus:
                limit = None  # e.g. the 8-GPU all-reduce floor on a 4-GPU node
            checks.append(V.limit_check(r.metric, r.gpu, r.value, r.unit, limit))
            if r.gpu is not None:
                measured.setdefault(r.metric, {})[r.gpu] = r.value
        checks += _missing(profile, spec, gpu, gpu_indices, rec, seen, frozen)
    return measured, link


def _missing(
    profile: Profile,
    spec: ProbeSpec,
    gpu: int | None,
    gpu_indices: list[int],
    rec: dict[str, Any],
    seen: set[tuple[str, int | None]],
    frozen: dict[tuple[str, int | None], str],
) -> list[V.Check]:
    """A check for each metric an OK probe declares but did not produce (see the module rules)."""
    floors, optional = profile.floors, profile.optional
    expected = set(floors) | set(profile.data.get("expect", []))
    if profile.device_class == "gpu":
        expected |= set(GPU_TELEMETRY)
    reasons = {}
    for u in rec.get("unavailable") or []:
        if isinstance(u, dict) and isinstance(u.get("metric"), str):
            reasons[(u["metric"], u.get("gpu"))] = str(u.get("reason") or "unavailable")
    out = []
    for metric in spec.metrics:
        if metric in _LINK_METRICS:
            continue
        lim = floors.get(metric, {})
        wanted = metric in expected and lim.get("gpus") in (None, len(gpu_indices))
        if spec.scope == "gpu":
            keys = [(metric, gpu)]
        elif metric in _NODE_PER_GPU:
            keys = [(metric, g) for g in gpu_indices]
        else:
            keys = [(metric, None)]
        unit = lim.get("unit") or V.UNITS.get(metric, "")
        for key in keys:
            if key in seen:
                continue
            why = frozen.get(key) or reasons.get(key) or reasons.get((metric, None))
            if why is None:
                msg = "not produced by the probe, which gave no reason"
                out.append(V.Check(metric, key[1], None, unit, V.ERROR, V.MK_NO_MEASUREMENT, msg))
                continue
            rs = V.FR_POWER_UNREADABLE if key in frozen else V.MK_UNAVAILABLE
            st = V.SKIPPED if metric in optional or not wanted else V.ERROR
            out.append(V.Check(metric, key[1], None, unit, st, rs, why))
    return out


def _spread(profile: Profile, measured: dict[str, dict[int, float]]) -> list[V.Check]:
    sp = profile.spread
    limit = sp.get("limit")
    if not limit:
        return []
    out = []
    for metric in sp.get("metrics", []):
        vals = measured.get(metric, {})
        unit = profile.floors.get(metric, {}).get("unit", "")
        out += V.spread_checks(metric, unit, vals, limit)
    return out


def _sdc(records: dict[tuple[str, int | None], dict[str, Any]], tasks: list[Task]) -> list[V.Check]:
    digests, out = {}, []
    for spec, gpu in tasks:
        if spec.name != "sdc" or gpu is None:
            continue
        rec = records.get((spec.name, gpu))
        if not rec or rec.get("status") != "ok":
            continue  # the probe's own error check says why
        d = (rec.get("info") or {}).get("digest")
        if isinstance(d, str) and d:
            digests[gpu] = d
        else:
            msg = f"the SDC probe gave no GEMM digest ({d!r}): cannot compare with other GPUs"
            out.append(
                V.Check("sdc.cross_gpu", gpu, None, "sha256", V.ERROR, V.MK_NO_MEASUREMENT, msg)
            )
    if len(digests) < 2:
        return out
    counts = Counter(digests.values())
    top, top_n = counts.most_common(1)[0]
    majority = top if top_n * 2 > len(digests) else None
    for g, d in sorted(digests.items()):
        if d == majority:
            out.append(V.Check("sdc.cross_gpu", g, d[:16], "sha256", V.PASS, V.OK))
        else:
            why = (
                f"GEMM output differs from the {top_n} GPUs that agree"
                if majority
                else "GPUs disagree with no majority: cannot tell which is right"
            )
            out.append(V.Check("sdc.cross_gpu", g, d[:16], "sha256", V.FAIL, V.MK_SDC, why))
    return out


def _xid_checks(
    profile: Profile, gpus: list[int], xids: list[dict[str, Any]] | None, why: str | None
) -> list[V.Check]:
    if xids is None:
        msg = why or "XID events not readable"
        return [V.Check("xid_events", None, None, "events", V.SKIPPED, V.MK_UNAVAILABLE, msg)]
    allowed = profile.preflight.get("xid_allowed", False)
    out = []
    for g in gpus:
        mine = [e.get("xid") for e in xids if isinstance(e, dict) and e.get("gpu") == g]
        if mine and (not allowed or XID_FALLEN_OFF_BUS in mine):
            reason = V.FR_FALLEN_OFF_BUS if XID_FALLEN_OFF_BUS in mine else V.FR_XID
            msg = f"XID {sorted(set(mine), key=str)} during the run"
            out.append(
                V.Check("xid_events", g, len(mine), "events", V.FAIL, reason, msg, {"max": 0})
            )
        else:
            out.append(V.Check("xid_events", g, len(mine), "events", V.PASS, V.OK, "", {"max": 0}))
    return out
