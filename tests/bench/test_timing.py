"""Timing statistics on a fake clock: no test here depends on how fast this machine is."""

from __future__ import annotations

import time

import pytest

from millkernels.bench import timing
from millkernels.bench.timing import Timing, measure, quantile, summarize


def test_quantile_interpolates_between_ranks() -> None:
    data = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert quantile(data, 0.5) == 3.0
    assert quantile(data, 0.0) == 1.0
    assert quantile(data, 1.0) == 5.0
    assert quantile(data, 0.2) == pytest.approx(1.8)  # position 0.8 between 1 and 2
    assert quantile([10.0, 20.0], 0.5) == 15.0
    assert quantile([7.0], 0.8) == 7.0
    with pytest.raises(ValueError):
        quantile([], 0.5)
    with pytest.raises(ValueError):
        quantile([1.0], 1.5)


def test_summarize() -> None:
    t = summarize([float(x) for x in range(1, 11)], "fake")
    assert (t.median_us, t.p20_us, t.p80_us, t.n, t.method) == (5.5, 2.8, 8.2, 10, "fake")
    assert t.spread == pytest.approx((8.2 - 2.8) / 5.5)


class FakeClock:
    """perf_counter that only moves when the timed function runs."""

    def __init__(self, durations_s: list[float]) -> None:
        self.now = 1000.0
        self.durations = durations_s
        self.calls = 0

    def perf_counter(self) -> float:
        return self.now

    def fn(self) -> None:
        self.now += self.durations[self.calls % len(self.durations)]
        self.calls += 1


def test_cpu_measure_on_fake_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each call takes 1 ms, except every fifth, which takes 3 ms.
    clock = FakeClock([1e-3, 1e-3, 1e-3, 1e-3, 3e-3])
    monkeypatch.setattr(time, "perf_counter", clock.perf_counter)
    t = measure(clock.fn, device="cpu", rep_ms=50.6, warmup_ms=9.5)
    assert t.method == "perf_counter"
    # 1 untimed call, then warm-up until 9.5 ms have passed: 8 calls (7 x 1 ms + 1 x 3 ms)
    # -> 1.25 ms per call -> int(50.6 ms / 1.25 ms) = 40 samples of one call each
    assert t.n == 40
    assert clock.calls == 1 + 8 + 40
    # Calls 9..48 are timed; 8 of them (index % 5 == 4) take 3 ms. Sorted: 32 x 1 ms, 8 x 3 ms.
    assert t.median_us == pytest.approx(1000.0)
    assert t.p20_us == pytest.approx(1000.0)
    # p80 sits at position 0.8 * 39 = 31.2: between 1 ms and 3 ms -> 1.4 ms
    assert t.p80_us == pytest.approx(1400.0)


def test_cpu_measure_batches_short_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock([1e-6])  # 1 us per call: too short to time alone
    monkeypatch.setattr(time, "perf_counter", clock.perf_counter)
    t = measure(clock.fn, device="cpu", rep_ms=1.0, warmup_ms=0.1)
    assert t.median_us == pytest.approx(1.0)
    assert t.n >= timing.MIN_CPU_SAMPLES
    timed_calls = clock.calls - 1 - 100  # minus the untimed call and the 0.1 ms warm-up
    assert timed_calls >= t.n * timing.MIN_CPU_SAMPLE_S / 1e-6 - t.n  # batches of ~50 calls


def test_cpu_measure_minimum_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock([0.5])  # a slow call: the budget allows less than one
    monkeypatch.setattr(time, "perf_counter", clock.perf_counter)
    t = measure(clock.fn, device="cpu", rep_ms=10.0, warmup_ms=1.0)
    assert t.n == timing.MIN_CPU_SAMPLES
    assert t.median_us == pytest.approx(5e5)


def test_measure_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        measure(lambda: None, device="cpu", rep_ms=0)
    with pytest.raises(ValueError):
        measure(lambda: None, device="cpu", cuda_graph=True)
    with pytest.raises(ValueError):
        measure(lambda: None, device="tpu")


def test_measure_cpu_real_clock_smoke() -> None:
    t = measure(lambda: sum(range(100)), device="cpu", rep_ms=2.0, warmup_ms=0.5)
    assert isinstance(t, Timing)
    assert t.n >= timing.MIN_CPU_SAMPLES
    assert 0 < t.p20_us <= t.median_us <= t.p80_us


@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_measure_gpu(cuda_graph: bool) -> None:
    import torch

    x = torch.randn(1 << 20, device="cuda")
    y = torch.empty_like(x)
    t = measure(lambda: y.copy_(x), device="cuda", rep_ms=20.0, cuda_graph=cuda_graph)
    assert t.method == ("do_bench_cudagraph" if cuda_graph else "do_bench")
    assert t.n >= 1
    assert 0 < t.p20_us <= t.median_us <= t.p80_us
