"""NvmlLayer against a stand-in ``pynvml`` module: every NVML call certification makes is
exercised without a GPU (names, units, bytes vs str, unsupported queries -> None), and a
node run through it reaches the right verdict."""

from __future__ import annotations

import sys
import types

import pytest

from millkernels.certify import verdict as V
from millkernels.certify.preflight import NvmlLayer, inventory


class NotSupported(Exception):
    pass


def fake_pynvml(gpus: int = 2, pending_remap: int = 0) -> types.ModuleType:
    m = types.ModuleType("pynvml")
    energy = {i: 1_000_000 for i in range(gpus)}

    def unsupported(*a):
        raise NotSupported("Not Supported")

    def energy_mj(h):
        energy[h] += 690_000  # +690 J per read
        return energy[h]

    violation = {i: 0 for i in range(gpus)}

    def thermal(h, policy):
        violation[h] += 50_000_000  # +50 ms per read
        return types.SimpleNamespace(referenceTime=0, violationTime=violation[h])

    def nvlink(h, link):
        if link >= 18:
            raise NotSupported("invalid link")
        return 1

    consts = dict(
        NVML_MEMORY_ERROR_TYPE_UNCORRECTED=1, NVML_MEMORY_ERROR_TYPE_CORRECTED=0,
        NVML_VOLATILE_ECC=0, NVML_AGGREGATE_ECC=1, NVML_TEMPERATURE_GPU=0,
        NVML_CLOCK_SM=1, NVML_CLOCK_MEM=2, NVML_PERF_POLICY_THERMAL=1,
        NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR=1,
        NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS=0,
        nvmlEventTypeXidCriticalError=8,
    )  # fmt: skip
    funcs = dict(
        nvmlInit=lambda: None,
        nvmlSystemGetDriverVersion=lambda: b"580.95.05",
        nvmlSystemGetCudaDriverVersion_v2=lambda: 13000,
        nvmlSystemGetNVMLVersion=lambda: "13.580.95.05",
        nvmlDeviceGetCount=lambda: gpus,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetName=lambda h: b"NVIDIA H100 80GB HBM3",
        nvmlDeviceGetUUID=lambda h: f"GPU-fake-{h}",
        nvmlDeviceGetSerial=lambda h: f"SN{h}",
        nvmlDeviceGetVbiosVersion=lambda h: "96.00.99.00.01",
        nvmlDeviceGetInforomImageVersion=lambda h: "G520.0200.00.05",
        nvmlDeviceGetBoardPartNumber=lambda h: "692-2G520-0200-000",
        nvmlDeviceGetPciInfo=lambda h: types.SimpleNamespace(
            busId=f"00000000:{0x18 + h:02X}:00.0".encode(), pciDeviceId=0x233010DE
        ),
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(total=85520809984),
        nvmlDeviceGetEccMode=lambda h: [1, 1],
        nvmlDeviceGetTotalEccErrors=lambda h, et, ct: 0,
        nvmlDeviceGetRetiredPagesPendingStatus=unsupported,  # Ampere+: row remapping instead
        nvmlDeviceGetRetiredPages=unsupported,
        nvmlDeviceGetRemappedRows=lambda h: (1, 0, pending_remap if h == 1 else 0, 0),
        nvmlDeviceGetEnforcedPowerLimit=lambda h: 700_000,
        nvmlDeviceGetPowerManagementDefaultLimit=lambda h: 700_000,
        nvmlDeviceGetPersistenceMode=lambda h: 1,
        nvmlDeviceGetTemperature=lambda h, s: 33,
        nvmlDeviceGetClockInfo=lambda h, c: 1980 if c == 1 else 2619,
        nvmlDeviceGetMaxClockInfo=lambda h, c: 1980,
        nvmlDeviceGetCurrentClocksEventReasons=lambda h: 0x1,
        nvmlDeviceGetCurrPcieLinkGeneration=lambda h: 1,
        nvmlDeviceGetMaxPcieLinkGeneration=lambda h: 5,
        nvmlDeviceGetCurrPcieLinkWidth=lambda h: 16,
        nvmlDeviceGetMaxPcieLinkWidth=lambda h: 16,
        nvmlDeviceGetPcieReplayCounter=lambda h: 0,
        nvmlDeviceGetNvLinkState=nvlink,
        nvmlDeviceGetTotalEnergyConsumption=energy_mj,
        nvmlDeviceGetPowerUsage=lambda h: 690_000,
        nvmlDeviceGetViolationStatus=thermal,
        nvmlDeviceGetHandleByUUID=lambda u: int(u.rsplit("-", 1)[1]),
        nvmlDeviceGetIndex=lambda h: h,
        nvmlEventSetCreate=unsupported,  # XID events not readable here
    )
    for k, v in {**consts, **funcs}.items():
        setattr(m, k, v)
    return m


@pytest.fixture
def nvml(monkeypatch):
    mod = fake_pynvml()
    monkeypatch.setitem(sys.modules, "pynvml", mod)
    return mod


