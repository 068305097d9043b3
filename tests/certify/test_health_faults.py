"""What the node is, and nothing unmeasured passes: a fault matrix on the simulated node.

Each case breaks one thing (the driver, NVML, CUDA, the PCI bus, a GPU falling off the bus, a
reading, a probe record, the targets file) and asserts the exit code (0 ok, 1 a check failed,
2 usage error, 3 could not run), the reason code and text, and that no passing certificate is
written."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from millkernels.certify import targets
from millkernels.certify import verdict as V
from millkernels.certify.node import CouldNotRun, NodeConfig, UsageError, certify_node
from millkernels.certify.preflight import (
    NvmlLayer,
    cuda_census,
    guarded,
    inventory,
    norm_bus_id,
    scan_pci,
)
from millkernels.certify.sim import SimNode, sim_bus_id

Edit = Callable[[dict[str, Any]], None]


class EditingRunner:
    """The simulated node's runner, with some records edited before they are logged."""

    def __init__(self, node: SimNode, edits: dict[tuple[str, int | None], Edit]) -> None:
        self.inner, self.edits = node.runner(), edits

    def run(self, spec: Any, **kw: Any) -> dict[str, Any]:
        rec = self.inner.run(spec, **kw)
        edit = self.edits.get((spec.name, kw["gpu"]))
        if edit is not None:
            edit(rec)
        return rec


def certify(
    node: SimNode, out: Path, edits: dict | None = None, **kw: Any
) -> tuple[int, str, dict[str, Any] | None]:
    """(exit code as ``millkernels certify`` maps it, the reasons and messages of what failed
    or errored, the certificate written or None)."""
    runner = EditingRunner(node, edits) if edits else node.runner()
    cfg = NodeConfig(out=out, layer=node.layer(), runner=runner, write_reports=False, **kw)
    try:
        res = certify_node(cfg)
        code = res.exit_code
        bad = [c for c in res.checks if c.status in (V.FAIL, V.ERROR)]
        text = " | ".join(f"{c.reason} {c.name}@{c.gpu}: {c.message}" for c in bad)
        text += " | " + " ".join(res.verdict.reasons)
    except (UsageError, ValueError) as exc:
        code, text = 2, str(exc)
    except CouldNotRun as exc:
        code, text = 3, f"{exc.reason} {exc}"
    path = out / "certificate.json"
    cert = json.loads(path.read_text())["certificate"] if path.exists() else None
    return code, text, cert


def _targets(tmp_path: Path, **data: Any) -> Path:
    f = tmp_path / "targets.json"
    f.write_text(json.dumps({"extends": "h100-sxm", "profile": "h100-sxm-site", **data}))
    return f


def _drop(*metrics: str) -> Edit:
    def edit(rec: dict[str, Any]) -> None:
        rec["measurements"] = [m for m in rec["measurements"] if m["metric"] not in metrics]

    return edit


def _set_value(metric: str, value: Any) -> Edit:
    def edit(rec: dict[str, Any]) -> None:
        for m in rec["measurements"]:
            if m["metric"] == metric:
                m["value"] = value

    return edit


# --------------------------------------------------------------------------- the matrix
# Each setup breaks the node and returns extra arguments for the run (edits, NodeConfig).


def driver_not_loaded(n: SimNode, tmp: Path) -> dict:
    n.nvml_error = "NVML could not be initialised: Driver Not Loaded"
    n.pci_gpus, n.cuda_gpus = 8, 0  # the bus shows 8; torch sees none
    return {"profile": "auto", "quick": True}


def nouveau_bound(n: SimNode, tmp: Path) -> dict:
    n.nvml_error = "NVML could not be initialised: Driver Not Loaded"
    n.pci_driver, n.cuda_error = "nouveau", "RuntimeError: Found no NVIDIA driver on your system"
    return {}


def nvml_up_cuda_down(n: SimNode, tmp: Path) -> dict:
    n.cuda_error = "RuntimeError: CUDA driver initialization failed"
    return {}


def nvml_sees_none(n: SimNode, tmp: Path) -> dict:
    n.pci_gpus = 8
    n.snapshots, n.values = [], []
    return {"profile": "h100-sxm"}


