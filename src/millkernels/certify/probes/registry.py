"""The probe registry: name -> where the code lives, what it measures, how long it may take."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ProbeSpec:
    """One probe.

    ``scope`` "gpu": one process per GPU (``ctx.gpu`` set); "node": one process for all GPUs
    (``ctx.gpus``). ``target`` is ``"module:function"``, imported only inside the probe process.
    ``metrics`` are the metrics it produces (a metric with a floor in the profile that the probe
    does not produce is an error). ``timeout_s`` is (quick, standard). ``parallel``: per-GPU
    processes of this probe may run at once. ``min_gpus``: fewer GPUs and the probe does not
    apply (its metrics are not expected).
    """

    name: str
    device_class: str  # "gpu", "cpu" or "test" (never planned for a real run)
    scope: str
    target: str
    metrics: tuple[str, ...]
    timeout_s: tuple[float, float] = (120.0, 600.0)
    parallel: bool = True
    min_gpus: int = 1
    description: str = ""


@dataclass
class ProbeContext:
    """What a probe function gets, and where it puts its results."""

    name: str
    device: str  # "cuda" or "cpu"
    quick: bool
    gpu: int | None = None  # NVML index of this probe's GPU (scope "gpu"); cuda:0 inside
    gpus: list[int] = field(default_factory=list)  # NVML indices (scope "node"): cuda:0..n-1
    uuids: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    measurements: list[dict[str, Any]] = field(default_factory=list)
    unavailable: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    series: dict[str, Any] = field(default_factory=dict)

    def param(self, key: str, quick: Any, standard: Any) -> Any:
        """``params[key]`` if given, else the quick or standard default."""
        return self.params.get(key, quick if self.quick else standard)

    def measure(self, metric: str, value: float, unit: str, gpu: int | None = -1) -> None:
        """Record a measurement (``gpu`` defaults to this probe's GPU; None: the node)."""
        self.measurements.append(
            {"metric": metric, "gpu": self.gpu if gpu == -1 else gpu, "value": value, "unit": unit}
        )

    def not_available(self, metric: str, reason: str, gpu: int | None = -1) -> None:
        """Say plainly that ``metric`` could not be measured here, and why."""
        self.unavailable.append(
            {"metric": metric, "gpu": self.gpu if gpu == -1 else gpu, "reason": reason}
        )

    def result(self) -> dict[str, Any]:
        return {
            "measurements": self.measurements,
            "unavailable": self.unavailable,
            "info": self.info,
            "series": self.series,
        }


_REGISTRY: dict[str, ProbeSpec] = {}


def register(spec: ProbeSpec) -> ProbeSpec:
    """Add a probe (a later registration of the same name replaces the earlier one)."""
    if spec.scope not in ("gpu", "node"):
        raise ValueError(f"scope: must be 'gpu' or 'node', got {spec.scope!r}")
    if ":" not in spec.target:
        raise ValueError(f"target: must be 'module:function', got {spec.target!r}")
    _REGISTRY[spec.name] = spec
    return spec


def get(name: str) -> ProbeSpec:
    """The probe called ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"probe: unknown probe {name!r}; known: {sorted(_REGISTRY)}") from None


def probes_for(device_class: str) -> list[ProbeSpec]:
    """The probes of a device class, in the order they run."""
    return [s for s in _REGISTRY.values() if s.device_class == device_class]


_G = "millkernels.certify.probes.gpu"
_C = "millkernels.certify.probes.cpu"
_O = "millkernels.certify.probes.ops"
_BUILTIN = [
    # GPU, in run order: short health first, the sustained load last but one, SDC last.
    ProbeSpec(
        "hbm",
        "gpu",
        "gpu",
        f"{_G}:hbm",
        ("hbm_copy_gbps", "hbm_read_gbps", "hbm_write_gbps"),
        (90, 300),
        description="HBM copy/read/write bandwidth (millkernels.ops.probes, cuda backend)",
    ),
    ProbeSpec(
        "mem_pattern",
        "gpu",
        "gpu",
        f"{_G}:mem_pattern",
        ("mem_pattern_mismatches",),
        (90, 300),
        description="walking-ones, address and random patterns over HBM",
    ),
    ProbeSpec(
        "gemm",
        "gpu",
        "gpu",
        f"{_G}:gemm",
        ("gemm_bf16_tflops", "gemm_fp8_tflops"),
        (120, 300),
        description="dense bf16 and fp8 GEMM TFLOP/s, best of a few shapes",
    ),
    ProbeSpec(
        "pcie",
        "gpu",
        "gpu",
        f"{_G}:pcie",
        ("pcie_h2d_gbps", "pcie_d2h_gbps", "pcie_gen_load", "pcie_width_load"),
        (90, 180),
        parallel=False,
        description="pinned host<->device bandwidth; link state under load",
    ),
    ProbeSpec(
        "p2p",
        "gpu",
        "node",
        f"{_G}:p2p",
        ("p2p_min_gbps",),
        (120, 300),
        min_gpus=2,
        description="GPU-to-GPU copy bandwidth matrix",
    ),
    ProbeSpec(
        "allreduce",
        "gpu",
        "node",
        "millkernels.certify.probes.nccl:allreduce",
        ("nccl_allreduce_busbw_gbps",),
        (180, 420),
        min_gpus=2,
        description="NCCL all-reduce bus bandwidth through torch.distributed",
    ),
    # millkernels' own ops (certify/probes/ops.py): checked once against the reference, then
    # timed. Quick-mode timeouts leave room for a cold Triton cache (compile + autotune).
    ProbeSpec(
        "attention",
        "gpu",
        "gpu",
        f"{_O}:attention",
        (
            "attention_fwd_tflops",
            "attention_fwd_wrong",
            "attention_decode_gbps",
            "attention_decode_wrong",
        ),
        (120, 300),
        description="millkernels attention forward TFLOP/s and paged-decode GB/s, checked",
    ),
    ProbeSpec(
        "quant",
        "gpu",
        "gpu",
        f"{_O}:quant",
        (
            "quant_w4a16_gbps",
            "quant_w4a16_wrong",
            "quant_fp8_rowwise_tflops",
            "quant_fp8_rowwise_wrong",
        ),
        (120, 300),
        description="millkernels quantised matmul: w4a16 GB/s at M=16, fp8_rowwise TFLOP/s",
    ),
    ProbeSpec(
        "custom_allreduce",
        "gpu",
        "node",
        f"{_O}:custom_allreduce",
        (
            "custom_allreduce_busbw_gbps",
            "custom_allreduce_small_busbw_gbps",
            "custom_allreduce_wrong",
        ),
        (120, 300),
        min_gpus=2,
        description="millkernels CUDA-IPC all-reduce bus bandwidth at 512 KiB and 32 MiB",
    ),
    ProbeSpec(
        "sustained",
        "gpu",
        "gpu",
        f"{_G}:sustained",
        (
            "sustained_tflops",
            "sustained_power_w",
            "sustained_energy_j",
            "sustained_tflops_per_w",
            "throttle_thermal_frac",
            "throttle_power_frac",
            "sm_clock_cv",
            "pcie_gen_load",
            "pcie_width_load",
        ),
        (90, 240),
        description="bf16 GEMM load; NVML energy, power, throttle time, clock stability",
    ),
    ProbeSpec(
        "sdc",
        "gpu",
        "gpu",
        f"{_G}:sdc",
        ("sdc_self_mismatches",),
        (90, 240),
        description="identical GEMMs on every GPU, compared bitwise",
    ),
    # CPU profile.
    ProbeSpec(
        "cpu_membw",
        "cpu",
        "gpu",
        f"{_C}:membw",
        ("cpu_copy_gbps",),
        (60, 180),
        description="host memory copy bandwidth (torch copy on large buffers)",
    ),
    ProbeSpec(
        "cpu_gemm",
        "cpu",
        "gpu",
        f"{_C}:gemm",
        ("cpu_gemm_gflops",),
        (60, 180),
        description="fp32 GEMM GFLOP/s through torch",
    ),
    ProbeSpec(
        "cpu_pattern",
        "cpu",
        "gpu",
        f"{_C}:pattern",
        ("mem_pattern_mismatches",),
        (60, 300),
        description="memory pattern test on host memory (reference backend)",
    ),
    ProbeSpec(
        "cpu_sustained",
        "cpu",
        "gpu",
        f"{_C}:sustained",
        ("cpu_sustained_gflops", "cpu_energy_j", "cpu_power_w", "cpu_gflops_per_w"),
        (60, 180),
        description="fp32 GEMM load with RAPL package energy where readable",
    ),
    ProbeSpec(
        "cpu_sdc",
        "cpu",
        "gpu",
        f"{_C}:sdc",
        ("sdc_self_mismatches",),
        (60, 180),
        description="identical GEMMs repeated, compared bitwise",
    ),
    # Test probes: how the runner records a crash and a hang (never planned for a real run).
    ProbeSpec("selftest_ok", "test", "gpu", "millkernels.certify.probes.selftest:ok", ()),
    ProbeSpec("selftest_crash", "test", "gpu", "millkernels.certify.probes.selftest:crash", ()),
    ProbeSpec("selftest_hang", "test", "gpu", "millkernels.certify.probes.selftest:hang", ()),
    ProbeSpec("selftest_raise", "test", "gpu", "millkernels.certify.probes.selftest:fail", ()),
]
for _spec in _BUILTIN:
    register(_spec)
