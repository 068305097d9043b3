"""GPU-side plumbing exercised without a GPU: do_bench's arguments and units, NVML lookups
through a fake pynvml, and the fp8/bf16 ceiling products (torch runs them on the CPU too)."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from millkernels.bench import ceilings, env, timing


def test_gpu_timing_asks_for_every_sample_in_ms(monkeypatch: pytest.MonkeyPatch) -> None:
    import triton.testing

    calls = {}

    def fake_do_bench(fn, warmup, rep, return_mode):
        calls["do_bench"] = (warmup, rep, return_mode)
        return [0.010, 0.012, 0.011, 0.013, 0.014]  # ms

    def fake_graph(fn, rep, return_mode):
        calls["graph"] = (rep, return_mode)
        return [0.002] * 10

    monkeypatch.setattr(triton.testing, "do_bench", fake_do_bench)
    monkeypatch.setattr(triton.testing, "do_bench_cudagraph", fake_graph)
    t = timing.measure(lambda: None, device="cuda", rep_ms=50.0, warmup_ms=5.0)
    assert calls["do_bench"] == (5.0, 50.0, "all")
    assert (t.method, t.n) == ("do_bench", 5)
    assert t.median_us == pytest.approx(12.0)
    assert t.p20_us == pytest.approx(10.8) and t.p80_us == pytest.approx(13.2)
    g = timing.measure(lambda: None, device="cuda:0", rep_ms=20.0, cuda_graph=True)
    assert calls["graph"] == (20.0, "all")
    assert (g.method, g.n, g.median_us) == ("do_bench_cudagraph", 10, pytest.approx(2.0))


class FakeNvml(types.ModuleType):
    NVML_CLOCK_SM, NVML_CLOCK_MEM = 0, 2

    def __init__(self) -> None:
        super().__init__("pynvml")
        self.asked: list[str] = []

    def nvmlInit(self) -> None:
        pass

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> str:
        self.asked.append(uuid)
        if uuid != "GPU-1234-abcd":
            raise RuntimeError("NVML_ERROR_NOT_FOUND")
        return "handle0"

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: str) -> int:
        return 700_000  # mW

    def nvmlSystemGetDriverVersion(self) -> bytes:
        return b"580.159.04"

    def nvmlDeviceGetClockInfo(self, handle: str, which: int) -> int:
        return {0: 1980, 2: 2619}[which]

    def nvmlDeviceGetMaxClockInfo(self, handle: str, which: int) -> int:
        return 1980

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: str) -> int:
        return 0x4


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    nv = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    props = types.SimpleNamespace(uuid="1234-abcd")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: "NVIDIA H100 80GB HBM3")
    for cached in (env._pynvml, env._nvml_handle, env.environment):
        cached.cache_clear()
    yield nv
    for cached in (env._pynvml, env._nvml_handle, env.environment):
        cached.cache_clear()


def test_nvml_facts_through_fake_pynvml(fake_gpu: FakeNvml) -> None:
    facts = env.environment("cuda")
    assert facts.device == "NVIDIA H100 80GB HBM3"
    assert facts.power_limit_w == 700.0
    assert facts.driver == "580.159.04"
    assert env.clocks("cuda") == {
        "sm_mhz": 1980, "mem_mhz": 2619, "sm_max_mhz": 1980, "event_reasons": 4,
    }  # fmt: skip
    assert fake_gpu.asked == ["1234-abcd", "GPU-1234-abcd"]  # torch's uuid lacks the prefix


def test_missing_nvml_never_fails(fake_gpu: FakeNvml, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    env._pynvml.cache_clear()
    env._nvml_handle.cache_clear()
    facts = env.environment("cuda")
    assert facts.device == "NVIDIA H100 80GB HBM3"
    assert facts.power_limit_w is None and facts.driver is None
    assert env.clocks("cuda") is None


def test_git_sha_override(monkeypatch: pytest.MonkeyPatch) -> None:
    env.git_sha.cache_clear()
    monkeypatch.setenv(env.GIT_SHA_ENV, "abc123")
    assert env.git_sha() == "abc123"
    env.git_sha.cache_clear()
    monkeypatch.delenv(env.GIT_SHA_ENV)
    assert env.git_sha()  # a sha from the checkout, or "unknown"
    env.git_sha.cache_clear()


@pytest.mark.parametrize("dtype", ["fp8", "bf16", "fp32"])
def test_ceiling_products_compute_a_matmul(dtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The timed products are real matmuls of the right shape (fp8: B column-major)."""
    seen = []
    real = ceilings._operands
    monkeypatch.setattr(ceilings, "_operands", lambda *a: seen.append(real(*a)) or seen[-1])
    try:
        fn, _ = ceilings._matmul_fn("cpu", dtype, 32, 48, 64)
        out = fn()
    except (RuntimeError, NotImplementedError) as exc:
        pytest.skip(f"torch cannot run {dtype} matmul on the CPU: {exc}")
    ((a, b),) = seen
    assert out.shape == (32, 48)
    if dtype == "fp8":
        assert b.stride() == (1, 64)  # column-major K x N
    ref = a.double() @ b.double()
    err = (out.double() - ref).norm() / ref.norm()
    assert err < 1e-2