def nvml_sees_7_of_8(n: SimNode, tmp: Path) -> dict:
    n.pci_gpus = 8
    del n.snapshots[7], n.values[7]
    return {}


def cuda_sees_7_of_8(n: SimNode, tmp: Path) -> dict:
    n.cuda_gpus = 7
    return {}


def cuda_sees_7_of_8_and_nvml_lacks_a_bus_id(n: SimNode, tmp: Path) -> dict:
    n.cuda_gpus = 7
    n.snapshots[7]["pci_bus_id"] = None  # NVML could not read GPU 7's PCI info
    return {}


def lost_in_preflight(n: SimNode, tmp: Path) -> dict:
    n.lost.add(5)
    return {}


def lost_during_probe(n: SimNode, tmp: Path) -> dict:
    n.fall_off(3, during="gemm")
    return {}


def nvml_hangs(n: SimNode, tmp: Path) -> dict:
    n.nvml_hang_s = 30.0
    return {"preflight_timeout_s": 0.3}


def nvml_raises(n: SimNode, tmp: Path) -> dict:
    n.nvml_raises = "NVMLError_Unknown: Unknown Error"
    return {}


def duplicate_uuid(n: SimNode, tmp: Path) -> dict:
    n.snapshot(4)["uuid"] = n.snapshot(2)["uuid"]
    return {}


def frozen_energy(n: SimNode, tmp: Path) -> dict:
    n.set(0, sustained_energy_j=0.0, sustained_power_w=0.0, sustained_tflops_per_w=math.nan)
    return {}


def probe_ok_without_output(n: SimNode, tmp: Path) -> dict:
    return {"edits": {("hbm", 6): lambda r: r.update(measurements=[], unavailable=[])}}


def measurement_without_metric(n: SimNode, tmp: Path) -> dict:
    return {"edits": {("gemm", 1): lambda r: r["measurements"].append({"value": 1.0})}}


def measurement_without_value(n: SimNode, tmp: Path) -> dict:
    def edit(rec: dict[str, Any]) -> None:
        del next(m for m in rec["measurements"] if m["metric"] == "gemm_bf16_tflops")["value"]

    return {"edits": {("gemm", 1): edit}}


def forged_not_applicable(n: SimNode, tmp: Path) -> dict:
    return {"edits": {("p2p", None): lambda r: r.update(status="not_applicable", measurements=[])}}


def sdc_without_digest(n: SimNode, tmp: Path) -> dict:
    return {"edits": {("sdc", 2): lambda r: r["info"].pop("digest")}}


def no_link_reading_under_load(n: SimNode, tmp: Path) -> dict:
    drop = _drop("pcie_gen_load", "pcie_width_load")
    return {"edits": {("pcie", 1): drop, ("sustained", 1): drop}}


def optional_without_reason(n: SimNode, tmp: Path) -> dict:
    del n.node_values["custom_allreduce_busbw_gbps"]  # produced neither value nor reason
    return {"targets": _targets(tmp, optional=["custom_allreduce_busbw_gbps"])}


def no_probe_planned(n: SimNode, tmp: Path) -> dict:
    return {"probes": []}


def undetectable_machine(n: SimNode, tmp: Path) -> dict:
    n.nvml_error, n.pci_gpus, n.cuda_gpus = "NVML Shared Library Not Found", None, 0
    return {}


