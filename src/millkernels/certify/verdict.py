"""Checks, reason codes and the node verdict.

Every check ends in one of four statuses:

- ``pass``: measured or read, and within the profile's limits (or measured with no limit set:
  reason ``MK_NO_LIMIT``, recorded for the record).
- ``fail``: measured or read, and outside a limit. The reason code says which.
- ``error``: could not be measured or read (a probe crashed or hung, NVML is missing, a value
  the profile requires was not produced). An error is never a pass: it fails the node.
- ``skipped``: could not be measured, and the profile marks the metric optional (for example
  RAPL energy in the ``cpu`` profile: containers and VMs rarely expose it). Skipped checks do
  not fail the node and are listed plainly in every report.

Reason codes reuse DCGM's failure vocabulary (``DCGM_FR_*`` from ``dcgm_errors.h``) where one
fits; codes without a DCGM equivalent start with ``MK_``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from millkernels.certify.readings import number

PASS, FAIL, ERROR, SKIPPED = "pass", "fail", "error", "skipped"
STATUSES = (PASS, FAIL, ERROR, SKIPPED)

# Reason codes. DCGM's (dcgm_errors.h) where one fits.
OK = "OK"
FR_PCIE_GENERATION = "DCGM_FR_PCIE_GENERATION"
FR_PCIE_WIDTH = "DCGM_FR_PCIE_WIDTH"
FR_PCIE_REPLAY = "DCGM_FR_PCIE_REPLAY_THRESHOLD_VIOLATION"
FR_ECC_DISABLED = "DCGM_FR_ECC_DISABLED"
FR_VOLATILE_DBE = "DCGM_FR_VOLATILE_DBE_DETECTED"
FR_DBE_THRESHOLD = "DCGM_FR_DBE_THRESHOLD_VIOLATION"
FR_PENDING_ROW_REMAP = "DCGM_FR_PENDING_ROW_REMAP"
FR_ROW_REMAP_FAILURE = "DCGM_FR_ROW_REMAP_FAILURE"
FR_PENDING_PAGE_RETIREMENTS = "DCGM_FR_PENDING_PAGE_RETIREMENTS"
FR_ENFORCED_POWER_LIMIT = "DCGM_FR_ENFORCED_POWER_LIMIT"
FR_PERSISTENCE_MODE = "DCGM_FR_PERSISTENCE_MODE"
FR_TEMP_VIOLATION = "DCGM_FR_TEMP_VIOLATION"
FR_THROTTLE_THERMAL = "DCGM_FR_CLOCK_THROTTLE_THERMAL"
FR_THROTTLE_POWER = "DCGM_FR_CLOCK_THROTTLE_POWER"
FR_NVLINK_DOWN = "DCGM_FR_NVLINK_DOWN"
FR_XID = "DCGM_FR_XID_ERROR"
FR_MEMORY_BANDWIDTH = "DCGM_FR_MEMORY_BANDWIDTH"
FR_LOW_BANDWIDTH = "DCGM_FR_LOW_BANDWIDTH"
FR_STRESS_LEVEL = "DCGM_FR_STRESS_LEVEL"
FR_FAULTY_MEMORY = "DCGM_FR_FAULTY_MEMORY"
FR_CANNOT_OPEN_LIB = "DCGM_FR_CANNOT_OPEN_LIB"
FR_CANNOT_GET_STAT = "DCGM_FR_CANNOT_GET_STAT"
FR_MEMORY_ALLOC = "DCGM_FR_MEMORY_ALLOC"
FR_CUDA_API = "DCGM_FR_CUDA_API"
FR_DEVICE_COUNT = "DCGM_FR_DEVICE_COUNT_MISMATCH"
FR_FALLEN_OFF_BUS = "DCGM_FR_FALLEN_OFF_BUS"  # XID 79: the GPU stopped answering on the bus
FR_CUDA_DEVICE = "DCGM_FR_CUDA_DEVICE"  # no CUDA device for a GPU NVML or the PCI bus shows
FR_DENYLISTED_DRIVER = "DCGM_FR_DENYLISTED_DRIVER"  # e.g. nouveau bound instead of nvidia
FR_API_FAIL = "DCGM_FR_API_FAIL"  # an NVML call raised
FR_POWER_UNREADABLE = "DCGM_FR_POWER_UNREADABLE"  # e.g. an energy counter that never advances
# millkernels' own.
MK_SPREAD = "MK_SPREAD_BELOW_MEDIAN"
MK_SDC = "MK_SDC_MISMATCH"
MK_PROBE_TIMEOUT = "MK_PROBE_TIMEOUT"
MK_PROBE_CRASHED = "MK_PROBE_CRASHED"
MK_PROBE_ERROR = "MK_PROBE_ERROR"
MK_NO_MEASUREMENT = "MK_NO_MEASUREMENT"
MK_NO_LIMIT = "MK_NO_LIMIT"
MK_UNAVAILABLE = "MK_UNAVAILABLE"
MK_PERF_PER_WATT = "MK_PERF_PER_WATT_LOW"
MK_CLOCK_UNSTABLE = "MK_CLOCK_UNSTABLE"
MK_ABOVE_LIMIT = "MK_ABOVE_LIMIT"
MK_BELOW_FLOOR = "MK_BELOW_FLOOR"
MK_GPU_COUNT = "MK_GPU_COUNT"
MK_WRONG_RESULT = "MK_WRONG_RESULT"  # an op probe's output failed its check against PyTorch
MK_INVALID_READING = "MK_INVALID_READING"  # NaN, infinite, negative, non-numeric, out of range
MK_DUPLICATE_GPU_ID = "MK_DUPLICATE_GPU_ID"  # two GPUs report the same UUID or serial
MK_PREFLIGHT_TIMEOUT = "MK_PREFLIGHT_TIMEOUT"  # NVML or CUDA did not answer in time
MK_NO_GPU = "MK_NO_GPU"  # a GPU profile on a machine with no NVIDIA GPU anywhere
MK_NOT_APPLICABLE = "MK_NOT_APPLICABLE"  # a node probe that needs more GPUs than the node has
MK_NOT_RUN = "MK_NOT_RUN"  # a probe the profile skips (skip_probes) or the run did not select
MK_GPUS_NOT_CERTIFIED = "MK_GPUS_NOT_CERTIFIED"  # cpu profile on a machine with NVIDIA GPUs
MK_NO_CHECKS = "MK_NO_CHECKS"  # nothing passed: a verdict cannot rest on no evidence

# The reason a metric below its floor fails with (DCGM's code for that kind of metric).
FLOOR_REASON = {
    "hbm_copy_gbps": FR_MEMORY_BANDWIDTH,
    "hbm_read_gbps": FR_MEMORY_BANDWIDTH,
    "hbm_write_gbps": FR_MEMORY_BANDWIDTH,
    "cpu_copy_gbps": FR_MEMORY_BANDWIDTH,
    "pcie_h2d_gbps": FR_LOW_BANDWIDTH,
    "pcie_d2h_gbps": FR_LOW_BANDWIDTH,
    "p2p_min_gbps": FR_LOW_BANDWIDTH,
    "nccl_allreduce_busbw_gbps": FR_LOW_BANDWIDTH,
    "pod_allreduce_busbw_gbps": FR_LOW_BANDWIDTH,
    "gemm_bf16_tflops": FR_STRESS_LEVEL,
    "gemm_fp8_tflops": FR_STRESS_LEVEL,
    "sustained_tflops": FR_STRESS_LEVEL,
    "cpu_gemm_gflops": FR_STRESS_LEVEL,
    "cpu_sustained_gflops": FR_STRESS_LEVEL,
    "sustained_tflops_per_w": MK_PERF_PER_WATT,
    "cpu_gflops_per_w": MK_PERF_PER_WATT,
    "mem_pattern_mismatches": FR_FAULTY_MEMORY,
    "throttle_thermal_frac": FR_THROTTLE_THERMAL,
    "throttle_power_frac": FR_THROTTLE_POWER,
    "sm_clock_cv": MK_CLOCK_UNSTABLE,
    "sdc_self_mismatches": MK_SDC,
    "pcie_gen_load": FR_PCIE_GENERATION,
    "pcie_width_load": FR_PCIE_WIDTH,
    "attention_fwd_tflops": FR_STRESS_LEVEL,
    "quant_fp8_rowwise_tflops": FR_STRESS_LEVEL,
    "attention_decode_gbps": FR_MEMORY_BANDWIDTH,
    "quant_w4a16_gbps": FR_MEMORY_BANDWIDTH,
    "custom_allreduce_busbw_gbps": FR_LOW_BANDWIDTH,
    "custom_allreduce_small_busbw_gbps": FR_LOW_BANDWIDTH,
    "attention_fwd_wrong": MK_WRONG_RESULT,
    "attention_decode_wrong": MK_WRONG_RESULT,
    "quant_w4a16_wrong": MK_WRONG_RESULT,
    "quant_fp8_rowwise_wrong": MK_WRONG_RESULT,
    "custom_allreduce_wrong": MK_WRONG_RESULT,
}


# Units of metrics a profile may expect without a floor (the floor's unit wins otherwise).
UNITS = {
    "cpu_energy_j": "J",
    "cpu_power_w": "W",
    "cpu_gflops_per_w": "GFLOP/s/W",
    "sustained_energy_j": "J",
    "sustained_power_w": "W",
}


@dataclass
class Check:
    """One line of the verdict: a named value on a GPU (None: the node) with its status."""

    name: str
    gpu: int | None
    value: float | int | str | None
    unit: str
    status: str
    reason: str
    message: str = ""
    limit: dict[str, Any] = field(default_factory=dict)
    node: str | None = None  # pod certificates: the node the check is about

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.node is None:
            d.pop("node")
        if isinstance(self.value, float):
            d["value"] = round_sig(self.value)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Check:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def round_sig(x: float, digits: int = 6) -> float | None:
    """``x`` to ``digits`` significant figures (None for NaN/inf: JSON has no such numbers)."""
    if x is None or not math.isfinite(x):
        return None
    if x == 0:
        return 0.0
    return float(f"{x:.{digits}g}")


def error_reason_for(message: str) -> str:
    """A reason code for a probe's exception text (OOM, CUDA API errors), else MK_PROBE_ERROR."""
    low = message.lower()
    if "out of memory" in low or "outofmemory" in low:
        return FR_MEMORY_ALLOC
    if "cuda error" in low or "cudaerror" in low or "cublas" in low:
        return FR_CUDA_API
    return MK_PROBE_ERROR


