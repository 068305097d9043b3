"""The pytest-benchmark suite: every op family at the cases of the ``millkernels bench``
suites (``millkernels.bench.suites``, their quick sizes), so both front ends time the same.

On a GPU each case is timed in pedantic mode with CUDA events (the timer becomes
``millkernels.bench.gpu_timer.cuda_event_timer`` unless ``--benchmark-timer`` names another)
and L2 zeroed before every round, as ``triton.testing.do_bench`` does. On a CPU the shapes are
tiny and Triton runs under its interpreter, so CI exercises every case quickly; those times
are a smoke test, not a measurement.

Every case checks its result against the family's reference before timing it (so the suite
is also a test with ``--benchmark-disable``). A family whose module is not importable is
skipped with the reason, a backend that cannot serve a case is skipped with the dispatcher's
reason.

Machine info gains a ``millkernels`` entry: device name, SKU slug, clocks, power limit,
driver, versions, git sha and the command (``pytest_benchmark_update_machine_info``).
``--mk-compare BASELINE [--mk-max-regression 5%] [--mk-report-md FILE]`` gates the run on a
baseline with :mod:`millkernels.bench.compare`'s rule (exit 1 on a regression).
"""

from __future__ import annotations

import importlib
import os
import shlex
import sys
import time
import zlib
from collections.abc import Callable
from typing import Any

import pytest
import torch

GPU = torch.cuda.is_available()
if not GPU:  # Triton decides at decoration time: set before any kernel module is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

from millkernels.bench import timing  # noqa: E402
from millkernels.bench.rows import shape_str  # noqa: E402

DEVICE = "cuda" if GPU else "cpu"
GPU_TIMER = "millkernels.bench.gpu_timer.cuda_event_timer"
DEFAULT_TIMER = "time.perf_counter"
#: (rounds, warmup rounds): GPU rounds are cheap (one call plus an L2 flush each).
ROUNDS = {True: (100, 10), False: (3, 1)}
BACKENDS = ("triton", "cuda", "reference")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("millkernels", "millkernels benchmark suite")
    group.addoption("--mk-rounds", type=int, default=None, help="timed rounds per case")
    group.addoption("--mk-warmup-rounds", type=int, default=None, help="untimed rounds first")
    group.addoption(
        "--mk-compare",
        metavar="BASELINE",
        default=None,
        help="compare with a baseline at the end; exit 1 on a regression beyond "
        "--mk-max-regression and the measured noise (millkernels.bench.compare)",
    )
    group.addoption("--mk-max-regression", default="5%", help="threshold for --mk-compare")
    group.addoption("--mk-report-md", default=None, help="markdown report of --mk-compare")


def pytest_configure(config: pytest.Config) -> None:
    if GPU and config.getoption("benchmark_timer", default=None) == DEFAULT_TIMER:
        config.option.benchmark_timer = GPU_TIMER
    baseline = config.getoption("mk_compare", default=None)
    if baseline:
        from millkernels.bench.compare import parse_threshold

        try:
            parse_threshold(config.getoption("mk_max_regression"))
        except ValueError as exc:
            raise pytest.UsageError(f"--mk-max-regression: {exc}") from None
        if not os.path.isfile(baseline):
            raise pytest.UsageError(f"--mk-compare: no such file {baseline}")


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """``--mk-compare``: this run's benchmarks against the baseline (each benchmark's p20..p80
    over its rounds is its noise); a regression makes the session exit 1."""
    config = session.config
    baseline = config.getoption("mk_compare", default=None)
    if not baseline:
        return
    from millkernels.bench.compare import parse_threshold, run_comparison
    from millkernels.bench.results import rows_from_pytest_benchmark

    bs = getattr(config, "_benchmarksession", None)
    if bs is None or not bs.benchmarks:
        print("--mk-compare: no benchmark was timed (--benchmark-disable?): nothing compared")
        session.exitstatus = session.exitstatus or 3
        return
    data = config.hook.pytest_benchmark_generate_json(
        config=config, benchmarks=bs.benchmarks, include_data=False,
        machine_info=bs.get_machine_info(), commit_info={},
    )  # fmt: skip
    print()
    code = run_comparison(
        rows_from_pytest_benchmark(data),
        baseline,
        max_regression=parse_threshold(config.getoption("mk_max_regression")),
        report_md=config.getoption("mk_report_md"),
    )
    if code and not session.exitstatus:
        session.exitstatus = code


def pytest_report_header(config: pytest.Config) -> list[str]:
    timer = config.getoption("benchmark_timer", default="?")
    where = torch.cuda.get_device_name(0) if GPU else "cpu (tiny shapes, Triton interpreter)"
    return [f"millkernels benchmark suite on {where}; timer {timer}"]


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    """Add the GPU (name, SKU, clocks, power limit, driver) and software versions."""
    from millkernels.bench import env
    from millkernels.bench.baseline import sku_slug

    facts = env.environment(DEVICE)
    info: dict[str, Any] = {
        "device": facts.device,
        "sku": sku_slug(facts.device),
        "driver": facts.driver,
        "power_limit_w": facts.power_limit_w,
        "clocks": env.clocks(DEVICE),
        "versions": dict(facts.versions),
        "git_sha": facts.git_sha,
        "command": shlex.join([sys.executable, "-m", "pytest", *config.invocation_params.args]),
        "triton_interpret": os.environ.get("TRITON_INTERPRET", "0") == "1",
    }
    if GPU:
        props = torch.cuda.get_device_properties(0)
        info["gpu_count"] = torch.cuda.device_count()
        info["capability"] = f"{props.major}.{props.minor}"
        info["memory_gib"] = round(props.total_memory / 2**30, 1)
        info["sm_count"] = props.multi_processor_count
    machine_info["millkernels"] = info