# (setup, exit code, reason code, text that must appear)
MATRIX: list[tuple[Callable[[SimNode, Path], dict], int, str, str]] = [
    (driver_not_loaded, 3, V.FR_CANNOT_OPEN_LIB, "Driver Not Loaded"),
    (driver_not_loaded, 3, V.FR_DEVICE_COUNT, "the PCI bus has 8"),
    (driver_not_loaded, 3, V.FR_CUDA_DEVICE, "CUDA cannot open any GPU"),
    (nouveau_bound, 3, V.FR_DENYLISTED_DRIVER, "nouveau"),
    (nvml_up_cuda_down, 3, V.FR_CUDA_DEVICE, "CUDA driver initialization failed"),
    (nvml_sees_none, 3, V.FR_DEVICE_COUNT, "NVML sees 0 GPUs"),
    (nvml_sees_7_of_8, 1, V.FR_DEVICE_COUNT, sim_bus_id(7)),
    (cuda_sees_7_of_8, 1, V.FR_CUDA_DEVICE, f"CUDA does not see the GPU at {sim_bus_id(7)}"),
    (
        cuda_sees_7_of_8_and_nvml_lacks_a_bus_id,
        1,
        V.FR_DEVICE_COUNT,
        "CUDA sees 7 GPUs, expected 8",
    ),
    (lost_in_preflight, 1, V.FR_FALLEN_OFF_BUS, sim_bus_id(5)),
    (lost_during_probe, 1, V.FR_FALLEN_OFF_BUS, f"GPU 3 ({sim_bus_id(3)}) stopped answering"),
    (lost_during_probe, 1, V.FR_CUDA_API, "probe.gemm@3"),
    (nvml_hangs, 3, V.MK_PREFLIGHT_TIMEOUT, "did not answer within 0.3 s"),
    (nvml_raises, 3, V.FR_API_FAIL, "NVMLError_Unknown"),
    (duplicate_uuid, 1, V.MK_DUPLICATE_GPU_ID, "is reported by GPUs [2, 4]"),
    (frozen_energy, 3, V.FR_POWER_UNREADABLE, "energy counter did not advance"),
    (probe_ok_without_output, 3, V.MK_NO_MEASUREMENT, "hbm_copy_gbps@6"),
    (measurement_without_metric, 3, V.MK_INVALID_READING, "has no metric name"),
    (measurement_without_value, 3, V.MK_INVALID_READING, "no 'value'"),
    (forged_not_applicable, 3, V.MK_PROBE_ERROR, "recorded as not applicable"),
    (sdc_without_digest, 3, V.MK_NO_MEASUREMENT, "sdc.cross_gpu@2"),
    (no_link_reading_under_load, 3, V.MK_NO_MEASUREMENT, "pcie.gen@1: no reading under load"),
    (optional_without_reason, 3, V.MK_NO_MEASUREMENT, "custom_allreduce_busbw_gbps"),
    (no_probe_planned, 3, V.MK_NO_MEASUREMENT, "no probe ran"),
    (undetectable_machine, 2, "profile", "cannot tell whether this machine has an NVIDIA GPU"),
]


@pytest.mark.parametrize(
    "setup,code,reason,text", MATRIX, ids=[f"{m[0].__name__}-{m[2]}" for m in MATRIX]
)
def test_fault_ends_with_its_exit_code_and_reason_never_a_pass(
    sim_node, tmp_path, setup, code, reason, text
):
    kw = setup(sim_node, tmp_path)
    try:
        got, why, cert = certify(sim_node, tmp_path / "out", **kw)
    finally:
        sim_node.release.set()  # let a simulated hung NVML call return
    assert got == code, why
    assert any(reason in part and text in part for part in why.split(" | ")), why
    assert cert is None or cert["verdict"] != "pass"


def test_driver_not_loaded_is_a_gpu_node_not_a_cpu_certificate(sim_node, tmp_path, keypair):
    """The reported case: 8 GPUs on the bus, NVML "Driver Not Loaded", torch sees none, run
    with --profile auto --quick. It was a signed passing CPU certificate."""
    driver_not_loaded(sim_node, tmp_path)
    cfg = NodeConfig(
        out=tmp_path, profile="auto", quick=True, layer=sim_node.layer(), key=keypair[0]
    )
    res = certify_node(cfg)
    cert = res.certificate
    assert res.exit_code == 3 and cert["verdict"] == "fail"
    assert cert["device_class"] == "gpu" and cert["profile"]["name"] == "h100-sxm"
    assert cert["node"]["pci_nvidia_gpus"] == [sim_bus_id(i) for i in range(8)]
    assert not any(c.status == V.PASS for c in res.checks if c.name.startswith("probe"))


