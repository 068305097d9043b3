"""What a suite gets: the device, timing, ceilings, checks, and a row builder that fills in
the run's environment (device name, clocks, versions, git sha, the reproducing command)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from millkernels.bench import counts, env
from millkernels.bench.ceilings import Ceiling, measure_ceilings
from millkernels.bench.rows import Row
from millkernels.bench.timing import Timing, measure
from millkernels.ops.autotune import autotune_config  # noqa: F401  (re-exported)

#: Default (rep_ms, warmup_ms) per (gpu, quick).
_BUDGETS = {
    (True, False): (100.0, 25.0),
    (True, True): (40.0, 10.0),
    (False, False): (100.0, 20.0),
    (False, True): (20.0, 5.0),
}


CPU_NOTE = "CPU timing (perf_counter, caches not flushed): a smoke test, not a measurement"


class SuiteUnavailable(Exception):
    """Raised by a suite that cannot run on this machine at all (the message says why)."""


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class BenchContext:
    """Shared state of one benchmark run; suites receive it and yield rows.

    ``options`` carries suite-specific overrides (tests use it for tiny sizes, e.g.
    ``{"probes.nbytes": 65536}``); ``command`` is the command line that reproduces the
    current suite's rows (the runner sets it per suite).
    """

    device: str
    quick: bool = False
    rep_ms: float | None = None
    warmup_ms: float | None = None
    options: dict[str, Any] = field(default_factory=dict)
    command: str = ""
    suite: str = ""
    log: Callable[[str], None] = _stderr
    failures: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def gpu(self) -> bool:
        """True when timing on a CUDA GPU."""
        return self.device != "cpu"

    def option(self, name: str, default: Any) -> Any:
        """``options[name]``, or ``default``."""
        return self.options.get(name, default)

    def measure(
        self, fn: Callable[[], Any], *, cuda_graph: bool = False, rep_ms: float | None = None
    ) -> Timing:
        """Time ``fn`` with this run's budgets (see :func:`millkernels.bench.timing.measure`)."""
        default_rep, default_warmup = _BUDGETS[(self.gpu, self.quick)]
        return measure(
            fn,
            device=self.device,
            rep_ms=rep_ms or self.rep_ms or default_rep,
            warmup_ms=self.warmup_ms if self.warmup_ms is not None else default_warmup,
            cuda_graph=cuda_graph,
        )

    def ceilings(self) -> dict[str, Ceiling]:
        """The device's measured ceilings (measured on first use, then cached)."""
        return measure_ceilings(self.device, self.measure, quick=self.quick)

    def check(self, ok: bool, what: str) -> bool:
        """Record a failed correctness check (the run then exits 1); returns ``ok``."""
        if not ok:
            message = f"{self.suite}: check failed: {what}"
            self.failures.append(message)
            self.log(message)
        return ok

    def skip(self, what: str, reason: str) -> None:
        """Record a case left out, and why."""
        message = f"{self.suite}: skipped {what}: {reason}"
        self.skipped.append(message)
        self.log(message)

    def row(
        self,
        *,
        op: str,
        shape: str | dict[str, Any],
        dtype: str,
        backend: str,
        timing: Timing,
        flops: float | None = None,
        bytes: int | None = None,
        ceiling: str | bool | None = True,
        baseline: str | None = None,
        baseline_timing: Timing | None = None,
        config: dict[str, Any] | str | None = None,
        notes: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Row:
        """A complete row for one timed case.

        ``ceiling``: a ceiling name ("copy", "matmul_bf16", ...), True to pick one (a
        ``matmul_<dtype>`` ceiling for FLOP-counted rows, else ``copy`` for byte-counted
        rows), or False/None for none. ``baseline_timing`` is the baseline measured in the
        same run; the row's ratio is baseline time / this time.
        """
        rate_tflops = counts.tflops(flops, timing.median_us) if flops else None
        rate_gbps = counts.gbps(bytes, timing.median_us) if bytes else None
        name = self._pick_ceiling(ceiling, dtype, rate_tflops, rate_gbps)
        found = self.ceilings().get(name) if name else None
        achieved = rate_tflops if found and found.unit == "TFLOP/s" else rate_gbps
        facts = env.environment(self.device)
        return Row(
            op=op,
            shape=shape,
            dtype=dtype,
            backend=backend,
            median_us=timing.median_us,
            p20_us=timing.p20_us,
            p80_us=timing.p80_us,
            n=timing.n,
            suite=self.suite,
            timer=timing.method,
            flops=flops,
            bytes=bytes,
            tflops=rate_tflops,
            gbps=rate_gbps,
            ceiling=found.name if found else None,
            ceiling_value=found.value if found else None,
            pct_of_ceiling=counts.pct_of(achieved, found.value) if found else None,
            baseline=baseline,
            baseline_us=baseline_timing.median_us if baseline_timing else None,
            ratio_to_baseline=counts.ratio_to_baseline(
                baseline_timing.median_us if baseline_timing else None, timing.median_us
            ),
            config=config,
            device=facts.device,
            clocks=env.clocks(self.device),
            power_limit_w=facts.power_limit_w,
            driver=facts.driver,
            versions=dict(facts.versions),
            git_sha=facts.git_sha,
            command=self.command,
            timestamp=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            notes=notes if notes is not None or self.gpu else CPU_NOTE,
            extra=dict(extra or {}),
        )

    @staticmethod
    def _pick_ceiling(
        ceiling: str | bool | None, dtype: str, rate_tflops: float | None, rate_gbps: float | None
    ) -> str | None:
        if isinstance(ceiling, str):
            return ceiling
        if not ceiling:
            return None
        if rate_tflops is not None:
            return f"matmul_{dtype}"
        return "copy" if rate_gbps is not None else None