# --------------------------------------------------------------------------------------------
# Limits


def limit_check(
    name: str, gpu: int | None, value: float | None, unit: str, limit: dict[str, Any] | None
) -> Check:
    """A check of ``value`` against ``limit`` ({"min": x} and/or {"max": y}, with sources).

    A missing value errors with ``MK_NO_MEASUREMENT``; one that is no usable number (NaN,
    infinite, a string, a boolean: see :func:`readings.number`) with ``MK_INVALID_READING``."""
    if value is None:
        return Check(name, gpu, None, unit, ERROR, MK_NO_MEASUREMENT, "no value")
    checked, why = number(value)
    if checked is None:
        return Check(name, gpu, None, unit, ERROR, MK_INVALID_READING, f"invalid reading: {why}")
    value = checked if isinstance(value, float) else value
    if not limit or ("min" not in limit and "max" not in limit):
        return Check(name, gpu, value, unit, PASS, MK_NO_LIMIT, "recorded; no limit set")
    shown: dict[str, Any] = {k: limit[k] for k in ("min", "max", "source", "date") if k in limit}
    lo, hi = limit.get("min"), limit.get("max")
    if lo is not None and value < lo:
        reason = limit.get("reason") or FLOOR_REASON.get(name, MK_BELOW_FLOOR)
        msg = f"{_fmt(value)} {unit} is below the floor {_fmt(lo)} {unit}"
        return Check(name, gpu, value, unit, FAIL, reason, msg, shown)
    if hi is not None and value > hi:
        reason = limit.get("reason") or FLOOR_REASON.get(name, MK_ABOVE_LIMIT)
        msg = f"{_fmt(value)} {unit} is above the limit {_fmt(hi)} {unit}"
        return Check(name, gpu, value, unit, FAIL, reason, msg, shown)
    return Check(name, gpu, value, unit, PASS, OK, "", shown)


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def spread_checks(metric: str, unit: str, values: dict[int, float], limit: float) -> list[Check]:
    """Each GPU's value against the node median: more than ``limit`` (a fraction) below fails.

    Needs at least two GPUs (one GPU has nothing to be compared with: no checks).
    """
    if len(values) < 2:
        return []
    med = statistics.median(values.values())
    out = []
    for gpu, v in sorted(values.items()):
        rel = v / med - 1.0 if med > 0 else 0.0
        lim = {"min": -limit, "basis": f"node median {_fmt(med)} {unit}"}
        if rel < -limit:
            msg = f"{_fmt(v)} {unit} is {-rel:.1%} below the node median {_fmt(med)} {unit}"
            out.append(Check(f"spread.{metric}", gpu, rel, "fraction", FAIL, MK_SPREAD, msg, lim))
        else:
            out.append(Check(f"spread.{metric}", gpu, rel, "fraction", PASS, OK, "", lim))
    return out