BAD_READINGS = [
    ("nan", 2, "hbm_copy_gbps", math.nan, "NaN"),
    ("inf", 1, "gemm_bf16_tflops", math.inf, "plausible"),
    ("negative mismatches", 3, "mem_pattern_mismatches", -3, "negative"),
    ("negative power", 4, "sustained_power_w", -5.0, "negative"),
    ("negative bandwidth", 6, "pcie_h2d_gbps", -50.0, "negative"),
    ("fraction above 1", 0, "throttle_thermal_frac", 1.5, "above 1"),
    ("fractional count", 5, "attention_fwd_wrong", 0.5, "whole number"),
    ("string", 0, "gemm_fp8_tflops", "1250", "not a number"),
    ("bool", 7, "sdc_self_mismatches", False, "not a number"),
    ("10**30", 1, "hbm_read_gbps", 10**30, "plausible"),
    ("int too big for a float", 2, "gemm_bf16_tflops", 10**400, "too large"),
    ("list", 3, "hbm_write_gbps", [2900.0], "not a number"),
    ("dict", 4, "quant_w4a16_gbps", {"value": 1400.0}, "not a number"),
    ("numpy int", 5, "gemm_bf16_tflops", np.int64(700), "not a number"),
    ("torch tensor", 6, "hbm_copy_gbps", torch.tensor(2950.0), "not a number"),
]


@pytest.mark.parametrize(
    "gpu,metric,value,why", [b[1:] for b in BAD_READINGS], ids=[b[0] for b in BAD_READINGS]
)
def test_bad_reading_is_an_error_with_its_reason(sim_node, tmp_path, gpu, metric, value, why):
    sim_node.set(gpu, **{metric: value})
    code, text, cert = certify(sim_node, tmp_path)
    assert code == 3, text
    hit = next(c for c in cert["checks"] if c["name"] == metric and c["gpu"] == gpu)
    assert hit["status"] == "error" and hit["reason"] == V.MK_INVALID_READING, hit
    assert why in hit["message"] and hit["value"] is None
    assert cert["verdict"] == "fail"


def test_frozen_energy_counter_errors_energy_power_and_perf_per_watt(sim_node, tmp_path):
    frozen_energy(sim_node, tmp_path)
    code, _, cert = certify(sim_node, tmp_path)
    mine = {c["name"]: c for c in cert["checks"] if c["gpu"] == 0}
    for m in ("sustained_energy_j", "sustained_power_w", "sustained_tflops_per_w"):
        assert mine[m]["status"] == "error" and mine[m]["reason"] == V.FR_POWER_UNREADABLE, m
    assert code == 3


def test_optional_metric_with_a_stated_reason_is_skipped_and_the_node_passes(sim_node, tmp_path):
    """The control for the strict rules: an optional metric the probe says it cannot measure
    (peer access missing, say) is listed as skipped, and does not fail a healthy node."""
    del sim_node.node_values["custom_allreduce_busbw_gbps"]
    why = "no peer access between GPU 0 and GPU 5"

    def edit(rec: dict[str, Any]) -> None:
        rec["unavailable"].append(
            {"metric": "custom_allreduce_busbw_gbps", "gpu": None, "reason": why}
        )

    f = _targets(tmp_path, optional=["custom_allreduce_busbw_gbps"])
    code, text, cert = certify(
        sim_node, tmp_path / "out", edits={("custom_allreduce", None): edit}, targets=f
    )
    assert code == 0, text
    hit = next(c for c in cert["checks"] if c["name"] == "custom_allreduce_busbw_gbps")
    assert hit["status"] == "skipped" and hit["message"] == why


def test_link_probes_not_planned_leave_the_link_unjudged_not_passed(sim_node, tmp_path):
    code, text, cert = certify(sim_node, tmp_path, probes=["hbm", "gemm", "sdc"])
    assert code == 0, text  # a subset run (an API option for debugging) lists what it left out
    links = [c for c in cert["checks"] if c["name"] in ("pcie.gen", "pcie.width")]
    assert links and all(c["status"] == "skipped" for c in links)
    skipped = {c["name"] for c in cert["checks"] if c["reason"] == V.MK_NOT_RUN}
    assert {"probe.pcie", "probe.sustained", "probe.p2p"} <= skipped


# --------------------------------------------------------------------------- the cpu profile


