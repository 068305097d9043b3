"""The pytest-benchmark suite in ``benchmarks/pytest_suite``: its machine info, the rows its
JSON turns into, skipping of absent families, and the CUDA-event timer's arithmetic."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from millkernels.bench import compare as cmp
from millkernels.bench.baseline import Baseline
from millkernels.bench.gpu_timer import CudaStamp
from millkernels.bench.results import load_rows
from millkernels.bench.suites import attention as attention_suite
from millkernels.bench.suites import collectives
from millkernels.bench.suites import comm as comm_bench
from millkernels.bench.suites import decode as decode_suite
from millkernels.bench.suites import probes as probes_suite
from millkernels.bench.suites import quant as quant_suite

ROOT = Path(__file__).resolve().parents[2]
SUITE = ROOT / "benchmarks" / "pytest_suite"


@pytest.fixture(scope="module")
def suite_conftest():
    spec = importlib.util.spec_from_file_location("mk_pytest_suite_conftest", SUITE / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_suite_json_rows_and_machine_info(tmp_path: Path) -> None:
    out = tmp_path / "pb.json"
    cmd = [sys.executable, "-m", "pytest", str(SUITE / "test_bench_probes.py"), "-q",
           "-p", "no:cacheprovider", "-k", "mem_copy or mem_write", "--mk-rounds", "3",
           f"--benchmark-json={out}"]  # fmt: skip
    # CPU mode, and none of this run's pytest-xdist worker variables (the inner run is serial).
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads(out.read_text())
    info = data["machine_info"]["millkernels"]
    assert info["device"] == "cpu" and info["sku"] == "cpu" and info["triton_interpret"]
    assert {"torch", "triton", "millkernels"} <= set(info["versions"])
    assert {"driver", "power_limit_w", "clocks", "git_sha", "command"} <= set(info)
    assert "--benchmark-json" in info["command"]
    rows = load_rows(out)
    keys = {r.key() for r in rows}
    size = f"bytes={probes_suite.buffer_bytes(gpu=False, quick=True)}"
    assert ("pytest.probes", "mem_copy", size, "u32", "reference") in keys
    assert ("pytest.probes", "mem_write", size, "u32", "torch") in keys
    for r in rows:
        assert r.n == 3 and r.p20_us <= r.median_us <= r.p80_us and r.gbps > 0
        assert r.timer == "time.perf_counter" and r.device == "cpu"
    result = cmp.compare(Baseline.from_rows(rows), rows)
    assert not result.failed and len(result.changes) == len(keys)

    # --mk-compare: the same cases against a baseline 10^4 x faster than this run fail the run
    # (the noise band is the runs' relative spread: on a loaded machine one stalled round of
    # three can stretch it past 100x, never past 10^4x).
    fast = [dataclasses.replace(r, median_us=r.median_us / 1e4, p20_us=r.p20_us / 1e4,
                                p80_us=r.p80_us / 1e4) for r in rows]  # fmt: skip
    Baseline.from_rows(fast).save(tmp_path / "fast.json")
    md = tmp_path / "report.md"
    gate = [*cmd[:-1], "--mk-compare", str(tmp_path / "fast.json"), "--mk-report-md", str(md)]
    done = subprocess.run(gate, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "FAILED" in done.stdout and md.read_text().count("| **regression**") == len(keys)


def _suite_module(name: str):
    """One of the pytest suite's test modules, imported by path (it is not a package)."""
    spec = importlib.util.spec_from_file_location(f"mk_pytest_suite_{name}", SUITE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cases_come_from_the_bench_suites() -> None:
    """The pytest-benchmark suite times what ``millkernels bench --quick`` times on this
    machine: its parameter lists are built from the suites' case lists, not kept apart."""
    probes = _suite_module("test_bench_probes")
    gpu = bool(probes.GPU)
    attention = _suite_module("test_bench_attention")
    assert [(b, s, hq, d) for b, s, hq, hk, d, _ in attention.FWD_SHAPES] == [
        shape for shape in attention_suite.shapes(gpu, True) for _ in attention_suite.causals(gpu)
    ]
    assert {c for *_, c in attention.FWD_SHAPES} == set(attention_suite.causals(gpu))
    assert all(hq == hk for _, _, hq, hk, _, _ in attention.FWD_SHAPES)
    assert attention.BWD_SHAPES == attention.FWD_SHAPES
    decode = [(b, ctx, blk) for b, _, _, _, ctx, blk in attention.DECODE_SHAPES]
    assert decode == list(decode_suite.shapes(gpu, True))
    assert {s[1:4] for s in attention.DECODE_SHAPES} == {
        (*decode_suite.heads(gpu), decode_suite.HEAD_DIM)
    }
    quant = _suite_module("test_bench_quant")
    assert {(n, k) for _, _, n, k in quant.CASES} == {s[2:] for s in quant_suite.shapes(gpu, True)}
    assert {m for _, m, _, _ in quant.CASES} == set(quant_suite.batch_sizes(gpu, True))
    assert {s for s, *_ in quant.CASES} == set(quant_suite.SCHEMES) <= set(quant.MIN_SQNR)
    assert len(probes.NBYTES) == 1 and probes.NBYTES[0] == probes_suite.buffer_bytes(gpu, True)
    comm = _suite_module("test_bench_comm")
    b, e, f = collectives.size_ranges(gpu, True)["base"]
    assert list(comm.NBYTES) == comm_bench.size_list(
        comm_bench.parse_size(b), comm_bench.parse_size(e), f
    )
    assert {a for a, q in comm.CASES if q is None} == {"nccl", *collectives.ALGOS}
    assert {q for _, q in comm.CASES if q} == set(collectives.QUANTS)


def test_family_skips_with_reason(suite_conftest) -> None:
    with pytest.raises(pytest.skip.Exception, match="not importable"):
        suite_conftest.family("millkernels.ops.no_such_family")
    with pytest.raises(pytest.skip.Exception, match="has no no_such_op"):
        suite_conftest.family("millkernels.ops.probes", "mem_copy", "no_such_op")
    assert suite_conftest.family("millkernels.ops.probes", "mem_copy").mem_copy


def test_backend_call_skips_unavailable_backends(suite_conftest) -> None:
    from millkernels.dispatch import BackendUnavailable

    def refuse():
        raise BackendUnavailable("cuda: no GPU")

    with pytest.raises(pytest.skip.Exception, match="no GPU"):
        suite_conftest.backend_call(refuse)
    assert suite_conftest.backend_call(lambda: 7) == 7


def test_machine_info_hook(suite_conftest) -> None:
    class Config:
        class invocation_params:  # mimics pytest.Config
            args = ("benchmarks/pytest_suite", "-q")

    info: dict = {"cpu": {}}
    suite_conftest.pytest_benchmark_update_machine_info(Config, info)
    mk = info["millkernels"]
    assert mk["device"] == suite_conftest.DEVICE and mk["command"].endswith("pytest_suite -q")


class _FakeEvent:
    """Stands in for torch.cuda.Event: a GPU timestamp in ms, and whether it was waited on."""

    def __init__(self, ms: float) -> None:
        self.ms, self.synced = ms, False

    def synchronize(self) -> None:
        self.synced = True

    def elapsed_time(self, end: _FakeEvent) -> float:
        return end.ms - self.ms


def test_cuda_stamp_subtracts_on_the_gpu_clock() -> None:
    start, end = CudaStamp(_FakeEvent(10.0)), CudaStamp(_FakeEvent(10.25))
    assert end - start == pytest.approx(250e-6)
    assert end.event.synced and not start.event.synced  # waits for the later event only
    with pytest.raises(TypeError):
        _ = end - 1.0
