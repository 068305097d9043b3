"""A simulated node: NVML readings and probe measurements injected per test, driving the same
preflight, evaluation, certificate and report code as a real run.

    node = SimNode.healthy("h100-sxm", gpus=8)
    node.set(3, gemm_bf16_tflops=650.0)          # a probe measurement on GPU 3
    node.snapshot(1)["pcie_gen_max"] = 4         # an NVML reading on GPU 1
    node.crash("gemm", 2); node.hang("hbm", 4)   # real processes that crash / hang
    node.fall_off(3, during="gemm")              # GPU 3 drops off the bus in its gemm probe
    node.nvml_error = "..."; node.pci_gpus = 8   # driver down, 8 GPUs still on the PCI bus
    cfg = NodeConfig(out=..., profile="h100-sxm", layer=node.layer(), runner=node.runner())

Crashes and hangs run real probe processes (``selftest_crash`` / ``selftest_hang``) through
:class:`~millkernels.certify.probes.runner.SubprocessRunner`, so the timeout and crash
handling under test is the real one.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from millkernels.certify import verdict as V
from millkernels.certify.probes.registry import ProbeSpec, get
from millkernels.certify.probes.runner import SubprocessRunner, base_record, now_iso

# Healthy H100 SXM values (comfortably above the h100-sxm floors; REFERENCES.md levels).
NOMINAL_H100_SXM: dict[str, float] = {
    "hbm_copy_gbps": 2950.0,
    "hbm_read_gbps": 3000.0,
    "hbm_write_gbps": 2900.0,
    "mem_pattern_mismatches": 0,
    "gemm_bf16_tflops": 720.0,
    "gemm_fp8_tflops": 1250.0,
    "pcie_h2d_gbps": 55.3,
    "pcie_d2h_gbps": 55.1,
    "pcie_gen_load": 5,
    "pcie_width_load": 16,
    "p2p_min_gbps": 390.0,
    "nccl_allreduce_busbw_gbps": 365.0,
    "sustained_tflops": 680.0,
    "sustained_power_w": 690.0,
    "sustained_energy_j": 690.0 * 60,
    "sustained_tflops_per_w": 680.0 / 690.0,
    "throttle_thermal_frac": 0.0,
    "throttle_power_frac": 0.0,
    "sm_clock_cv": 0.02,
    "sdc_self_mismatches": 0,
    # millkernels' own ops (probes/ops.py): plausible levels from REFERENCES.md's kernel
    # anchors, not measurements (no GPU has run these probes yet).
    "attention_fwd_tflops": 400.0,
    "attention_fwd_wrong": 0,
    "attention_decode_gbps": 1800.0,
    "attention_decode_wrong": 0,
    "quant_w4a16_gbps": 1400.0,
    "quant_w4a16_wrong": 0,
    "quant_fp8_rowwise_tflops": 1000.0,
    "quant_fp8_rowwise_wrong": 0,
}
# Node-scope values of a healthy 8-GPU node (one value for the node).
NOMINAL_NODE_H100_SXM: dict[str, float] = {
    "nccl_allreduce_busbw_gbps": NOMINAL_H100_SXM["nccl_allreduce_busbw_gbps"],
    "custom_allreduce_busbw_gbps": 250.0,
    "custom_allreduce_small_busbw_gbps": 70.0,
    "custom_allreduce_wrong": 0,
}
UNITS = {
    "gbps": "GB/s",
    "tflops": "TFLOP/s",
    "mismatches": "words",
    "load": "",
    "w": "W",
    "j": "J",
    "frac": "fraction",
    "cv": "fraction",
    "wrong": "elements",
}
PERF_METRICS = (
    "hbm_copy_gbps",
    "hbm_read_gbps",
    "hbm_write_gbps",
    "gemm_bf16_tflops",
    "gemm_fp8_tflops",
    "pcie_h2d_gbps",
    "pcie_d2h_gbps",
    "p2p_min_gbps",
    "sustained_tflops",
    "attention_fwd_tflops",
    "attention_decode_gbps",
    "quant_w4a16_gbps",
    "quant_fp8_rowwise_tflops",
)
NVML_METRICS = (
    "sustained_power_w",
    "sustained_energy_j",
    "sustained_tflops_per_w",
    "throttle_thermal_frac",
    "throttle_power_frac",
    "sm_clock_cv",
    "pcie_gen_load",
    "pcie_width_load",
)


def _unit(metric: str) -> str:
    if metric == "sdc_self_mismatches":
        return "runs"
    if metric == "sustained_tflops_per_w":
        return "TFLOP/s/W"
    if metric == "pcie_gen_load":
        return "gen"
    if metric == "pcie_width_load":
        return "lanes"
    return UNITS.get(metric.rsplit("_", 1)[-1], "")


def healthy_snapshot(index: int) -> dict[str, Any]:
    """An H100 SXM at rest, in good health (note: idle PCIe link at Gen1, as real ones are)."""
    return {
        "index": index,
        "name": "NVIDIA H100 80GB HBM3",
        "uuid": f"GPU-5111-0000-0000-0000-00000000000{index}",
        "serial": f"165232000000{index}",
        "pci_bus_id": f"00000000:{0x18 + 0x10 * index:02X}:00.0",
        "pci_device_id": "0x233010de",
        "vbios": "96.00.99.00.01",
        "inforom": "G520.0200.00.05",
        "board_part_number": "692-2G520-0200-000",
        "memory_bytes": 85520809984,
        "ecc_enabled": True,
        "ecc_volatile_uncorrected": 0,
        "ecc_aggregate_uncorrected": 0,
        "ecc_volatile_corrected": 0,
        "retired_pages_pending": None,
        "retired_pages_dbe": None,
        "retired_pages_sbe": None,
        "remap_corrected": 0,
        "remap_uncorrected": 0,
        "remap_pending": False,
        "remap_failure": False,
        "power_limit_w": 700.0,
        "power_limit_default_w": 700.0,
        "persistence_mode": True,
        "temperature_c": 34,
        "sm_clock_mhz": 345,
        "sm_clock_max_mhz": 1980,
        "mem_clock_mhz": 2619,
        "clock_event_reasons": 0x1,  # GPU idle
        "pcie_gen_current": 1,
        "pcie_gen_max": 5,
        "pcie_width_current": 16,
        "pcie_width_max": 16,
        "pcie_replay": 0,
        "nvlink_active": 18,
        "nvlink_total": 18,
    }


def sim_bus_id(gpu: int) -> str:
    """The PCI address of simulated GPU ``gpu`` (sysfs form; NVML's form is in the snapshot)."""
    return f"0000:{0x18 + 0x10 * gpu:02x}:00.0"


class SimLayer:
    """A :class:`~millkernels.certify.preflight.DeviceLayer` over a :class:`SimNode`."""

    def __init__(self, node: SimNode) -> None:
        self.node = node

    def open(self) -> str | None:
        if self.node.nvml_hang_s:
            self.node.release.wait(self.node.nvml_hang_s)  # a hung nvmlInit
        return self.node.nvml_error

    def pci_scan(self) -> dict[str, Any]:
        n = self.node.pci_gpus
        if n is None:
            return {"gpus": None, "how": "simulated PCI bus: not readable"}
        count = len(self.node.snapshots) if n == -1 else n
        gpus = [
            {"bus_id": sim_bus_id(i), "device_id": "0x2330", "driver": self.node.pci_driver}
            for i in range(count)
        ]
        return {"gpus": gpus, "how": "simulated PCI bus"}

    def cuda_devices(self) -> dict[str, Any]:
        if self.node.cuda_error is not None:
            return {"devices": [], "error": self.node.cuda_error}
        alive = [s for s in self.node.snapshots if s["index"] not in self.node.lost]
        if self.node.cuda_gpus != -1:
            alive = alive[: self.node.cuda_gpus]
        return {
            "devices": [{"bus_id": s["pci_bus_id"], "name": s["name"]} for s in alive],
            "error": None,
        }

    def driver(self) -> dict[str, Any]:
        return {
            "driver_version": "580.95.05",
            "cuda_driver_version": "13.0",
            "nvml_version": "13.580.95.05",
        }

    def count(self) -> int:
        if self.node.nvml_raises:
            raise RuntimeError(self.node.nvml_raises)
        return len(self.node.snapshots)

    def snapshot(self, index: int) -> dict[str, Any]:
        s = self.node.snapshots[index]
        if s["index"] in self.node.lost:
            return {"index": s["index"], "lost": f"NVML cannot reach GPU {index}: GPU is lost"}
        return {"lost": None, **copy.deepcopy(s)}

    def sample(self, index: int) -> dict[str, Any]:
        s = self.node.snapshots[index]
        return {
            "t": time.monotonic(),
            "energy_mj": None,
            "power_w": None,
            "sm_clock_mhz": s["sm_clock_mhz"],
            "temperature_c": s["temperature_c"],
            "clock_event_reasons": s["clock_event_reasons"],
            "thermal_ns": None,
            "pcie_gen_current": s["pcie_gen_current"],
            "pcie_width_current": s["pcie_width_current"],
        }

    def xid_watch_start(self) -> str | None:
        return None if self.node.xids is not None else "XID events are not readable (simulated)"

    def xid_watch_stop(self) -> list[dict[str, Any]] | None:
        return list(self.node.xids) if self.node.xids is not None else None


@dataclass
class SimNode:
    """Injected readings (``snapshots``), measurements (``values[gpu][metric]``), SDC digests,
    XID events, NVML, PCI and CUDA views, and probes that crash or hang.

    ``pci_gpus``: NVIDIA GPUs on the PCI bus (-1: one per snapshot; None: bus not readable).
    ``cuda_gpus``: how many of the reachable GPUs CUDA opens (-1: all). ``lost``: GPUs that
    fell off the bus (NVML cannot reach them, CUDA does not see them, their probes fail).
    ``nvml_hang_s`` / ``nvml_raises``: NVML init hangs that long / ``count()`` raises.
    """

    snapshots: list[dict[str, Any]]
    values: list[dict[str, float]]
    node_values: dict[str, float] = field(default_factory=dict)
    digests: dict[int, str] = field(default_factory=dict)
    xids: list[dict[str, Any]] | None = field(default_factory=list)
    nvml_error: str | None = None
    pci_gpus: int | None = -1
    pci_driver: str = "nvidia"  # the kernel driver bound to the GPUs ("" none, "nouveau")
    cuda_error: str | None = None
    cuda_gpus: int = -1
    lost: set[int] = field(default_factory=set)
    falls: dict[tuple[str, int], str] = field(default_factory=dict)
    nvml_hang_s: float = 0.0
    nvml_raises: str | None = None
    release: threading.Event = field(default_factory=threading.Event)
    crashes: set[tuple[str, int | None]] = field(default_factory=set)
    hangs: set[tuple[str, int | None]] = field(default_factory=set)
    errors: dict[tuple[str, int | None], str] = field(default_factory=dict)
    calls: list[tuple[str, int | None]] = field(default_factory=list)

    @classmethod
    def healthy(cls, profile: str = "h100-sxm", gpus: int = 8) -> SimNode:
        if profile != "h100-sxm":
            raise ValueError("profile: the simulated node models h100-sxm only")
        values = []
        for g in range(gpus):
            jitter = 1.0 + 0.004 * ((g * 37) % 5 - 2)  # within +-0.8%, like a good node
            values.append(
                {m: (v * jitter if m in PERF_METRICS else v) for m, v in NOMINAL_H100_SXM.items()}
            )
        return cls(
            snapshots=[healthy_snapshot(g) for g in range(gpus)],
            values=values,
            node_values=dict(NOMINAL_NODE_H100_SXM),
            digests={g: "9f" * 32 for g in range(gpus)},
        )

    # -- injection helpers ------------------------------------------------------------------
    def snapshot(self, gpu: int) -> dict[str, Any]:
        return self.snapshots[gpu]

    def set(self, gpu: int, **metrics: float) -> None:
        self.values[gpu].update(metrics)

    def slow(self, gpu: int, factor: float) -> None:
        """Scale every throughput metric of ``gpu`` by ``factor`` (0.92: 8% slow)."""
        for m in PERF_METRICS:
            self.values[gpu][m] *= factor

    def crash(self, probe: str, gpu: int | None) -> None:
        self.crashes.add((probe, gpu))

    def hang(self, probe: str, gpu: int | None) -> None:
        self.hangs.add((probe, gpu))

    def fail_probe(self, probe: str, gpu: int | None, message: str) -> None:
        self.errors[(probe, gpu)] = message

    def fall_off(self, gpu: int, during: str) -> None:
        """GPU ``gpu`` falls off the bus while probe ``during`` runs on it (XID 79)."""
        self.falls[(during, gpu)] = "CUDA error: unspecified launch failure"

    def layer(self) -> SimLayer:
        return SimLayer(self)

    def runner(self) -> SimRunner:
        return SimRunner(self)


class SimRunner:
    """A probe runner that answers from the :class:`SimNode`; crashes, hangs and raised errors
    go through real processes."""

    def __init__(self, node: SimNode) -> None:
        self.node = node
        self.real = SubprocessRunner()

    def run(
        self,
        spec: ProbeSpec,
        *,
        gpu: int | None,
        gpus: Sequence[int],
        uuids: Sequence[str],
        device: str,
        quick: bool,
        timeout: float,
        env: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        record_as: str | None = None,
    ) -> dict[str, Any]:
        key = (spec.name, gpu)
        self.node.calls.append(key)
        misbehave = None
        selftest_params: dict[str, Any] = {}
        if key in self.node.crashes:
            misbehave = "selftest_crash"
        elif key in self.node.hangs:
            misbehave = "selftest_hang"
        elif key in self.node.errors:
            misbehave = "selftest_raise"
            selftest_params = {"message": self.node.errors[key]}
        if misbehave:
            return self.real.run(
                get(misbehave),
                gpu=gpu,
                gpus=gpus,
                uuids=uuids,
                device="cpu",
                quick=quick,
                timeout=timeout,
                params=selftest_params,
                record_as=record_as or spec.name,
            )
        rec = base_record(record_as or spec.name, gpu)
        rec["started_at"] = now_iso()
        if key in self.node.falls and gpu is not None:
            self.node.lost.add(gpu)
            if self.node.xids is not None:
                self.node.xids.append({"gpu": gpu, "xid": 79, "t": time.time()})
            return _errored(rec, self.node.falls[key])
        gone = sorted(self.node.lost & set([gpu] if gpu is not None else gpus))
        if gone:
            return _errored(rec, f"CUDA error: GPU {gone[0]} has fallen off the bus")
        nvml_missing = self.node.nvml_error is not None
        targets = list(gpus) if gpu is None else [gpu]  # the node's GPUs, or this probe's GPU
        for metric in spec.metrics:
            if spec.scope == "node" and metric in self.node.node_values:
                rec["measurements"].append(
                    {
                        "metric": metric,
                        "gpu": None,
                        "value": self.node.node_values[metric],
                        "unit": _unit(metric),
                    }
                )
                continue
            for g in targets:
                if nvml_missing and metric in NVML_METRICS:
                    rec["unavailable"].append(
                        {
                            "metric": metric,
                            "gpu": g,
                            "reason": f"NVML unavailable: {self.node.nvml_error}",
                        }
                    )
                    continue
                if metric in self.node.values[g]:
                    rec["measurements"].append(
                        {
                            "metric": metric,
                            "gpu": g,
                            "value": self.node.values[g][metric],
                            "unit": _unit(metric),
                        }
                    )
        if spec.name == "p2p":
            m = [
                [None if i == j else self.node.values[j]["p2p_min_gbps"] for j in targets]
                for i in targets
            ]
            rec["info"].update(matrix_gbps=m, gpus=list(targets))
        if spec.name == "sdc" and gpu is not None:
            rec["info"]["digest"] = self.node.digests[gpu]
        if spec.name == "sustained" and gpu is not None and not nvml_missing:
            p = self.node.values[gpu]["sustained_power_w"]
            rec["series"] = {
                "t": [i * 0.5 for i in range(20)],
                "power_w": [p * (0.5 + i / 20) if i < 8 else p for i in range(20)],
                "sm_clock_mhz": [1980] * 20,
                "temperature_c": [60] * 20,
            }
        rec.update(status="ok", ended_at=now_iso(), duration_s=0.0, stderr_tail="")
        return rec


def _errored(rec: dict[str, Any], message: str) -> dict[str, Any]:
    rec.update(
        status="error",
        reason=V.error_reason_for(message),
        message=message,
        ended_at=now_iso(),
        duration_s=0.0,
        stderr_tail="",
    )
    return rec


def certify_sim(node: SimNode, out: Any, **kw: Any) -> Any:
    """Certify a simulated node: ``certify_node`` with the node's layer and runner (no HTML or
    Prometheus files unless ``write_reports=True``). Returns the ``NodeResult``."""
    from millkernels.certify.node import NodeConfig, certify_node

    kw.setdefault("write_reports", False)
    return certify_node(NodeConfig(out=out, layer=node.layer(), runner=node.runner(), **kw))