def test_explicit_cpu_profile_on_a_gpu_machine_says_so(sim_node, tmp_path):
    """--profile cpu where the PCI bus shows GPUs: a note on the console and a certificate that
    lists the untested GPUs (verify rejects CPU certificates as GPU ones)."""
    events: list[tuple[str, dict]] = []
    cfg = NodeConfig(
        out=tmp_path, profile="cpu", quick=True, layer=sim_node.layer(), probes=["cpu_membw"],
        progress=lambda e, d: events.append((e, d)), write_reports=False,
    )  # fmt: skip
    res = certify_node(cfg)
    notes = [d["message"] for e, d in events if e == "note"]
    assert notes and "8 NVIDIA GPU(s)" in notes[0] and "NOT tested" in notes[0]
    assert notes[0] in res.notes
    cert = res.certificate
    assert cert["device_class"] == "cpu"
    assert cert["node"]["pci_nvidia_gpus"] == [sim_bus_id(i) for i in range(8)]
    hit = next(c for c in cert["checks"] if c["name"] == "pci.nvidia_gpus")
    assert hit["status"] == "skipped" and hit["reason"] == V.MK_GPUS_NOT_CERTIFIED


def test_this_cpu_machine_has_no_nvidia_gpu_on_the_bus_and_auto_picks_cpu(tmp_path):
    """The real PCI scan and the real NVML layer, on a machine without GPUs."""
    scan = scan_pci()
    if scan["gpus"]:
        pytest.skip("this machine has NVIDIA GPUs on its PCI bus")
    assert scan["gpus"] == [] and scan["how"].startswith("sysfs")
    from millkernels.certify.node import choose_profile

    inv = inventory(NvmlLayer())
    assert inv["pci"]["gpus"] == [] and not inv["gpus"]
    assert choose_profile(NodeConfig(out=tmp_path), inv).name == "cpu"


@pytest.mark.parametrize(
    "raw,want",
    [
        ("00000000:1B:00.0", "0000:1b:00.0"),  # NVML
        ("0000:1b:00.0", "0000:1b:00.0"),  # sysfs, torch
        ("1b:00.0", "0000:1b:00.0"),  # lspci without -D
        ("", None),
        (None, None),
        ("zz:1b:00.0", None),
    ],
)
def test_bus_ids_are_compared_in_one_form(raw, want):
    assert norm_bus_id(raw) == want


def test_cuda_census_on_this_machine_says_why_it_sees_no_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    census = cuda_census()
    assert census["devices"] == [] and census["error"], census