@pytest.fixture(autouse=True)
def _seed(request: pytest.FixtureRequest) -> None:
    """Reproducible inputs per case (``MILLKERNELS_TEST_SEED`` varies them)."""
    seed = int(os.environ.get("MILLKERNELS_TEST_SEED", "0"))
    torch.manual_seed((seed * 1_000_003 + zlib.crc32(request.node.nodeid.encode())) % 2**63)


@pytest.fixture
def device() -> str:
    return DEVICE


def family(module: str, *names: str) -> Any:
    """Import an op family's module, or skip the test saying why it is not there; with
    ``names``, also skip when the module lacks one of those public functions."""
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        pytest.skip(f"{module} is not importable here: {exc}")
    missing = [n for n in names if not hasattr(mod, n)]
    if missing:
        pytest.skip(f"{module} has no {', '.join(missing)} yet")
    return mod


def backend_call(fn: Callable[[], Any]) -> Any:
    """``fn()``, skipping the test when the backend it names cannot serve the call."""
    from millkernels.dispatch import BackendUnavailable

    try:
        return fn()
    except BackendUnavailable as exc:
        pytest.skip(f"backend unavailable: {exc}")


_FLUSH: list[Any] = []


def _l2_flush() -> Any:
    """The session's L2 flush (one 256 MiB buffer, made on first use)."""
    if not _FLUSH:
        from millkernels.bench.gpu_timer import L2Flush

        _FLUSH.append(L2Flush())
    return _FLUSH[0]


class MkBench:
    """Times one case with pytest-benchmark and labels it as a millkernels row."""

    def __init__(self, benchmark: Any, config: pytest.Config) -> None:
        self.benchmark = benchmark
        rounds, warmup = ROUNDS[GPU]
        self.rounds = config.getoption("mk_rounds") or rounds
        self.warmup = config.getoption("mk_warmup_rounds")
        self.warmup = warmup if self.warmup is None else self.warmup
        timer = str(config.getoption("benchmark_timer", default=DEFAULT_TIMER))
        self.timer = "cuda_events" if timer == GPU_TIMER else timer

    def __call__(
        self,
        fn: Callable[[], Any],
        *,
        family: str,
        op: str,
        shape: dict[str, Any],
        dtype: str,
        backend: str,
        flops: float | None = None,
        bytes: int | None = None,
    ) -> None:
        """Time ``fn`` (already checked by the caller) and record what it was."""
        b = self.benchmark
        b.group = f"{family}.{op} [{shape_str(shape)}] {dtype}"
        b.extra_info.update(
            family=family, op=op, shape=shape_str(shape), dtype=dtype, backend=backend,
            flops=flops, bytes=bytes,
        )  # fmt: skip
        if GPU:
            if getattr(b, "_timer", None) is time.perf_counter:
                # This conftest was loaded after pytest-benchmark read --benchmark-timer (pytest
                # run on a parent directory): switch this fixture to the CUDA-event timer.
                from millkernels.bench.gpu_timer import cuda_event_timer

                b._timer, self.timer = cuda_event_timer, "cuda_events"
            b.pedantic(fn, setup=_l2_flush(), rounds=self.rounds, warmup_rounds=self.warmup)
        else:
            b.pedantic(fn, rounds=self.rounds, warmup_rounds=self.warmup)
        if b.enabled and b.stats is not None:
            samples = [t * 1e6 for t in b.stats.stats.data]
            t = timing.summarize(samples, self.timer)
            b.extra_info.update(
                median_us=t.median_us, p20_us=t.p20_us, p80_us=t.p80_us, timer=t.method,
                tflops=flops / (t.median_us * 1e-6) / 1e12 if flops else None,
                gbps=bytes / (t.median_us * 1e-6) / 1e9 if bytes else None,
            )  # fmt: skip


@pytest.fixture
def mk_bench(benchmark: Any, request: pytest.FixtureRequest) -> MkBench:
    """``mk_bench(fn, family=..., op=..., shape=..., dtype=..., backend=..., flops=...,
    bytes=...)``: pedantic timing (CUDA events and L2 flushed on a GPU)."""
    return MkBench(benchmark, request.config)


@pytest.fixture
def mk_family() -> Callable[..., Any]:
    """``mk_family("millkernels.ops.attention", "attention")``: the module, or a skip."""
    return family


@pytest.fixture
def mk_call() -> Callable[[Callable[[], Any]], Any]:
    """``mk_call(lambda: op(..., backend=b))``: the result, or a skip when ``b`` cannot serve."""
    return backend_call


def pytest_benchmark_compare_machine_info(
    config: pytest.Config, benchmarksession: Any, machine_info: dict, compared_benchmark: dict
) -> None:
    """Warn loudly when ``--benchmark-compare`` compares results from another GPU or software
    stack (pytest-benchmark's own warning fires on any difference, CPU clock included)."""
    now = machine_info.get("millkernels") or {}
    then = (compared_benchmark.get("machine_info") or {}).get("millkernels") or {}
    for key in ("device", "driver", "power_limit_w", "versions"):
        if now.get(key) != then.get(key):
            benchmarksession.logger.warning(
                f"millkernels: comparing with results whose {key} differs: "
                f"now {now.get(key)!r}, then {then.get(key)!r}"
            )
