"""Every op and algo on the CPU (gloo; groups of 2, 3 and 4 processes) against references:
in and out of place, sizes 1, 7 and 1,000,003, identical results on every rank, quantised
all-reduce within its stated bound for int8 and fp8; bad input (2 ranks) and the benchmark's
rows (3 ranks).

Starting a process costs seconds on 2 cores, so one spawned world of 4 processes runs every
check: on the sub-group of ranks {0, 1}, then {0, 1, 2}, then all 4 (comm_workers.battery_*).
A failing check is reported by name with its traceback."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import comm_workers

# The 1M-element quantised cases cost seconds per rank under the interpreter: spread them.
_BIG_QUANT = "2:int8,fp8;3:int8;4:"
_PLAN = "+".join(
    [
        "battery_main@2",
        "battery_errors@2",
        "battery_main@3",
        "battery_bench@3",
        "battery_main@4",
    ]
)


@pytest.fixture(scope="module")
def results() -> dict:
    return comm_workers.run_group(4, _PLAN, timeout_s=400, env={"COMM_TEST_BIG_QUANT": _BIG_QUANT})


def _failures(res: dict) -> str:
    bad = {k: v for k, v in res.items() if any(v)}
    if not bad:
        return ""
    lines = [f"{len(bad)} of {len(res)} checks failed: {sorted(bad)}"]
    for name, errs in list(bad.items())[:3]:
        rank = next(r for r, e in enumerate(errs) if e)
        lines.append(f"--- {name} (rank {rank}):\n{errs[rank]}")
    return "\n".join(lines)


@pytest.mark.parametrize("world", [2, 3, 4])
def test_collectives_match_reference(results: dict, world: int) -> None:
    res = {
        k.removeprefix(f"w{world} "): v for k, v in results.items() if k.startswith(f"w{world} ")
    }
    assert "battery crashed" not in res, res["battery crashed"]
    must = [
        "all_reduce exact one_shot n=1",
        "all_reduce exact two_shot n=7",
        "all_reduce exact nccl n=1000003",
        "all_reduce random two_shot n=1000003",
        "all_reduce quant=int8 torch.float32 n=7",
        "all_reduce quant=fp8 torch.bfloat16 n=1",
        "all_gather n=1000003",
        "broadcast n=7",
        f"reduce_scatter n={1_000_003 // world}x{world}",
        f"all_to_all n={1_000_003 // world}x{world}",
    ]
    big = dict(item.split(":") for item in _BIG_QUANT.split(";"))[str(world)]
    must += [f"all_reduce quant={q} torch.bfloat16 n=1000003" for q in big.split(",") if q]
    if world == 2:  # bad input: local errors, debug mode across ranks, the custom path's limits
        must += [
            "local errors",
            "custom path limits",
            "debug mode: differing shapes, dtypes, options",
            "forced backend that cannot serve",
        ]
    if world == 3:  # the benchmark: every op, #wrong 0, busbw = algbw x factor, wrong detected
        must += [
            "bench all_reduce float",
            "bench broadcast bfloat16",
            "bench all_to_all float",
            "bench quant int8",
            "bench quant fp8",
            "bench counts wrong results",
        ]
    missing = [m for m in must if m not in res]
    assert not missing, f"checks did not run: {missing}"
    assert not _failures(res), _failures(res)
