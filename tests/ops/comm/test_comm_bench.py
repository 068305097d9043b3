"""The nccl-tests-style benchmark: formulas against known times, the CLI under torchrun
(JSON), usage errors. Rows on 3 gloo ranks: test_comm_collectives (battery_bench)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import comm_workers

from millkernels.bench.suites import comm as bench
from millkernels.bench.suites.comm_cli import comm_bench_main, rank_env


@pytest.mark.parametrize(
    ("op", "world", "factor"),
    [
        ("all_reduce", 8, 1.75),
        ("all_reduce", 2, 1.0),
        ("all_gather", 4, 0.75),
        ("reduce_scatter", 8, 0.875),
        ("all_to_all", 3, 2 / 3),
        ("broadcast", 8, 1.0),
    ],
)
def test_busbw_formula_known_time(op: str, world: int, factor: float) -> None:
    # 1 GB in 10 ms: algbw 100 GB/s (1 GB = 1e9 B), busbw = algbw x factor
    algbw, busbw = bench.bandwidths(op, 10**9, world, 10_000.0)
    assert algbw == pytest.approx(100.0)
    assert busbw == pytest.approx(100.0 * factor)


def test_row_and_table_columns() -> None:
    s = bench.Settings(op="all_reduce", dtype="bfloat16")
    row = bench.make_row(s, 8, 1 << 20, 1 << 19, (50.0, 0), (40.0, 3))
    assert row["algbw"] == pytest.approx((1 << 20) / 50e-6 / 1e9)
    assert row["busbw"] == pytest.approx(row["algbw"] * 1.75)
    assert row["inplace_busbw"] == pytest.approx((1 << 20) / 40e-6 / 1e9 * 1.75)
    for key in ("op", "bytes", "algbw", "busbw", "wrong", "count", "type", "time_us"):
        assert key in row
    table = bench.format_table([row])
    line = next(ln for ln in table.splitlines() if not ln.startswith("#"))
    cols = line.split()
    assert cols[:5] == [str(1 << 20), str(1 << 19), "bfloat16", "sum", "-1"]
    assert float(cols[5]) == 50.0 and float(cols[7]) == pytest.approx(row["busbw"], abs=0.01)
    assert cols[8] == "0" and cols[12] == "3"
    assert "# Out of bounds values : 3 FAILED" in table
    avg = (row["busbw"] + row["inplace_busbw"]) / 2
    assert f"# Avg bus bandwidth    : {avg:.6g}" in table


def test_sizes_and_counts() -> None:
    assert bench.parse_size("1G") == 2**30 and bench.parse_size("8") == 8
    assert bench.size_list(8, 64, 2) == [8, 16, 32, 64]
    assert bench.size_list(100, 300, 1, 100) == [100, 200, 300]
    assert bench.spec("all_gather").counts(1000, 3, 4) == (83, 996)
    assert bench.spec("all_reduce").counts(1000, 3, 4) == (250, 1000)
    with pytest.raises(ValueError):
        bench.size_list(64, 8, 2)


def test_rank_env() -> None:
    assert rank_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}) == (3, 8, 1)
    assert rank_env({"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1"}) == (5, 16, 1)
    assert rank_env({}) is None


@pytest.mark.parametrize(
    "argv",
    [
        ["--op", "gather"],
        ["-b", "1x"],
        ["-b", "64", "-e", "8"],
        ["--op", "all_gather", "--quant", "int8"],
        ["-n", "0"],
    ],
)
def test_usage_errors(argv: list[str]) -> None:
    assert comm_bench_main(argv) == 2


def test_cli_under_torchrun() -> None:
    """`torchrun --nproc-per-node 2 ... --format json`: rows with op/bytes/algbw/busbw/wrong."""
    port = comm_workers.free_port()
    env = dict(os.environ, TRITON_INTERPRET="1")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(port),
        "-m", "millkernels.bench.suites.comm_cli",
        "--device", "cpu", "--op", "all_reduce", "--algo", "two_shot", "-b", "8", "-e", "8K",
        "-f", "32", "-n", "2", "-w", "1", "-d", "bfloat16", "--format", "json",
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads(out.stdout)
    assert [r["bytes"] for r in rows] == [8, 256, 8192]
    for r in rows:
        assert r["op"] == "all_reduce" and r["wrong"] == 0 and r["inplace_wrong"] == 0
        assert r["busbw"] == pytest.approx(r["algbw"] * 1.0)  # 2(n-1)/n = 1 at n = 2
        assert r["world"] == 2 and r["algo"] == "two_shot"
    assert "Avg bus bandwidth" in out.stderr
