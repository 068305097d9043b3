"""Backend selection for the collectives, on a one-rank gloo group in this process: a named
backend, or one MILLKERNELS_BACKEND forces, that cannot serve raises BackendUnavailable with
the reason (never a silent NCCL / gloo fallback); one that can serve runs."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.distributed as dist

from millkernels._native import cuda_unavailable_reason
from millkernels.dispatch import BackendUnavailable
from millkernels.ops import comm
from millkernels.ops.comm import api
from millkernels.ops.comm.capabilities import CommCall, one_shot_limit
from millkernels.ops.comm.quantized import error_bound, group_absmax

pytestmark = pytest.mark.skipif(
    dist.is_initialized(), reason="a process group already exists in this process"
)


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory):
    store = tmp_path_factory.mktemp("comm-store") / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield dist.group.WORLD
    dist.destroy_process_group()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(37)


def _cuda_reason() -> str:
    why = cuda_unavailable_reason()
    if why is None:
        pytest.skip("the CUDA backend can run here; these calls would reach it")
    return why


@pytest.mark.parametrize("forced", ["cuda", "comm=cuda", "attention=reference,comm=cuda"])
def test_forced_cuda_raises_with_the_reason(group, x, monkeypatch, forced):
    why = _cuda_reason()
    monkeypatch.setenv("MILLKERNELS_BACKEND", forced)
    with pytest.raises(BackendUnavailable, match="forced by MILLKERNELS_BACKEND") as err:
        comm.all_reduce(x)
    assert "backend 'cuda' cannot serve comm.all_reduce" in str(err.value)
    assert why in str(err.value)


def test_forced_triton_raises_for_an_exact_all_reduce(group, x, monkeypatch):
    monkeypatch.setenv("MILLKERNELS_BACKEND", "triton")
    with pytest.raises(BackendUnavailable, match="only serve the quantised all-reduce"):
        comm.all_reduce(x)


def test_named_backend_that_cannot_serve_raises(group, x):
    why = _cuda_reason()
    with pytest.raises(BackendUnavailable, match="backend 'cuda' cannot serve") as err:
        comm.all_reduce(x, backend="cuda")
    assert why in str(err.value)
    with pytest.raises(BackendUnavailable, match="only serve the quantised all-reduce"):
        comm.all_reduce(x, backend="triton")
    with pytest.raises(BackendUnavailable, match="backend 'cuda' cannot serve"):
        comm.all_reduce(x, backend="cuda", quant="int8")
    with pytest.raises(ValueError, match="backend: expected 'auto' or one of"):
        comm.all_reduce(x, backend="nccl")


@pytest.mark.parametrize("how", [{"backend": "reference"}, {"env": "comm=reference"}, {}])
def test_backend_that_can_serve_runs(group, x, monkeypatch, how):
    if "env" in how:
        monkeypatch.setenv("MILLKERNELS_BACKEND", how["env"])
    out = comm.all_reduce(x, backend=how.get("backend", "auto"))
    assert torch.equal(out, x)  # one rank: the sum is the input
    out = comm.all_reduce(x, algo="two_shot", backend=how.get("backend", "auto"))
    assert torch.equal(out, x)


def test_quantised_all_reduce_on_a_named_backend(group, triton_device, monkeypatch):
    monkeypatch.delenv("MILLKERNELS_BACKEND", raising=False)
    x = torch.randn(1000, device=triton_device)
    bound = error_bound(group_absmax(x, 1), x.double(), "int8", x.dtype)
    for backend in ("triton", "reference"):
        out = comm.all_reduce(x, quant="int8", backend=backend)
        assert ((out.double() - x.double()).abs() <= bound).all(), backend


@pytest.mark.parametrize(
    "call",
    [
        lambda x: comm.all_gather(x, backend="cuda"),
        lambda x: comm.reduce_scatter(x, backend="cuda"),
        lambda x: comm.all_to_all(x, backend="triton"),
        lambda x: comm.broadcast(x, backend="triton"),
    ],
)
def test_other_collectives_refuse_a_backend_they_lack(group, x, call):
    with pytest.raises(BackendUnavailable, match="cannot serve comm"):
        call(x)


def test_other_collectives_follow_the_environment(group, x, monkeypatch):
    monkeypatch.setenv("MILLKERNELS_BACKEND", "comm=cuda")
    with pytest.raises(BackendUnavailable, match="forced by MILLKERNELS_BACKEND"):
        comm.all_gather(x)
    monkeypatch.setenv("MILLKERNELS_BACKEND", "comm=reference")
    assert torch.equal(comm.all_gather(x), x)
    assert torch.equal(comm.broadcast(x.clone(), backend="reference"), x)


def test_cuda_backend_picks_the_ipc_algorithm_by_size(monkeypatch):
    monkeypatch.delenv("MILLKERNELS_BACKEND", raising=False)

    def resolve(algo, backend, nbytes, device="cuda"):
        call = CommCall(op="all_reduce", device=device, dtype="float32", nbytes=nbytes, world=8,
                        algo=algo)  # fmt: skip
        resolved, asked = api._resolve_exact(backend, call)
        assert resolved == dataclasses.replace(call, algo=resolved.algo)
        return resolved.algo, asked

    big = one_shot_limit(8) + 16
    assert resolve("auto", "cuda", 1024) == ("one_shot", "cuda")
    assert resolve("auto", "cuda", big) == ("two_shot", "cuda")
    assert resolve("auto", "reference", big) == ("nccl", "reference")
    assert resolve("one_shot", "auto", big) == ("one_shot", "cuda")
    assert resolve("one_shot", "auto", big, device="cpu") == ("one_shot", "reference")
    monkeypatch.setenv("MILLKERNELS_BACKEND", "comm=cuda")
    assert resolve("auto", "auto", big) == ("two_shot", "auto")
