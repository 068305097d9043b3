"""Judge :class:`~millkernels.ops.analysis_spec.Expect` evidence against measured metrics.

Each expectation gives one result row ``{metric, op, value, actual, holds, skipped, why,
note}``: ``skipped`` (``note`` says why) when its ``triton`` prefix does not match the Triton
version that compiled the kernel; ``holds`` False with a ``note`` when the metric name is
unknown or the compiled code has no such number (no hot loop, no SASS, not Triton). A result
fails ``--check`` when it is neither skipped nor holds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from millkernels.analyze.report import KernelReport
from millkernels.ops.analysis_spec import Expect

#: Per-iteration fields of the hot loop (``loop.<field>``).
LOOP_FIELDS = (
    "instructions",
    "mma",
    "mma_ratio",
    "barriers",
    "global_loads",
    "shared_loads",
    "async_copies",
    "i2f",
    "mufu",
    "wgmma_min_n",
)
#: Every metric name an Expect may use, besides ``kernel.op.<OPCODE>`` / ``loop.op.<OPCODE>``.
METRICS = frozenset(
    {"registers", "spill_bytes", "shared_bytes", "num_warps", "tma", "loops", "dup_warp_dots"}
    | {f"loop.{f}" for f in LOOP_FIELDS}
)


def known_metric(name: str) -> bool:
    """Whether ``name`` is a metric an Expect may use."""
    for prefix in ("kernel.op.", "loop.op."):
        if name.startswith(prefix):
            return name[len(prefix) :].isidentifier() and name[len(prefix) :].isupper()
    return name in METRICS


def actual_value(name: str, metrics: Mapping[str, float]) -> float | None:
    """The measured value of a known metric, or None when the compiled code has none.

    An opcode count is 0 when the opcode does not occur (in a kernel with SASS; in the hot
    loop when there is one)."""
    if name in metrics:
        return metrics[name]
    if name.startswith("kernel.op.") and "loops" in metrics:
        return 0.0
    if name.startswith("loop.op.") and "loop.instructions" in metrics:
        return 0.0
    return None


def _missing_why(name: str, metrics: Mapping[str, float]) -> str:
    if name.startswith("loop.") and "loops" in metrics:
        return "the SASS has no loop"
    if name == "dup_warp_dots":
        return "measured for Triton kernels only (from the TTGIR)"
    return "not measured for this kernel (no SASS?)"


def evaluate(
    expects: Sequence[Expect], metrics: Mapping[str, float], triton_version: str | None
) -> list[dict[str, Any]]:
    """One result row per expectation (see the module doc)."""
    rows = []
    for e in expects:
        row: dict[str, Any] = {
            "metric": e.metric,
            "op": e.op,
            "value": e.value,
            "actual": None,
            "holds": False,
            "skipped": False,
            "why": e.why,
            "note": "",
        }
        rows.append(row)
        if e.triton is not None and not (triton_version or "").startswith(e.triton):
            row["skipped"] = True
            row["note"] = f"for Triton {e.triton}, compiled with {triton_version or 'none'}"
            continue
        if not known_metric(e.metric):
            row["note"] = f"unknown metric {e.metric!r} (see Expect's docstring)"
            continue
        actual = actual_value(e.metric, metrics)
        if actual is None:
            row["note"] = _missing_why(e.metric, metrics)
            continue
        row["actual"] = actual if math.isfinite(actual) else str(actual)
        row["holds"] = e.holds(actual)
    return rows


def describe(row: Mapping[str, Any]) -> str:
    """One failed (or skipped) result as text: ``loop.mma >= 4 (actual 2): why``."""
    got = row["actual"]
    actual = row["note"] if got is None else f"actual {got if isinstance(got, str) else f'{got:g}'}"
    return f"{row['metric']} {row['op']} {row['value']:g} ({actual}): {row['why']}"


def judge(
    report: KernelReport,
    code_metrics: Mapping[str, float],
    expects: Sequence[Expect],
    triton_version: str | None,
) -> None:
    """Fill ``report.metrics`` (``code_metrics`` from the SASS / TTGIR plus the report's
    registers, spills, shared memory and TMA) and ``report.expect`` (``expects`` judged)."""
    metrics = dict(code_metrics)
    for name in ("registers", "spill_bytes", "shared_bytes"):
        value = getattr(report, name)
        if value is not None:
            metrics[name] = float(value)
    metrics.setdefault("tma", float(report.tma))
    report.metrics = dict(sorted(metrics.items()))
    report.expect = evaluate(expects, report.metrics, triton_version)
