"""The comm benchmark's collective specs: bytes and bus factors (nccl-tests' convention), the
expected results against collectives simulated here rank by rank, and checks that catch a
corrupted element."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from millkernels.bench.suites import comm as cb

REDOPS = ("sum", "max", "min", "prod")


@pytest.mark.parametrize(
    ("op", "factor"),
    [
        ("all_reduce", lambda n: 2 * (n - 1) / n),
        ("all_gather", lambda n: (n - 1) / n),
        ("reduce_scatter", lambda n: (n - 1) / n),
        ("all_to_all", lambda n: (n - 1) / n),
        ("broadcast", lambda n: 1.0),
    ],
)
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_bus_factor(op: str, factor, world: int) -> None:
    assert cb.spec(op).bus_factor(world) == pytest.approx(factor(world))


@pytest.mark.parametrize(
    ("op", "counts", "lengths"),
    [  # size 1000 B of 4-byte elements on 3 ranks: (count, S) and (input, output) elements
        ("all_reduce", (250, 1000), (250, 250)),
        ("broadcast", (250, 1000), (250, 250)),
        ("all_gather", (83, 996), (83, 249)),
        ("reduce_scatter", (83, 996), (249, 83)),
        ("all_to_all", (83, 996), (249, 249)),
    ],
)
def test_bytes_and_buffer_lengths(op: str, counts, lengths) -> None:
    coll = cb.spec(op)
    assert coll.counts(1000, 3, 4) == counts
    assert coll.lengths(counts[0], 3) == lengths


def test_unknown_op_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="op: expected one of"):
        cb.spec("gather")
    assert set(cb.OPS) == set(cb.SPECS)


def _simulate(op: str, inputs: list[torch.Tensor], rank: int, count: int, redop: str, root):
    """What rank ``rank`` receives, computed from every rank's input (float64)."""
    stack = torch.stack(inputs)
    reduced = {
        "sum": lambda: stack.sum(0), "max": lambda: stack.amax(0),
        "min": lambda: stack.amin(0), "prod": lambda: stack.prod(0),
    }[redop]  # fmt: skip
    mine = slice(rank * count, (rank + 1) * count)
    if op == "all_reduce":
        return reduced()
    if op == "reduce_scatter":
        return reduced()[mine]
    if op == "all_gather":
        return torch.cat(inputs)
    if op == "all_to_all":
        return torch.cat([x[mine] for x in inputs])
    return inputs[root].clone()


@pytest.mark.parametrize("op", list(cb.OPS))
@pytest.mark.parametrize("redop", REDOPS)
@pytest.mark.parametrize("world", [1, 3, 5])
def test_expected_matches_the_simulated_collective(op: str, redop: str, world: int) -> None:
    coll = cb.spec(op)
    count, root = 37, world - 1
    s = cb.Settings(op=op, redop=redop, root=root)
    n_in, _ = coll.lengths(count, world)
    fill = coll.fill_redop(redop)
    inputs = [cb.known_input(r, n_in, torch.float64, "cpu", 0, fill) for r in range(world)]
    for rank in range(world):
        got = _simulate(op, inputs, rank, count, redop if coll.reduces else "sum", root)
        expected = coll.expected(s, rank, world, count, "cpu")
        assert coll.count_wrong(got, expected) == 0
        bad = got.clone()
        bad[(rank * 7) % bad.numel()] += 1  # one corrupted element is one wrong element
        assert coll.count_wrong(bad, expected) == 1
        bad[-1] = float("nan")
        assert coll.count_wrong(bad, expected) == (1 if bad.numel() == 1 else 2)


def test_check_within_a_bound() -> None:
    expected = torch.arange(1.0, 9.0, dtype=torch.float64)
    got = expected + 0.25
    assert cb.CollSpec.count_wrong(got, expected, 0.5) == 0
    got[3] += 1.0
    assert cb.CollSpec.count_wrong(got, expected, 0.5) == 1
    assert cb.CollSpec.count_wrong(got, expected, torch.full_like(expected, 2.0)) == 0


@pytest.mark.slow
@pytest.mark.parametrize("op", ["all_gather", "all_to_all", "broadcast"])
def test_reduction_flag_does_not_change_a_plain_collective(op: str) -> None:
    """``-o prod`` on a collective without a reduction: inputs and expected results are made
    the same way, so one rank counts no wrong element."""
    cmd = [sys.executable, "-m", "millkernels.bench.suites.comm_cli", "--op", op, "-o", "prod",
           "-b", "64", "-e", "64", "-n", "1", "-w", "0", "--device", "cpu",
           "--format", "json"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    (row,) = json.loads(done.stdout)
    assert row["wrong"] == 0 and row["redop"] == "none"
