"""Collectives: ``millkernels.ops.comm.all_reduce`` per algorithm (``nccl`` is
``torch.distributed.all_reduce``: the baseline) and with int8 / fp8 quantisation.

Without a launcher this runs on a one-rank process group (NCCL on a GPU, gloo on a CPU): the
times are then the per-call overhead of each path, not link bandwidth. Under ``torchrun``
(``torchrun --nproc-per-node 8 -m pytest benchmarks/pytest_suite/test_bench_comm.py
--benchmark-json=comm-$RANK.json``) every rank runs the same cases in the same order; for
nccl-tests-style bandwidth tables use ``millkernels bench comm``.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist

from millkernels.bench.suites import collectives
from millkernels.bench.suites import comm as comm_bench

GPU = torch.cuda.is_available()
MODULE = "millkernels.ops.comm"
DTYPE = torch.bfloat16 if GPU else torch.float32
DTYPE_NAME = "bf16" if GPU else "fp32"
# The ``collectives`` suite's cases (``millkernels bench``, quick): the baseline's sizes, and
# (algo, quant): NCCL/gloo, the custom one-shot and two-shot algorithms, quantised.
_B, _E, _F = collectives.size_ranges(GPU, quick=True)["base"]
NBYTES = tuple(comm_bench.size_list(comm_bench.parse_size(_B), comm_bench.parse_size(_E), _F))
CASES = (
    ("nccl", None),
    *((algo, None) for algo in collectives.ALGOS),
    *(("auto", q) for q in collectives.QUANTS),
)


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory):
    """The default process group: the launcher's (torchrun's variables), or a one-rank group
    made here and destroyed after the module."""
    if dist.is_available() and dist.is_initialized():
        yield dist.group.WORLD
        return
    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this torch build")
    backend = "nccl" if GPU else "gloo"
    if "WORLD_SIZE" in os.environ:  # torchrun
        if GPU:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    else:
        store = tmp_path_factory.mktemp("comm") / "store"
        dist.init_process_group(backend, init_method=f"file://{store}", rank=0, world_size=1)
    yield dist.group.WORLD
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def custom(group):
    """On a GPU, the group's ``CustomAllReduce`` (what one_shot / two_shot run on), or the
    reason there is none; None on a CPU (there they are torch.distributed algorithms)."""
    if not GPU:
        yield None
        return
    try:
        from millkernels.ops.comm import CustomAllReduce

        ipc = CustomAllReduce(group, max_bytes=max(NBYTES))
    except Exception as exc:  # no extension, an unsupported setup: the IPC cases skip
        yield f"no CustomAllReduce here: {type(exc).__name__}: {exc}"
        return
    yield ipc
    ipc.close()


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1] or 'exact'}")
@pytest.mark.parametrize("nbytes", NBYTES, ids=lambda n: f"{n >> 10}KiB")
def test_all_reduce(mk_bench, mk_family, mk_call, group, custom, device, nbytes, case) -> None:
    comm = mk_family(MODULE, "all_reduce")
    algo, quant = case
    if algo in ("one_shot", "two_shot") and isinstance(custom, str):
        pytest.skip(custom)
    world = dist.get_world_size(group)
    numel = nbytes // torch.tensor([], dtype=DTYPE).element_size()
    # The same seed on every rank (per test id): each rank holds x, so the sum is world * x.
    x = torch.randn(numel, dtype=DTYPE, device=device)
    out = torch.empty_like(x)
    fn = lambda: comm.all_reduce(x, group=group, algo=algo, quant=quant, out=out)
    mk_call(fn)
    exact = x.double() * world
    err = (out.double() - exact).abs().max().item()
    if quant is None:
        rounding = {torch.bfloat16: 2**-8, torch.float32: 2**-23}[DTYPE]
        assert err <= rounding * exact.abs().max().item() * world, f"{algo}: error {err:.3g}"
    else:  # a sanity bound: the family's tests check the stated per-group error bound
        assert err <= 0.25 * world * x.abs().max().item(), f"{quant}: error {err:.3g}"
    mk_bench(
        fn,
        family="comm",
        op="all_reduce",
        shape={"bytes": nbytes, "world": world, "quant": quant or "none"},
        dtype=DTYPE_NAME,
        backend=algo,
        bytes=2 * (world - 1) * nbytes // world or None,
    )  # fmt: skip  (bus bytes)