@pytest.mark.gpu
def test_a_gpu_machine_finds_its_gpus_on_the_bus_and_auto_picks_a_gpu_profile(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU; none is visible")
    from millkernels.certify.node import choose_profile
    from millkernels.certify.preflight import cuda_reachable, pci_bus_ids

    inv = inventory(NvmlLayer())
    assert inv["pci"]["gpus"], inv["pci"]
    census = cuda_census()
    assert census["error"] is None and census["devices"]
    # The three views name GPUs alike (NVML "00000000:1B:00.0", sysfs and torch "0000:1b:00.0").
    nvml = {norm_bus_id(s["pci_bus_id"]) for s in inv["gpus"]}
    assert nvml <= set(pci_bus_ids(inv)), (nvml, pci_bus_ids(inv))
    cuda = [norm_bus_id(d["bus_id"]) for d in census["devices"]]
    if all(cuda):
        assert set(cuda) <= nvml, (cuda, nvml)
    inv["cuda"] = census
    assert cuda_reachable(inv, inv["gpus"]), "CUDA can open none of NVML's GPUs"
    try:
        assert choose_profile(NodeConfig(out=tmp_path), inv).device_class == "gpu"
    except UsageError as exc:  # a GPU without a built-in profile: still never cpu
        assert "no built-in profile" in str(exc)


# --------------------------------------------------------------------------- verdict, guard


def test_a_verdict_on_no_evidence_fails():
    for checks in ([], [V.Check("x", None, None, "", V.SKIPPED, V.MK_NOT_RUN)]):
        v = V.node_verdict(checks, [])
        assert v.verdict == "fail" and v.reasons == [V.MK_NO_CHECKS] and v.exit_code == 3


def test_guard_turns_a_hang_and_a_raise_into_could_not_run():
    import threading

    stuck = threading.Event()
    with pytest.raises(CouldNotRun) as hang:
        guarded(lambda: stuck.wait(30), 0.2, "nvmlInit")
    stuck.set()
    assert hang.value.reason == V.MK_PREFLIGHT_TIMEOUT

    def boom() -> None:
        raise RuntimeError("GPU is lost")

    with pytest.raises(CouldNotRun, match="GPU is lost") as raised:
        guarded(boom, 5, "nvmlDeviceGetCount")
    assert raised.value.reason == V.FR_API_FAIL
    assert guarded(lambda: 7, 5, "a quick call") == 7


# --------------------------------------------------------------------------- targets files

BAD_TARGETS: list[tuple[str, dict[str, Any], str]] = [
    ("floors not a mapping", {"floors": ["gemm_bf16_tflops"]}, "floors"),
    ("floor min text", {"floors": {"gemm_bf16_tflops": {"min": "600"}}}, "gemm_bf16_tflops.min"),
    ("floor min above max", {"floors": {"sm_clock_cv": {"min": 0.5}}}, "floors.sm_clock_cv"),
    ("floor nobody measures", {"floors": {"gemm_bf17_tflops": {"min": 1}}}, "gemm_bf17_tflops"),
    ("floor unknown key", {"floors": {"hbm_copy_gbps": {"mni": 1, "min": 1}}}, "mni"),
    ("validity 0", {"validity_days": 0}, "validity_days"),
    ("validity 366", {"validity_days": 366}, "validity_days"),
    ("validity text", {"validity_days": "30"}, "validity_days"),
    ("validity bool", {"validity_days": True}, "validity_days"),
    ("quick validity", {"quick_validity_days": 1000}, "quick_validity_days"),
    ("device class", {"device_class": "tpu"}, "device_class"),
    ("cpu under a gpu profile", {"device_class": "cpu"}, "device_class"),
    ("spread limit", {"spread": {"limit": 1.5}}, "spread.limit"),
    ("spread metric", {"spread": {"metrics": ["gemm_bf17_tflops"]}}, "spread.metrics"),
    ("optional not a list", {"optional": "hbm_copy_gbps"}, "optional"),
    ("optional numbers", {"optional": [1, 2]}, "optional"),
    ("telemetry optional", {"optional": ["sustained_energy_j"]}, "sustained_energy_j"),
    ("expect unknown", {"expect": ["cpu_energy_j"]}, "expect"),
    ("skip unknown probe", {"skip_probes": ["gemmm"]}, "skip_probes"),
    ("skip a floor's probe", {"skip_probes": ["gemm"]}, "gemm_bf16_tflops"),
    ("skip telemetry", {"skip_probes": ["sustained"]}, "sustained_energy_j"),
    ("unknown top-level key", {"florrs": {}}, "florrs"),
    ("unknown preflight rule", {"preflight": {"pcie_gen_minimum": 5}}, "pcie_gen_minimum"),
    ("preflight bool", {"preflight": {"ecc_required": "yes"}}, "preflight.ecc_required"),
    ("extends unknown", {"extends": "h900"}, "extends"),
]


@pytest.mark.parametrize("data,key", [b[1:] for b in BAD_TARGETS], ids=[b[0] for b in BAD_TARGETS])
def test_bad_targets_file_is_a_usage_error_naming_file_and_key(sim_node, tmp_path, data, key):
    f = _targets(tmp_path, **data)
    with pytest.raises(ValueError) as exc:
        targets.load_file(f)
    assert str(f) in str(exc.value) and key in str(exc.value), exc.value
    code, text, cert = certify(sim_node, tmp_path / "out", targets=f)
    assert code == 2 and cert is None, text
    assert not sim_node.calls  # refused before any probe ran


def test_every_probe_skipped_and_cpu_named_as_gpu_are_rejected(tmp_path):
    every = [s.name for s in targets.probes_for("cpu")]
    f = tmp_path / "t.json"
    f.write_text(json.dumps({"extends": "cpu", "profile": "c", "skip_probes": every}))
    with pytest.raises(ValueError, match="removes every probe"):
        targets.load_file(f)
    cpu = json.loads((Path(targets.__file__).parent / "cpu.json").read_text())
    f.write_text(json.dumps({**cpu, "profile": "h100-sxm"}))
    with pytest.raises(ValueError, match="'cpu' under the GPU profile name 'h100-sxm'"):
        targets.load_file(f)
