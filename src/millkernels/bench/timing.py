"""Timing a callable: median and p20/p80 in microseconds.

On a GPU this wraps ``triton.testing.do_bench``, asking for every sample
(``return_mode="all"``) so that median, p20, p80 and the sample count all come from one
place. In Triton 3.6 and 3.9 alike, ``do_bench`` times each call with CUDA events and zeroes
a 256 MiB buffer before every timed call, so each sample starts with a cold L2 (the warm-up
calls are not flushed). ``do_bench_cudagraph`` (the ``cuda_graph=True`` option, for small
calls whose launch cost would dominate) captures many calls in one graph and times ten
replays; it does not flush L2, and each of its samples is the mean of one replay.

On a CPU, a ``time.perf_counter`` loop: one untimed call, a warm-up of ``warmup_ms``, then
samples of one call each (or of a small batch when one call is too short to time alone).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

#: A CPU sample shorter than this is timed as a batch of calls, averaged.
MIN_CPU_SAMPLE_S = 50e-6
MIN_CPU_SAMPLES = 3
MAX_CPU_SAMPLES = 10_000
MAX_WARMUP_CALLS = 10_000
MAX_CPU_BATCH = 1_000


@dataclass(frozen=True)
class Timing:
    """Summary of one measurement: median, 20th and 80th percentile (us), sample count."""

    median_us: float
    p20_us: float
    p80_us: float
    n: int
    method: str = "perf_counter"

    @property
    def spread(self) -> float:
        """(p80 - p20) / median: the relative noise of this measurement."""
        return (self.p80_us - self.p20_us) / self.median_us if self.median_us else math.inf


def quantile(samples: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``samples``, interpolating linearly between ranks."""
    if not samples:
        raise ValueError("quantile of no samples")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q: expected 0 <= q <= 1, got {q}")
    ordered = sorted(samples)
    pos = (len(ordered) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    frac = pos - lo
    return ordered[lo] + (ordered[hi] - ordered[lo]) * frac


def summarize(samples_us: Sequence[float], method: str) -> Timing:
    """Reduce raw samples (us) to a :class:`Timing`."""
    return Timing(
        median_us=quantile(samples_us, 0.5),
        p20_us=quantile(samples_us, 0.2),
        p80_us=quantile(samples_us, 0.8),
        n=len(samples_us),
        method=method,
    )


def measure(
    fn: Callable[[], Any],
    *,
    device: str,
    rep_ms: float = 100.0,
    warmup_ms: float = 25.0,
    cuda_graph: bool = False,
) -> Timing:
    """Time ``fn()`` on ``device`` ("cpu", or "cuda"/"cuda:N" for the current GPU).

    ``rep_ms`` and ``warmup_ms`` are time budgets, as in ``triton.testing.do_bench``.
    ``cuda_graph`` replays a CUDA graph of the calls (GPU only; L2 is not flushed).
    """
    if rep_ms <= 0 or warmup_ms < 0:
        raise ValueError(f"rep_ms must be > 0 and warmup_ms >= 0, got {rep_ms}, {warmup_ms}")
    if device == "cpu":
        if cuda_graph:
            raise ValueError("cuda_graph=True needs a GPU device")
        return _measure_cpu(fn, rep_ms=rep_ms, warmup_ms=warmup_ms)
    if not device.startswith("cuda"):
        raise ValueError(f"device: expected 'cpu' or 'cuda', got {device!r}")
    return _measure_gpu(fn, rep_ms=rep_ms, warmup_ms=warmup_ms, cuda_graph=cuda_graph)


def _measure_gpu(fn: Callable[[], Any], *, rep_ms: float, warmup_ms: float, cuda_graph: bool):
    import triton.testing

    if cuda_graph:
        ms = triton.testing.do_bench_cudagraph(fn, rep=rep_ms, return_mode="all")
        method = "do_bench_cudagraph"
    else:
        ms = triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="all")
        method = "do_bench"
    return summarize([float(t) * 1e3 for t in ms], method)


def _measure_cpu(fn: Callable[[], Any], *, rep_ms: float, warmup_ms: float) -> Timing:
    fn()  # first call: allocation, compilation, caches
    start = time.perf_counter()
    calls, elapsed = 0, 0.0
    while calls < MAX_WARMUP_CALLS:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed * 1e3 >= warmup_ms:
            break
    per_call = elapsed / calls
    batch = 1
    if per_call < MIN_CPU_SAMPLE_S:
        batch = min(math.ceil(MIN_CPU_SAMPLE_S / max(per_call, 1e-9)), MAX_CPU_BATCH)
    wanted = int(rep_ms * 1e-3 / max(per_call * batch, 1e-9))
    n = min(max(wanted, MIN_CPU_SAMPLES), MAX_CPU_SAMPLES)
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        for _ in range(batch):
            fn()
        samples.append((time.perf_counter() - t0) / batch * 1e6)
    return summarize(samples, "perf_counter")
