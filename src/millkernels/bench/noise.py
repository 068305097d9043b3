"""How noisy a benchmark is: its time over repeated runs, as a median and a relative spread.

A benchmark measured in ``n`` runs has one median time per run. Its **center** is the median
of those run medians, and its **spread** is the relative half-width of its noise band:

- ``n >= 2``: two standard deviations of the run medians, estimated robustly as
  ``2 * 1.4826 * MAD`` (MAD: the median absolute deviation from the center), over the center.
  Run-to-run noise (clocks, power, placement, other tenants) is what a gate must tolerate, and
  the MAD keeps one odd run out of 3 or more from widening the band (which would hide real
  regressions);
- ``n == 1``: ``(p80 - p20) / (2 * median)`` of that one run's samples: a weaker stand-in, the
  only noise a single run shows.

A comparison (:mod:`millkernels.bench.compare`) calls a change significant only when it exceeds
the sum of both sides' spreads, so a benchmark that wobbles by 3% between runs cannot fail a
5% gate by a 4% wobble, and a steady one is held to the threshold alone.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from millkernels.bench.rows import Row

Key = tuple[str, str, str, str, str]

#: Width of the run-to-run band in standard deviations, and the MAD-to-sigma factor of a
#: normal distribution.
SIGMAS = 2.0
MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class Measurement:
    """One benchmark's time over ``len(runs_us)`` runs (microseconds)."""

    runs_us: tuple[float, ...]
    p20_us: float
    p80_us: float

    def __post_init__(self) -> None:
        if not self.runs_us:
            raise ValueError("runs_us: a measurement needs at least one run")
        if any(not t > 0 for t in self.runs_us):
            raise ValueError(f"runs_us: times must be > 0, got {self.runs_us}")

    @property
    def runs(self) -> int:
        return len(self.runs_us)

    @property
    def center_us(self) -> float:
        """The median of the run medians."""
        return float(statistics.median(self.runs_us))

    @property
    def spread(self) -> float:
        """Relative half-width of the noise band (0.02 means +-2%)."""
        center = self.center_us
        if self.runs >= 2:
            mad = statistics.median(abs(t - center) for t in self.runs_us)
            return SIGMAS * MAD_TO_SIGMA * mad / center
        return max(self.p80_us - self.p20_us, 0.0) / (2.0 * center)

    @classmethod
    def from_rows(cls, rows: Sequence[Row]) -> Measurement:
        """The measurement of one benchmark from its rows, one row per run."""
        if not rows:
            raise ValueError("rows: no rows for this benchmark")
        return cls(
            runs_us=tuple(float(r.median_us) for r in rows),
            p20_us=float(statistics.median(r.p20_us for r in rows)),
            p80_us=float(statistics.median(r.p80_us for r in rows)),
        )


def group(rows: Iterable[Row]) -> dict[Key, list[Row]]:
    """Rows grouped by :meth:`Row.key`, first-seen order; each row of a key is one run."""
    out: dict[Key, list[Row]] = {}
    for r in rows:
        out.setdefault(r.key(), []).append(r)
    return out


def aggregate(rows: Iterable[Row]) -> dict[Key, Measurement]:
    """One :class:`Measurement` per benchmark key of ``rows``."""
    return {key: Measurement.from_rows(rs) for key, rs in group(rows).items()}
