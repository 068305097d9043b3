"""Raw readings to numbers, in one place.

A probe writes its measurements as JSON, and NVML gives whatever the driver returns; either can
hold a string, a boolean, NaN, a negative count or an integer too big for a float. Everything
that compares, plots or exports a raw reading goes through :func:`number` (one value) or
:func:`probe_readings` (a probe record), so a bad value becomes a stated problem instead of a
``TypeError``, ``KeyError`` or ``OverflowError`` later, and never a pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# Above any real reading: 80 GB of mismatching 4-byte words is 2e10, a day at 1 kW is 8.6e7 J.
MAX_READING = 1e15
# Metric name endings with a narrower range than "finite and not negative".
_FRACTION_SUFFIXES = ("_frac",)  # shares of samples or time: 0..1
_COUNT_SUFFIXES = ("_mismatches", "_wrong")  # counts: whole numbers


@dataclass(frozen=True)
class Reading:
    """One probe measurement: ``value`` is a finite float, or None with ``problem`` saying why."""

    metric: str
    gpu: int | None
    value: float | None
    unit: str
    problem: str | None = None


def _show(raw: Any) -> str:
    text = repr(raw)
    return text if len(text) <= 40 else text[:37] + "..."


def number(
    raw: Any, *, nonneg: bool = False, at_most: float | None = None, whole: bool = False
) -> tuple[float | None, str | None]:
    """``(value, None)`` for a usable reading, else ``(None, why)``.

    Usable: a JSON number (``int`` or ``float``, not ``bool``) that is finite, at most
    ``MAX_READING`` in size, not negative when ``nonneg``, at most ``at_most`` when given, and
    a whole number when ``whole``.
    """
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        kind = "missing" if raw is None else f"{type(raw).__name__} {_show(raw)}"
        return None, f"{kind}, not a number"
    try:
        x = float(raw)
    except OverflowError:
        return None, f"{_show(raw)} is too large for a float"
    if math.isnan(x):
        return None, "NaN"
    if math.isinf(x) or abs(x) > MAX_READING:
        return None, f"{_show(raw)} is out of any plausible range"
    if nonneg and x < 0:
        return None, f"{_show(raw)} is negative, which this reading cannot be"
    if at_most is not None and x > at_most:
        return None, f"{_show(raw)} is above {at_most:g}, which this reading cannot be"
    if whole and not x.is_integer():
        return None, f"{_show(raw)} is not a whole number (a count)"
    return x, None


def metric_number(metric: str, raw: Any) -> tuple[float | None, str | None]:
    """:func:`number` with the range of probe metric ``metric``: every probe metric is zero or
    more; fractions are at most 1; mismatch and wrong-element counts are whole numbers."""
    return number(
        raw,
        nonneg=True,
        at_most=1.0 if metric.endswith(_FRACTION_SUFFIXES) else None,
        whole=metric.endswith(_COUNT_SUFFIXES),
    )


def probe_readings(record: dict[str, Any]) -> tuple[list[Reading], list[str]]:
    """The measurements of a probe record, each checked; and problems with entries that cannot
    be tied to a metric (not a list, not an object, no metric name, a GPU that is no index)."""
    raw = record.get("measurements", [])
    if not isinstance(raw, list):
        return [], [f"'measurements' is {type(raw).__name__}, not a list"]
    out: list[Reading] = []
    problems: list[str] = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            problems.append(f"measurement {i} is {type(m).__name__} {_show(m)}, not an object")
            continue
        metric = m.get("metric")
        if not isinstance(metric, str) or not metric:
            problems.append(f"measurement {i} has no metric name ({_show(metric)})")
            continue
        gpu = m.get("gpu")
        if gpu is not None and (isinstance(gpu, bool) or not isinstance(gpu, int)):
            problems.append(f"{metric}: 'gpu' is {_show(gpu)}, not a GPU index")
            continue
        unit = m.get("unit")
        unit = unit if isinstance(unit, str) else ""
        if "value" not in m:
            out.append(Reading(metric, gpu, None, unit, "no 'value' in the measurement"))
            continue
        value, why = metric_number(metric, m["value"])
        out.append(Reading(metric, gpu, value, unit, why))
    return out, problems