def test_snapshot_reads_identity_and_health(nvml):
    layer = NvmlLayer()
    inv = inventory(layer)
    assert inv["available"] and len(inv["gpus"]) == 2
    s = inv["gpus"][1]
    assert s["name"] == "NVIDIA H100 80GB HBM3" and s["uuid"] == "GPU-fake-1"
    assert s["pci_bus_id"] == "00000000:19:00.0" and s["pci_device_id"] == "0x233010de"
    assert s["power_limit_w"] == 700.0 and s["power_limit_default_w"] == 700.0  # mW -> W
    assert s["ecc_enabled"] is True and s["remap_pending"] is False and s["remap_corrected"] == 1
    assert s["retired_pages_pending"] is None  # unsupported -> None, not a crash
    assert s["nvlink_active"] == 18 and s["nvlink_total"] == 18
    assert s["pcie_gen_max"] == 5 and s["pcie_gen_current"] == 1
    assert inv["driver"] == {
        "driver_version": "580.95.05",
        "cuda_driver_version": "13.0",
        "nvml_version": "13.580.95.05",
    }


def test_sample_reads_energy_and_throttle_counters(nvml):
    layer = NvmlLayer()
    assert layer.open() is None
    a, b = layer.sample(0), layer.sample(0)
    assert b["energy_mj"] - a["energy_mj"] == 690_000 and a["power_w"] == 690.0
    assert b["thermal_ns"] - a["thermal_ns"] == 50_000_000 and a["clock_event_reasons"] == 1
    assert layer.xid_watch_start().startswith("XID events are not readable")


def test_missing_pynvml_is_reported(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    inv = inventory(NvmlLayer())
    assert not inv["available"] and "not installed" in inv["error"]


@pytest.mark.parametrize("pending,verdict", [(0, "pass"), (1, "fail")])
def test_node_through_nvml_layer(monkeypatch, tmp_path, sim_node, pending, verdict):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(gpus=2, pending_remap=pending))
    from millkernels.certify import preflight

    buses = ["0000:18:00.0", "0000:19:00.0"]  # the stand-in NVML's GPUs
    pci = [{"bus_id": b, "device_id": "0x2330", "driver": "nvidia"} for b in buses]
    monkeypatch.setattr(preflight, "scan_pci", lambda: {"gpus": pci, "how": "stand-in PCI bus"})
    cuda = {"devices": [{"bus_id": b, "name": "NVIDIA H100 80GB HBM3"} for b in buses]}
    monkeypatch.setattr(preflight, "cuda_census", lambda: {**cuda, "error": None})
    sim_node.values = sim_node.values[:2]
    sim_node.digests = {0: "ab" * 32, 1: "ab" * 32}
    from millkernels.certify.node import NodeConfig, certify_node

    cfg = NodeConfig(out=tmp_path, layer=NvmlLayer(), runner=sim_node.runner(), write_reports=False)
    res = certify_node(cfg)
    assert res.certificate["profile"]["name"] == "h100-sxm"
    assert res.verdict.verdict == verdict, [c for c in res.checks if c.status in ("fail", "error")]
    xid = [c for c in res.checks if c.name == "xid_events"]
    assert xid[0].status == "skipped" and xid[0].reason == V.MK_UNAVAILABLE
    if pending:
        bad = [c for c in res.checks if c.status == "fail"]
        assert [(c.name, c.gpu, c.reason) for c in bad] == [
            ("preflight.remap_pending", 1, V.FR_PENDING_ROW_REMAP)
        ]


def test_sustained_probe_code_path_with_nvml(nvml):
    """The GPU sustained-load probe, run on the CPU against the stand-in NVML: energy from
    counter deltas, throttle fractions, clock stability, link state, the power series."""
    from millkernels.certify.probes import ProbeContext
    from millkernels.certify.probes.gpu import sustained

    ctx = ProbeContext(
        name="sustained", device="cpu", quick=True, gpu=0, uuids=["GPU-fake-0"],
        params={"n": 64, "seconds": 0.5, "warmup_s": 0.05},
    )  # fmt: skip
    sustained(ctx)
    got = {m["metric"]: m["value"] for m in ctx.measurements}
    assert not ctx.unavailable, ctx.unavailable
    assert got["sustained_tflops"] > 0 and got["sustained_energy_j"] > 0
    assert got["sustained_power_w"] == pytest.approx(
        rel=1e-2, expected=got["sustained_energy_j"] / ctx.info["seconds"]
    )
    assert got["sustained_tflops_per_w"] == pytest.approx(
        got["sustained_tflops"] / got["sustained_power_w"]
    )
    # Reasons 0x1 (idle) only, so the samples see no throttling; the stand-in thermal counter
    # grows 50 ms per read (a read every 0.2 s): the counter path decides, about 25%.
    assert 0.1 < got["throttle_thermal_frac"] < 1 and got["throttle_power_frac"] == 0
    assert got["sm_clock_cv"] == 0 and got["pcie_gen_load"] == 1 and got["pcie_width_load"] == 16
    assert len(ctx.series["power_w"]) == len(ctx.series["t"]) >= 1