# --------------------------------------------------------------------------------------------
# Node verdict


@dataclass
class Verdict:
    """The node's verdict ("pass" or "fail"), per-GPU verdicts and counts by status."""

    verdict: str
    counts: dict[str, int]
    gpus: list[dict[str, Any]]
    reasons: list[str]

    @property
    def exit_code(self) -> int:
        """0 pass, 1 a check failed, 3 nothing failed but something could not run (or nothing
        was checked at all)."""
        if self.verdict == PASS:
            return 0
        return 1 if self.counts.get(FAIL) else 3

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def node_verdict(checks: Iterable[Check], gpu_indices: Iterable[int]) -> Verdict:
    """Pass only when no check failed or errored and at least one check passed (skipped checks
    don't count: a run whose every check was skipped, or that has no checks, measured nothing
    and fails with ``MK_NO_CHECKS``)."""
    checks = list(checks)
    counts = {s: 0 for s in STATUSES}
    for c in checks:
        counts[c.status] = counts.get(c.status, 0) + 1
    bad = [c for c in checks if c.status in (FAIL, ERROR)]
    gpus = []
    for i in gpu_indices:
        mine = [c for c in bad if c.gpu == i]
        gpus.append(
            {
                "gpu": i,
                "verdict": FAIL if mine else PASS,
                "reasons": sorted({f"{c.reason} ({c.name})" for c in mine}),
            }
        )
    reasons = sorted({c.reason for c in bad})
    if not bad and not counts[PASS]:
        return Verdict(FAIL, counts, gpus, [MK_NO_CHECKS])
    return Verdict(FAIL if bad else PASS, counts, gpus, reasons)
