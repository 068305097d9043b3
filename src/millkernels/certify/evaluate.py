"""From preflight readings and probe records to checks, against a target profile.

Rules (each documented where it is applied):

- NVML unavailable on a GPU profile: ``nvml`` errors (``DCGM_FR_CANNOT_OPEN_LIB``) and every
  NVML-derived check errors with it.
- A planned probe with no record, or one that crashed, hung or raised: one ``probe.<name>``
  check in ``error`` with the runner's reason; none of its metrics are judged.
- A metric with a floor that an OK probe did not produce: ``error``, or ``skipped`` when the
  profile lists the metric as optional (the probe's own reason is kept).
- PCIe generation and width: the highest of the readings taken under load (pcie and sustained
  probes); without a load reading, NVML's maximum link generation/width (idle links report a
  lower current generation).
- Spread: each GPU against the node median of the spread metrics (two or more GPUs).
- SDC: the GEMM digests of all GPUs must agree; a GPU outside the majority fails; with no
  majority (e.g. two GPUs that differ) every GPU fails.
- Page retirement (pre-Ampere) readings that NVML does not support are not judged (row
  remapping replaces page retirement from Ampere on).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from millkernels.certify import verdict as V
from millkernels.certify.preflight import THERMAL_BITS
from millkernels.certify.probes.registry import ProbeSpec
from millkernels.certify.targets import Profile

Task = tuple[ProbeSpec, "int | None"]

# Metrics judged by dedicated rules below rather than by their own floor.
_LINK_METRICS = {"pcie_gen_load", "pcie_width_load"}
# Node-scope probe metrics reported per GPU (the others are one value for the node).
_NODE_PER_GPU = {"p2p_min_gbps"}


def evaluate(
    profile: Profile,
    inventory: dict[str, Any],
    records: dict[tuple[str, int | None], dict[str, Any]],
    tasks: list[Task],
    gpu_indices: list[int],
    xids: list[dict[str, Any]] | None,
    xid_reason: str | None = None,
) -> list[V.Check]:
    """Every check of a node run."""
    checks: list[V.Check] = []
    gpu_class = profile.device_class == "gpu"
    if gpu_class:
        checks += _nvml_checks(profile, inventory, gpu_indices)
    measured, link = _probe_checks(profile, records, tasks, gpu_indices, checks)
    if gpu_class and inventory.get("available"):
        checks += _pcie_checks(profile, inventory, link)
    checks += _spread(profile, measured)
    checks += _sdc(records, tasks)
    if gpu_class:
        checks += _xid_checks(profile, gpu_indices, xids, xid_reason)
    return checks


# ------------------------------------------------------------------------------ preflight


def _nvml_checks(profile: Profile, inv: dict[str, Any], gpus: list[int]) -> list[V.Check]:
    if not inv.get("available"):
        msg = inv.get("error") or "NVML is not available"
        return [V.Check("nvml", None, None, "", V.ERROR, V.FR_CANNOT_OPEN_LIB, msg)]
    out = [V.Check("nvml", None, len(inv["gpus"]), "GPUs", V.PASS, V.OK)]
    pci = inv.get("pci_gpus")
    if pci is None:
        out.append(
            V.Check(
                "gpu_count.pci",
                None,
                None,
                "GPUs",
                V.SKIPPED,
                V.MK_UNAVAILABLE,
                f"PCI count not compared: {inv.get('pci_gpus_how', 'unknown')}",
            )
        )
    elif pci != len(inv["gpus"]):
        out.append(
            V.Check(
                "gpu_count.pci",
                None,
                len(inv["gpus"]),
                "GPUs",
                V.FAIL,
                V.FR_DEVICE_COUNT,
                f"NVML sees {len(inv['gpus'])} GPUs, the PCI bus "
                f"has {pci}: a GPU fell off the bus or lost its driver",
                {"min": pci},
            )
        )
    else:
        out.append(V.Check("gpu_count.pci", None, pci, "GPUs", V.PASS, V.OK, "", {"min": pci}))
    want = profile.data.get("gpus_expected")
    if want is not None and len(inv["gpus"]) != want:
        out.append(
            V.Check(
                "gpu_count",
                None,
                len(inv["gpus"]),
                "GPUs",
                V.FAIL,
                V.MK_GPU_COUNT,
                f"expected {want} GPUs, NVML sees {len(inv['gpus'])}",
                {"min": want},
            )
        )
    rules = profile.preflight
    for s in inv["gpus"]:
        out += _preflight_gpu(s, rules)
    return out


def _preflight_gpu(s: dict[str, Any], r: dict[str, Any]) -> list[V.Check]:
    g = s["index"]
    out: list[V.Check] = []

    def unreadable(name: str, unit: str = "") -> V.Check:
        return V.Check(name, g, None, unit, V.ERROR, V.FR_CANNOT_GET_STAT, "NVML gave no value")

    def at_most(name: str, value: Any, limit: Any, reason: str, unit: str, what: str) -> None:
        if value is None:
            out.append(unreadable(name, unit))
        elif limit is None:
            out.append(V.Check(name, g, value, unit, V.PASS, V.MK_NO_LIMIT, "recorded"))
        elif value > limit:
            out.append(V.Check(name, g, value, unit, V.FAIL, reason, what, {"max": limit}))
        else:
            out.append(V.Check(name, g, value, unit, V.PASS, V.OK, "", {"max": limit}))

    # ECC mode and counters.
    if r.get("ecc_required", True):
        e = s.get("ecc_enabled")
        if e is None:
            out.append(unreadable("preflight.ecc_enabled", "bool"))
        elif not e:
            out.append(
                V.Check(
                    "preflight.ecc_enabled",
                    g,
                    0,
                    "bool",
                    V.FAIL,
                    V.FR_ECC_DISABLED,
                    "ECC is disabled",
                    {"min": 1},
                )
            )
        else:
            out.append(V.Check("preflight.ecc_enabled", g, 1, "bool", V.PASS, V.OK, "", {"min": 1}))
    vol = s.get("ecc_volatile_uncorrected")
    at_most(
        "preflight.ecc_volatile_uncorrected",
        vol,
        r.get("max_volatile_dbe", 0),
        V.FR_VOLATILE_DBE,
        "errors",
        f"{vol} uncorrectable ECC errors since the driver loaded",
    )
    agg = s.get("ecc_aggregate_uncorrected")
    at_most(
        "preflight.ecc_aggregate_uncorrected",
        agg,
        r.get("max_aggregate_dbe"),
        V.FR_DBE_THRESHOLD,
        "errors",
        f"{agg} uncorrectable ECC errors over the GPU's life",
    )
    # Row remapping (Ampere and newer).
    pend = s.get("remap_pending")
    at_most(
        "preflight.remap_pending",
        None if pend is None else int(pend),
        r.get("max_pending_row_remaps", 0),
        V.FR_PENDING_ROW_REMAP,
        "bool",
        "row remapping is pending: the GPU needs a reset",
    )
    fail = s.get("remap_failure")
    at_most(
        "preflight.remap_failure",
        None if fail is None else int(fail),
        r.get("max_row_remap_failures", 0),
        V.FR_ROW_REMAP_FAILURE,
        "bool",
        "a row remap failed",
    )
    unc = s.get("remap_uncorrected")
    if unc is not None:
        out.append(
            V.Check(
                "preflight.remap_uncorrected",
                g,
                unc,
                "rows",
                V.PASS,
                V.MK_NO_LIMIT,
                "rows remapped after uncorrectable errors (recorded)",
            )
        )
    rp = s.get("retired_pages_pending")
    if rp is not None:  # not supported from Ampere on (row remapping replaces it)
        at_most(
            "preflight.retired_pages_pending",
            int(rp),
            r.get("max_pending_retired_pages", 0),
            V.FR_PENDING_PAGE_RETIREMENTS,
            "bool",
            "a page retirement is pending",
        )
    # Power limit.
    lim, dflt = s.get("power_limit_w"), s.get("power_limit_default_w")
    frac = r.get("power_limit_min_fraction", 0.99)
    if lim is None or dflt is None:
        out.append(unreadable("preflight.power_limit", "W"))
    elif lim < dflt * frac:
        out.append(
            V.Check(
                "preflight.power_limit",
                g,
                lim,
                "W",
                V.FAIL,
                V.FR_ENFORCED_POWER_LIMIT,
                f"enforced power limit {lim:g} W is below the default {dflt:g} W",
                {"min": round(dflt * frac, 1)},
            )
        )
    else:
        out.append(
            V.Check(
                "preflight.power_limit",
                g,
                lim,
                "W",
                V.PASS,
                V.OK,
                "",
                {"min": round(dflt * frac, 1)},
            )
        )
    # Persistence mode.
    pm = s.get("persistence_mode")
    if r.get("persistence_mode_required"):
        if pm is None:
            out.append(unreadable("preflight.persistence_mode", "bool"))
        else:
            st, rs = (V.PASS, V.OK) if pm else (V.FAIL, V.FR_PERSISTENCE_MODE)
            out.append(V.Check("preflight.persistence_mode", g, int(pm), "bool", st, rs))
    elif pm is not None:
        out.append(
            V.Check(
                "preflight.persistence_mode",
                g,
                int(pm),
                "bool",
                V.PASS,
                V.MK_NO_LIMIT,
                "recorded; not required by this profile",
            )
        )
    # Temperature at rest and clock events at rest.
    t = s.get("temperature_c")
    at_most(
        "preflight.temperature",
        t,
        r.get("temperature_max_c"),
        V.FR_TEMP_VIOLATION,
        "C",
        f"{t} C at rest",
    )
    ev = s.get("clock_event_reasons")
    if ev is not None:
        if ev & THERMAL_BITS:
            out.append(
                V.Check(
                    "preflight.clock_events",
                    g,
                    ev,
                    "bitmask",
                    V.FAIL,
                    V.FR_THROTTLE_THERMAL,
                    f"thermal slowdown at rest (0x{ev:x})",
                )
            )
        else:
            out.append(V.Check("preflight.clock_events", g, ev, "bitmask", V.PASS, V.OK))
    # NVLink.
    need = r.get("nvlinks_min", 0)
    act = s.get("nvlink_active")
    if need:
        if act is None:
            out.append(unreadable("preflight.nvlink_active", "links"))
        elif act < need:
            out.append(
                V.Check(
                    "preflight.nvlink_active",
                    g,
                    act,
                    "links",
                    V.FAIL,
                    V.FR_NVLINK_DOWN,
                    f"{act} of {need} NVLinks are up",
                    {"min": need},
                )
            )
        else:
            out.append(
                V.Check("preflight.nvlink_active", g, act, "links", V.PASS, V.OK, "", {"min": need})
            )
    replay = s.get("pcie_replay")
    if replay is not None:
        at_most(
            "preflight.pcie_replay",
            replay,
            r.get("max_pcie_replays"),
            V.FR_PCIE_REPLAY,
            "replays",
            f"{replay} PCIe replays",
        )
    return out


def _pcie_checks(
    profile: Profile, inv: dict[str, Any], link: dict[tuple[str, int], list[float]]
) -> list[V.Check]:
    r = profile.preflight
    out = []
    for s in inv["gpus"]:
        g = s["index"]
        for kind, key_max, key_cur, need, reason, unit in (
            (
                "gen",
                "pcie_gen_max",
                "pcie_gen_current",
                r.get("pcie_gen_min"),
                V.FR_PCIE_GENERATION,
                "gen",
            ),
            (
                "width",
                "pcie_width_max",
                "pcie_width_current",
                r.get("pcie_width_min"),
                V.FR_PCIE_WIDTH,
                "lanes",
            ),
        ):
            loaded = link.get((kind, g), [])
            if loaded:
                value, basis = max(loaded), "under load"
            elif s.get(key_max) is not None:
                value, basis = s[key_max], "NVML maximum (no reading under load)"
            else:
                value, basis = s.get(key_cur), "at rest"
            name = f"pcie.{kind}"
            if value is None:
                out.append(
                    V.Check(
                        name, g, None, unit, V.ERROR, V.FR_CANNOT_GET_STAT, "no PCIe link reading"
                    )
                )
            elif need is not None and value < need:
                out.append(
                    V.Check(
                        name,
                        g,
                        value,
                        unit,
                        V.FAIL,
                        reason,
                        f"PCIe {kind} {value} ({basis}) is below {need}",
                        {"min": need},
                    )
                )
            else:
                st = V.OK if need is not None else V.MK_NO_LIMIT
                lim = {"min": need} if need is not None else {}
                out.append(V.Check(name, g, value, unit, V.PASS, st, basis, lim))
    return out


# ------------------------------------------------------------------------------ probes


def _probe_checks(
    profile: Profile,
    records: dict[tuple[str, int | None], dict[str, Any]],
    tasks: list[Task],
    gpu_indices: list[int],
    checks: list[V.Check],
) -> tuple[dict[str, dict[int, float]], dict[tuple[str, int], list[float]]]:
    floors, optional = profile.floors, profile.optional
    n_gpus = len(gpu_indices)
    measured: dict[str, dict[int, float]] = {}
    link: dict[tuple[str, int], list[float]] = {}
    for spec, gpu in tasks:
        rec = records.get((spec.name, gpu))
        if rec is None:
            checks.append(
                V.Check(
                    f"probe.{spec.name}",
                    gpu,
                    None,
                    "",
                    V.ERROR,
                    V.MK_NO_MEASUREMENT,
                    "the probe did not run",
                )
            )
            continue
        status = rec.get("status")
        if status == "not_applicable":
            continue
        if status != "ok":
            msg = rec.get("message", "")
            tail = (rec.get("stderr_tail") or "").strip().splitlines()[-1:] or [""]
            if tail[0] and tail[0] not in msg:
                msg = f"{msg} | {tail[0]}"[:500]
            checks.append(
                V.Check(
                    f"probe.{spec.name}",
                    gpu,
                    None,
                    "",
                    V.ERROR,
                    rec.get("reason") or V.MK_PROBE_ERROR,
                    msg,
                )
            )
            continue
        seen = set()
        for m in rec.get("measurements", []):
            metric, g, value, unit = m["metric"], m.get("gpu"), m.get("value"), m.get("unit", "")
            seen.add((metric, g))
            if metric in _LINK_METRICS:
                if value is not None and g is not None:
                    link.setdefault((metric.split("_")[1], g), []).append(value)
                continue
            limit = floors.get(metric)
            if limit and limit.get("gpus") is not None and limit["gpus"] != n_gpus:
                limit = None  # e.g. the 8-GPU all-reduce floor on a 4-GPU node
            checks.append(V.limit_check(metric, g, value, unit, limit))
            if g is not None and value is not None:
                measured.setdefault(metric, {})[g] = value
        reasons = {
            (u["metric"], u.get("gpu")): u.get("reason", "") for u in rec.get("unavailable", [])
        }
        expected = set(floors) | set(profile.data.get("expect", []))
        for metric in spec.metrics:
            if metric in _LINK_METRICS or metric not in expected:
                continue
            lim = floors.get(metric, {})
            if lim.get("gpus") is not None and lim["gpus"] != n_gpus:
                continue
            if spec.scope == "gpu":
                keys = [(metric, gpu)]
            elif metric in _NODE_PER_GPU:
                keys = [(metric, g) for g in gpu_indices]
            else:
                keys = [(metric, None)]
            for key in keys:
                if key in seen:
                    continue
                why = reasons.get(key) or reasons.get((metric, None)) or "not produced by the probe"
                st = V.SKIPPED if metric in optional else V.ERROR
                rs = (
                    V.MK_UNAVAILABLE
                    if key in reasons or (metric, None) in reasons
                    else V.MK_NO_MEASUREMENT
                )
                unit = lim.get("unit") or V.UNITS.get(metric, "")
                checks.append(V.Check(metric, key[1], None, unit, st, rs, why))
    return measured, link


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
    digests = {}
    for spec, gpu in tasks:
        if spec.name not in ("sdc",) or gpu is None:
            continue
        rec = records.get((spec.name, gpu))
        if rec and rec.get("status") == "ok" and rec.get("info", {}).get("digest"):
            digests[gpu] = rec["info"]["digest"]
    if len(digests) < 2:
        return []
    counts = Counter(digests.values())
    top, top_n = counts.most_common(1)[0]
    majority = top if top_n * 2 > len(digests) else None
    out = []
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
        return [
            V.Check(
                "xid_events",
                None,
                None,
                "events",
                V.SKIPPED,
                V.MK_UNAVAILABLE,
                why or "XID events not readable",
            )
        ]
    allowed = profile.preflight.get("xid_allowed", False)
    out = []
    for g in gpus:
        mine = [e["xid"] for e in xids if e.get("gpu") == g]
        if mine and not allowed:
            out.append(
                V.Check(
                    "xid_events",
                    g,
                    len(mine),
                    "events",
                    V.FAIL,
                    V.FR_XID,
                    f"XID {sorted(set(mine))} during the run",
                    {"max": 0},
                )
            )
        else:
            out.append(V.Check("xid_events", g, len(mine), "events", V.PASS, V.OK, "", {"max": 0}))
    return out
