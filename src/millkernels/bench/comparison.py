"""The rule that compares benchmark results with a stored baseline (the regression gate of GPU
CI) and what it finds; :mod:`millkernels.bench.compare` runs it and prints the reports.

A benchmark **regresses** when its time grew by more than the threshold *and* by more than
the measured noise: with ``ratio = new / old`` (medians over runs, see
:mod:`millkernels.bench.noise`), ``change = ratio - 1`` and
``noise = noise_factor * (old.spread + new.spread)``, it regresses when
``change > max(threshold, noise)`` and improves when ``change < -max(threshold, noise)``.
A change beyond the threshold but inside the noise is reported as *within noise* and does
not fail. Benchmarks only in the results are *new*; only in the baseline, *missing*.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from millkernels.bench.baseline import Baseline, describe
from millkernels.bench.noise import Key, Measurement, aggregate
from millkernels.bench.rows import Row

EXIT_OK, EXIT_REGRESSED, EXIT_USAGE, EXIT_COULD_NOT_RUN = 0, 1, 2, 3
DEFAULT_MAX_REGRESSION = 0.05

REGRESSION, IMPROVEMENT, WITHIN_NOISE = "regression", "improvement", "within noise"
UNCHANGED, NEW, MISSING = "unchanged", "new", "missing"
#: Statuses listed as "moved", in report order.
MOVED = (REGRESSION, IMPROVEMENT, WITHIN_NOISE)


class ComparisonError(Exception):
    """The results cannot be compared with the baseline (the message says why)."""


def parse_threshold(text: str | float) -> float:
    """A regression threshold as a fraction: ``"5%"`` -> 0.05, ``"0.05"`` -> 0.05.

    A bare number must be a fraction below 1 (``"5"`` is refused: write ``"5%"``).
    Raises ``ValueError`` naming ``max_regression``.
    """
    raw = str(text).strip()
    try:
        value = float(raw[:-1]) / 100.0 if raw.endswith("%") else float(raw)
    except ValueError:
        raise ValueError(f"max_regression: expected e.g. '5%' or 0.05, got {text!r}") from None
    if not raw.endswith("%") and value >= 1:
        raise ValueError(f"max_regression: {text!r} is not a fraction; did you mean '{raw}%'?")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"max_regression: expected a non-negative value, got {text!r}")
    return value


@dataclass(frozen=True)
class Change:
    """One benchmark in a comparison. ``noise`` is the combined relative noise band."""

    key: Key
    status: str
    old: Measurement | None
    new: Measurement | None
    noise: float = 0.0

    @property
    def name(self) -> str:
        return describe(self.key)

    @property
    def ratio(self) -> float | None:
        """new / old time (> 1 is slower)."""
        if self.old is None or self.new is None:
            return None
        return self.new.center_us / self.old.center_us

    @property
    def change(self) -> float | None:
        ratio = self.ratio
        return None if ratio is None else ratio - 1.0


@dataclass
class Comparison:
    """The outcome of comparing one set of results with a baseline."""

    baseline: Baseline
    changes: list[Change]
    threshold: float
    noise_factor: float
    device: str
    runs: int
    warnings: list[str] = field(default_factory=list)

    def with_status(self, *statuses: str) -> list[Change]:
        return [c for c in self.changes if c.status in statuses]

    @property
    def regressions(self) -> list[Change]:
        return self.with_status(REGRESSION)

    @property
    def moved(self) -> list[Change]:
        """Regressions, improvements and changes within the noise, in that order, the largest
        change first within each."""
        order = {s: i for i, s in enumerate(MOVED)}
        found = self.with_status(*MOVED)
        return sorted(found, key=lambda c: (order[c.status], -abs(c.change or 0.0)))

    @property
    def failed(self) -> bool:
        return bool(self.regressions)

    def exit_code(self) -> int:
        return EXIT_REGRESSED if self.failed else EXIT_OK

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in (*MOVED, UNCHANGED, NEW, MISSING)}
        for c in self.changes:
            out[c.status] += 1
        return out


def classify(
    old: Measurement, new: Measurement, threshold: float, noise_factor: float = 1.0
) -> tuple[str, float]:
    """The status of one benchmark and the noise band it was judged with."""
    noise = noise_factor * (old.spread + new.spread)
    change = new.center_us / old.center_us - 1.0
    limit = max(threshold, noise)
    if change > limit:
        return REGRESSION, noise
    if change < -limit:
        return IMPROVEMENT, noise
    if abs(change) > threshold:
        return WITHIN_NOISE, noise
    return UNCHANGED, noise


def compare(
    baseline: Baseline,
    rows: Sequence[Row],
    *,
    max_regression: float = DEFAULT_MAX_REGRESSION,
    noise_factor: float = 1.0,
    ignore_device: bool = False,
) -> Comparison:
    """Compare result ``rows`` (every row of a key is one run) with ``baseline``.

    Raises :class:`ComparisonError` when the rows come from another device than the baseline
    (unless ``ignore_device``), or when no benchmark is in both.
    """
    if max_regression < 0 or noise_factor < 0:
        raise ValueError("max_regression and noise_factor must be >= 0")
    if not rows:
        raise ComparisonError("no benchmark results to compare")
    devices = sorted({r.device for r in rows})
    warnings: list[str] = []
    if baseline.device and any(d != baseline.device for d in devices):
        message = f"the baseline is for {baseline.device!r}, the results are from {devices}"
        if not ignore_device:
            raise ComparisonError(message)
        warnings.append(message + " (compared anyway)")
    if baseline.example:
        warnings.append(
            "the baseline is marked as an EXAMPLE of the format, not a measured reference"
        )
    current = aggregate(rows)
    changes: list[Change] = []
    for key, new in current.items():
        old = baseline.entries.get(key)
        if old is None:
            changes.append(Change(key, NEW, None, new))
            continue
        status, noise = classify(old, new, max_regression, noise_factor)
        changes.append(Change(key, status, old, new, noise))
    for key, old in baseline.entries.items():
        if key not in current:
            changes.append(Change(key, MISSING, old, None))
    if not any(c.old is not None and c.new is not None for c in changes):
        raise ComparisonError(
            f"no benchmark is both in the baseline ({len(baseline.entries)}) and in the results "
            f"({len(current)}); were they run with other sizes (e.g. --quick)?"
        )
    runs = max((m.runs for m in current.values()), default=0)
    return Comparison(
        baseline, changes, max_regression, noise_factor, ", ".join(devices), runs, warnings
    )
