"""The verdict logic on a simulated 8-GPU H100 node: a healthy node passes; each fault fails
(or errors) with the right reason on the right GPU, and only there."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from millkernels.certify import verdict as V
from millkernels.certify.sim import SimNode
from millkernels.certify.sim import certify_sim as run_sim


def _bad(res, gpu=None):
    return [
        c for c in res.checks if c.status in (V.FAIL, V.ERROR) and (gpu is None or c.gpu == gpu)
    ]


def test_healthy_node_passes(sim_node, tmp_path):
    res = run_sim(sim_node, tmp_path)
    assert res.verdict.verdict == "pass", [c for c in res.checks if c.status != "pass"]
    assert res.exit_code == 0
    assert all(g["verdict"] == "pass" for g in res.verdict.gpus) and len(res.verdict.gpus) == 8
    names = {c.name for c in res.checks}
    # Every family of check is present (the pass is not a pass by omission).
    for n in (
        "nvml",
        "preflight.ecc_enabled",
        "preflight.remap_pending",
        "preflight.power_limit",
        "pcie.gen",
        "pcie.width",
        "hbm_copy_gbps",
        "gemm_bf16_tflops",
        "gemm_fp8_tflops",
        "pcie_h2d_gbps",
        "p2p_min_gbps",
        "nccl_allreduce_busbw_gbps",
        "sustained_tflops_per_w",
        "throttle_thermal_frac",
        "mem_pattern_mismatches",
        "sdc.cross_gpu",
        "spread.gemm_bf16_tflops",
        "xid_events",
    ):
        assert n in names, n
    cert = json.loads((tmp_path / "certificate.json").read_text())["certificate"]
    assert cert["profile"]["name"] == "h100-sxm"  # detected from the PCI id
    assert [g["uuid"] for g in cert["node"]["gpus"]][3].endswith("3")


def _pcie_gen4(n: SimNode) -> None:
    n.snapshot(1).update(pcie_gen_max=4)
    n.set(1, pcie_gen_load=4, pcie_h2d_gbps=26.0, pcie_d2h_gbps=26.0)


def _pcie_x8(n: SimNode) -> None:
    n.snapshot(6).update(pcie_width_current=8, pcie_width_max=16)
    n.set(6, pcie_width_load=8, pcie_h2d_gbps=27.0, pcie_d2h_gbps=27.0)


def _sdc(n: SimNode) -> None:
    n.digests[6] = "00" * 32


def _xid(n: SimNode) -> None:
    n.xids.append({"gpu": 2, "xid": 48, "t": 0.0})  # double-bit ECC (79, off the bus, has its own)


# (name, fault, gpu, check name, status, reason)
SCENARIOS: list[tuple[str, Callable[[SimNode], None], int, str, str, str]] = [
    (
        "one GPU 8% slow",
        lambda n: n.slow(5, 0.92),
        5,
        "spread.gemm_bf16_tflops",
        "fail",
        V.MK_SPREAD,
    ),
    (
        "HBM under the floor",
        lambda n: n.set(2, hbm_copy_gbps=2000.0),
        2,
        "hbm_copy_gbps",
        "fail",
        V.FR_MEMORY_BANDWIDTH,
    ),
    ("PCIe Gen4", _pcie_gen4, 1, "pcie.gen", "fail", V.FR_PCIE_GENERATION),
    ("PCIe x8", _pcie_x8, 6, "pcie.width", "fail", V.FR_PCIE_WIDTH),
    (
        "lowered power limit",
        lambda n: n.snapshot(4).update(power_limit_w=500.0),
        4,
        "preflight.power_limit",
        "fail",
        V.FR_ENFORCED_POWER_LIMIT,
    ),
    (
        "thermal throttling under load",
        lambda n: n.set(5, throttle_thermal_frac=0.2),
        5,
        "throttle_thermal_frac",
        "fail",
        V.FR_THROTTLE_THERMAL,
    ),
    (
        "pending remapped rows",
        lambda n: n.snapshot(3).update(remap_pending=True),
        3,
        "preflight.remap_pending",
        "fail",
        V.FR_PENDING_ROW_REMAP,
    ),
    (
        "uncorrectable ECC",
        lambda n: n.snapshot(7).update(ecc_volatile_uncorrected=2),
        7,
        "preflight.ecc_volatile_uncorrected",
        "fail",
        V.FR_VOLATILE_DBE,
    ),
    (
        "ECC disabled",
        lambda n: n.snapshot(0).update(ecc_enabled=False),
        0,
        "preflight.ecc_enabled",
        "fail",
        V.FR_ECC_DISABLED,
    ),
    ("SDC mismatch", _sdc, 6, "sdc.cross_gpu", "fail", V.MK_SDC),
    (
        "pattern test mismatch",
        lambda n: n.set(3, mem_pattern_mismatches=5),
        3,
        "mem_pattern_mismatches",
        "fail",
        V.FR_FAULTY_MEMORY,
    ),
    (
        "NVLink down",
        lambda n: n.snapshot(2).update(nvlink_active=16),
        2,
        "preflight.nvlink_active",
        "fail",
        V.FR_NVLINK_DOWN,
    ),
    ("XID during the run", _xid, 2, "xid_events", "fail", V.FR_XID),
    (
        "perf per watt low",
        lambda n: n.set(1, sustained_tflops_per_w=0.5),
        1,
        "sustained_tflops_per_w",
        "fail",
        V.MK_PERF_PER_WATT,
    ),
    ("probe crashes", lambda n: n.crash("gemm", 3), 3, "probe.gemm", "error", V.MK_PROBE_CRASHED),
    (
        "probe raises a CUDA error",
        lambda n: n.fail_probe("sdc", 0, "CUDA error: an illegal memory access"),
        0,
        "probe.sdc",
        "error",
        V.FR_CUDA_API,
    ),
]


@pytest.mark.parametrize(
    "name,fault,gpu,check,status,reason", SCENARIOS, ids=[s[0] for s in SCENARIOS]
)
def test_fault_is_caught_on_the_right_gpu(
    sim_node, tmp_path, name, fault, gpu, check, status, reason
):
    fault(sim_node)
    res = run_sim(sim_node, tmp_path)
    assert res.verdict.verdict == "fail"
    hits = [c for c in _bad(res, gpu) if c.name == check]
    assert hits, (
        f"{check} on GPU {gpu} not flagged; flagged: {[(c.name, c.gpu) for c in _bad(res)]}"
    )
    assert hits[0].status == status and hits[0].reason == reason, hits[0]
    # The right GPU, and only it (SDC and spread compare GPUs, so they name just the outlier).
    assert {c.gpu for c in _bad(res)} <= {gpu, None}, [(c.name, c.gpu) for c in _bad(res)]
    gv = {g["gpu"]: g["verdict"] for g in res.verdict.gpus}
    assert gv[gpu] == "fail" and sum(v == "fail" for v in gv.values()) == 1
    assert res.exit_code == (1 if status == "fail" else 3)


def test_probe_hang_is_killed_and_recorded(sim_node, tmp_path):
    sim_node.hang("hbm", 4)
    res = run_sim(sim_node, tmp_path, timeout_scale=0.01)  # hbm: 300 s x 0.01 = 3 s
    hit = [c for c in _bad(res, 4) if c.name == "probe.hbm"]
    assert hit and hit[0].status == "error" and hit[0].reason == V.MK_PROBE_TIMEOUT
    assert res.verdict.verdict == "fail" and res.exit_code == 3
    # The run went on: every other probe of every GPU finished and was judged.
    assert len([k for k in sim_node.calls if k[0] == "sdc"]) == 8
    recs = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert any(
        r.get("probe") == "hbm" and r.get("gpu") == 4 and r["status"] == "timeout" for r in recs
    )


def test_nvml_unavailable_is_an_error_never_a_pass(sim_node, tmp_path):
    sim_node.nvml_error = "NVML could not be initialised: NVML Shared Library Not Found"
    res = run_sim(sim_node, tmp_path, profile="h100-sxm")
    nv = [c for c in res.checks if c.name == "nvml"]
    assert nv[0].status == "error" and nv[0].reason == V.FR_CANNOT_OPEN_LIB
    # Energy could not be measured on any GPU: errors, not passes and not skips.
    energy = [c for c in res.checks if c.name == "sustained_tflops_per_w"]
    assert len(energy) == 8 and all(c.status == "error" for c in energy)
    assert res.verdict.verdict == "fail" and res.exit_code == 3


def test_missing_required_metric_is_an_error(sim_node, tmp_path):
    del sim_node.values[2]["gemm_fp8_tflops"]
    res = run_sim(sim_node, tmp_path)
    hit = [c for c in _bad(res, 2) if c.name == "gemm_fp8_tflops"]
    assert hit and hit[0].status == "error" and hit[0].reason == V.MK_NO_MEASUREMENT


def test_idle_pcie_link_is_not_a_failure(sim_node, tmp_path):
    # At rest the link reports Gen1 (power saving); under load it is Gen5: pass.
    assert sim_node.snapshot(0)["pcie_gen_current"] == 1
    res = run_sim(sim_node, tmp_path)
    gen = next(c for c in res.checks if c.name == "pcie.gen" and c.gpu == 0)
    assert gen.status == "pass" and gen.value == 5 and gen.message == "under load"


def test_spread_needs_more_than_noise(sim_node, tmp_path):
    sim_node.slow(5, 0.97)  # 3% slow: within the 5% limit
    res = run_sim(sim_node, tmp_path)
    assert res.verdict.verdict == "pass"


def test_operator_targets_file_changes_the_verdict(sim_node, tmp_path):
    f = tmp_path / "targets.json"
    f.write_text(
        json.dumps(
            {
                "extends": "h100-sxm",
                "profile": "h100-sxm-strict",
                "floors": {"gemm_bf16_tflops": {"min": 900.0, "unit": "TFLOP/s"}},
            }
        )
    )
    res = run_sim(sim_node, tmp_path / "out", targets=f)
    bad = {c.name for c in _bad(res)}
    assert bad == {"gemm_bf16_tflops"}
    cert = json.loads((tmp_path / "out" / "certificate.json").read_text())["certificate"]
    assert cert["profile"]["name"] == "h100-sxm-strict" and cert["profile"]["source"] == str(f)


def test_resume_skips_finished_probes(sim_node, tmp_path):
    run_sim(sim_node, tmp_path, probes=["hbm", "gemm"])
    first = (tmp_path / "results.jsonl").read_text()
    calls_before = len(sim_node.calls)
    res = run_sim(sim_node, tmp_path, resume=True)
    new_calls = sim_node.calls[calls_before:]
    assert not [k for k in new_calls if k[0] in ("hbm", "gemm")]
    assert (tmp_path / "results.jsonl").read_text().startswith(first)
    assert res.verdict.verdict == "pass"


def test_gpu_missing_from_nvml_fails_the_node(sim_node, tmp_path):
    # One GPU fell off the bus: NVML sees 7, the PCI bus still lists 8. Without this check a
    # 7-GPU node would pass as a healthy 7-GPU node.
    sim_node.pci_gpus = 8
    del sim_node.snapshots[7], sim_node.values[7]
    res = run_sim(sim_node, tmp_path)
    hit = [c for c in _bad(res) if c.name == "gpu_count.pci"]
    assert hit and hit[0].reason == V.FR_DEVICE_COUNT and hit[0].gpu is None
    assert res.verdict.verdict == "fail" and res.exit_code == 1


def test_pci_scan_reads_sysfs_and_lspci(tmp_path, monkeypatch):
    from millkernels.certify.preflight import scan_pci, visible_subset

    for i, (vendor, cls, driver) in enumerate(
        [
            ("0x10de", "0x030200", "nvidia"),
            ("0x10de", "0x030000", None),
            ("0x10de", "0x068000", "nvidia"),  # NVSwitch: not a GPU
            ("0x10de", "0x040300", "snd_hda_intel"),  # a GPU board's audio function
            ("0x8086", "0x030000", "i915"),
        ]
    ):
        d = tmp_path / "devices" / f"0000:{i:02x}:00.0"
        d.mkdir(parents=True)
        (d / "vendor").write_text(vendor + "\n")
        (d / "class").write_text(cls + "\n")
        (d / "device").write_text("0x2330\n")
        if driver:
            (tmp_path / "drivers" / driver).mkdir(parents=True, exist_ok=True)
            (d / "driver").symlink_to(tmp_path / "drivers" / driver)
    scan = scan_pci(tmp_path / "devices")
    assert scan["gpus"] == [
        {"bus_id": "0000:00:00.0", "device_id": "0x2330", "driver": "nvidia"},
        {"bus_id": "0000:01:00.0", "device_id": "0x2330", "driver": ""},
    ]
    # No sysfs: lspci -Dnk (a stand-in script printing real lspci output).
    lspci = tmp_path / "lspci"
    lspci.write_text(
        "#!/bin/sh\ncat <<'EOF'\n"
        "0000:18:00.0 0302: 10de:2330 (rev a1)\n\tSubsystem: 10de:16c1\n"
        "\tKernel driver in use: nvidia\n\tKernel modules: nvidiafb, nouveau, nvidia\n"
        "0000:05:00.0 0680: 10de:22a3 (rev a1)\n\tKernel driver in use: nvidia\n"
        "0000:2a:00.0 0302: 10de:2330 (rev a1)\n\tKernel modules: nouveau\nEOF\n"
    )
    lspci.chmod(0o755)
    scan = scan_pci(tmp_path / "absent", lspci=str(lspci))
    assert [(g["bus_id"], g["driver"]) for g in scan["gpus"]] == [
        ("0000:18:00.0", "nvidia"),
        ("0000:2a:00.0", ""),
    ]
    assert scan_pci(tmp_path / "absent", lspci=str(tmp_path / "none"))["gpus"] is None
    assert visible_subset({"NVIDIA_VISIBLE_DEVICES": "GPU-a,GPU-b"}) == ["GPU-a", "GPU-b"]
    assert visible_subset({"NVIDIA_VISIBLE_DEVICES": "all"}) is None
    assert visible_subset({"NVIDIA_VISIBLE_DEVICES": "void"}) == []
    assert visible_subset({}) is None


def test_operator_cuda_visible_devices_selects_gpus(sim_node, tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,GPU-5111-0000-0000-0000-000000000005")
    res = run_sim(sim_node, tmp_path, probes=["hbm"])
    assert [g["gpu"] for g in res.verdict.gpus] == [2, 5]
    assert sorted({k[1] for k in sim_node.calls}) == [2, 5]
