"""``millkernels bench comm`` passes nccl-tests' flags through to the comm benchmark."""

import json
import subprocess
import sys
from pathlib import Path

MILLKERNELS = Path(sys.executable).with_name("millkernels")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(MILLKERNELS), "bench", *args], capture_output=True, text=True, timeout=300
    )


def test_bench_comm_takes_nccl_tests_flags_on_one_cpu_rank():
    r = _run(
        "comm",
        "--op",
        "all_reduce",
        "-b",
        "8",
        "-e",
        "64",
        "-f",
        "2",
        "-n",
        "2",
        "-w",
        "1",
        "--format",
        "json",
    )
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout[: r.stdout.rindex("]") + 1])
    assert [row["bytes"] for row in rows] == [8, 16, 32, 64]
    for row in rows:
        assert row["op"] == "all_reduce" and row["wrong"] == 0
        assert row["algbw"] > 0 and row["busbw"] == 0  # one rank: 2(n-1)/n = 0


def test_other_suites_reject_unknown_flags():
    r = _run("probes", "-b", "8")
    assert r.returncode == 2 and "unexpected arguments" in r.stderr
