"""GPU probes. Each runs in its own process; a per-GPU probe sees only its GPU (``cuda:0``,
selected by UUID through ``CUDA_VISIBLE_DEVICES``), a node probe sees all GPUs in NVML order.

Sizes (``quick`` / standard) are chosen to finish well inside the probe timeouts on an H100;
every size can be overridden through ``ctx.params`` (tests run the device-agnostic ones on
the CPU with tiny sizes).
"""

from __future__ import annotations

import functools
import hashlib
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

from millkernels.certify.probes.registry import ProbeContext


def _device(ctx: ProbeContext) -> Any:
    import torch

    return torch.device("cuda", 0) if ctx.device == "cuda" else torch.device("cpu")


def _sync(dev: Any) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def best_time(fn: Callable[[], Any], dev: Any, iters: int, warmup: int = 2) -> float:
    """Best seconds per call of ``fn`` over ``iters`` calls (CUDA events on a GPU)."""
    import torch

    for _ in range(warmup):
        fn()
    _sync(dev)
    best = float("inf")
    for _ in range(iters):
        if dev.type == "cuda":
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            e.synchronize()
            best = min(best, s.elapsed_time(e) / 1e3)
        else:
            t = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t)
    return best


def hbm(ctx: ProbeContext) -> None:
    """``hbm_copy_gbps`` (bytes read + written), ``hbm_read_gbps``, ``hbm_write_gbps``."""
    import torch

    from millkernels.ops.probes import mem_copy, mem_read, mem_write

    dev = _device(ctx)
    backend = ctx.params.get("backend", "auto")
    nbytes = int(ctx.param("bytes", 1 << 30, 4 << 30)) // 16 * 16
    iters = int(ctx.param("iters", 10, 30))
    src = torch.empty(nbytes // 4, dtype=torch.int32, device=dev)
    dst = torch.empty_like(src)
    mem_write(src, 0x5A5A_A5A5, backend=backend)
    t_copy = best_time(lambda: mem_copy(dst, src, backend=backend), dev, iters)
    if int(mem_read(dst, backend=backend)) != int(mem_read(src, backend=backend)):
        raise RuntimeError("mem_copy produced a wrong result")
    t_read = best_time(lambda: mem_read(src, backend=backend), dev, iters)
    t_write = best_time(lambda: mem_write(dst, 0x1234_5678, backend=backend), dev, iters)
    ctx.measure("hbm_copy_gbps", 2 * nbytes / t_copy / 1e9, "GB/s")
    ctx.measure("hbm_read_gbps", nbytes / t_read / 1e9, "GB/s")
    ctx.measure("hbm_write_gbps", nbytes / t_write / 1e9, "GB/s")
    ctx.info.update(bytes=nbytes, iters=iters, backend=backend)


def mem_pattern(ctx: ProbeContext) -> None:
    """``mem_pattern_mismatches`` over a large share of free memory, three patterns."""
    import torch

    from millkernels.ops.probes import pattern_test

    dev = _device(ctx)
    backend = ctx.params.get("backend", "auto")
    if "bytes" in ctx.params:
        nbytes = int(ctx.params["bytes"])
    else:
        free, _ = torch.cuda.mem_get_info(dev)
        nbytes = int(free * ctx.param("fraction", 0.25, 0.85))
    buf = None
    while buf is None:  # back off on fragmentation
        try:
            buf = torch.empty(nbytes // 16 * 4, dtype=torch.int32, device=dev)
        except torch.OutOfMemoryError:
            nbytes = int(nbytes * 0.9)
            if nbytes < 1 << 20:
                raise
    total, first = 0, {}
    for seed, pat in enumerate(("walking_ones", "address", "random")):
        rep = pattern_test(buf, pat, seed=seed + 1, backend=backend)
        total += rep.mismatches
        if rep.mismatches:
            first[pat] = [(b.index, b.expected, b.actual) for b in rep.bad[:4]]
    ctx.measure("mem_pattern_mismatches", total, "words")
    ctx.info.update(bytes=buf.numel() * 4, first_bad=first, backend=backend)


def gemm(ctx: ProbeContext) -> None:
    """``gemm_bf16_tflops`` and ``gemm_fp8_tflops``: best over a few large shapes."""
    import torch

    dev = _device(ctx)
    shapes = ctx.param(
        "shapes",
        [[8192, 8192, 8192]],
        [[8192, 8192, 8192], [16384, 8192, 8192], [8192, 8192, 16384]],
    )
    iters = int(ctx.param("iters", 10, 25))
    best_bf16, best_fp8, per_shape = 0.0, 0.0, []
    for m, n, k in shapes:
        a = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
        b = torch.randn(k, n, device=dev, dtype=torch.bfloat16)
        t = best_time(functools.partial(torch.matmul, a, b), dev, iters)
        tf = 2 * m * n * k / t / 1e12
        best_bf16 = max(best_bf16, tf)
        per_shape.append({"shape": [m, n, k], "dtype": "bf16", "tflops": round(tf, 2)})
    ctx.measure("gemm_bf16_tflops", best_bf16, "TFLOP/s")
    why = _fp8_unsupported(dev)
    if why:
        ctx.not_available("gemm_fp8_tflops", why)
    else:
        for m, n, k in shapes:
            a = torch.randn(m, k, device=dev).to(torch.float8_e4m3fn)
            b = torch.randn(n, k, device=dev).to(torch.float8_e4m3fn).t()  # column-major
            one = torch.tensor(1.0, device=dev)

            def mm(a=a, b=b, one=one):
                return torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)

            t = best_time(mm, dev, iters)
            tf = 2 * m * n * k / t / 1e12
            best_fp8 = max(best_fp8, tf)
            per_shape.append({"shape": [m, n, k], "dtype": "fp8_e4m3", "tflops": round(tf, 2)})
        ctx.measure("gemm_fp8_tflops", best_fp8, "TFLOP/s")
    ctx.info.update(shapes=per_shape, iters=iters)


def _fp8_unsupported(dev: Any) -> str | None:
    import torch

    if dev.type != "cuda":
        return "fp8 GEMM needs a CUDA GPU"
    if not hasattr(torch, "float8_e4m3fn") or not hasattr(torch, "_scaled_mm"):
        return "this torch has no float8_e4m3fn / _scaled_mm"
    major, minor = torch.cuda.get_device_capability(dev)
    if (major, minor) < (8, 9):
        return f"fp8 tensor cores need sm_89 or newer; this GPU is sm_{major}{minor}"
    return None


def _nvml_for(ctx: ProbeContext) -> tuple[Any, int | None, str | None]:
    """(NvmlLayer, NVML index of this probe's GPU, why not) for in-probe NVML readings."""
    from millkernels.certify.preflight import NvmlLayer

    layer = NvmlLayer()
    why = layer.open()
    if why:
        return layer, None, why
    idx = layer.index_of_uuid(ctx.uuids[0]) if ctx.uuids else ctx.gpu
    if idx is None:
        return layer, None, "NVML does not know this GPU's UUID"
    return layer, idx, None


def pcie(ctx: ProbeContext) -> None:
    """Pinned host<->device copy bandwidth, and the link's generation and width under load."""
    import torch

    dev = _device(ctx)
    nbytes = int(ctx.param("bytes", 256 << 20, 1 << 30))
    iters = int(ctx.param("iters", 5, 20))
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    devbuf = torch.empty(nbytes, dtype=torch.uint8, device=dev)
    t_h2d = best_time(lambda: devbuf.copy_(host, non_blocking=True), dev, iters)
    t_d2h = best_time(lambda: host.copy_(devbuf, non_blocking=True), dev, iters)
    ctx.measure("pcie_h2d_gbps", nbytes / t_h2d / 1e9, "GB/s")
    ctx.measure("pcie_d2h_gbps", nbytes / t_d2h / 1e9, "GB/s")
    layer, idx, why = _nvml_for(ctx)
    if why:
        for m in ("pcie_gen_load", "pcie_width_load"):
            ctx.not_available(m, why)
    else:
        gens, widths = [], []
        for _ in range(3):  # read the link while transfers are in flight
            for _ in range(8):
                devbuf.copy_(host, non_blocking=True)
            time.sleep(0.02)
            s = layer.sample(idx)
            gens.append(s["pcie_gen_current"])
            widths.append(s["pcie_width_current"])
            _sync(dev)
        gens = [g for g in gens if g is not None]
        widths = [w for w in widths if w is not None]
        if gens:
            ctx.measure("pcie_gen_load", max(gens), "gen")
        if widths:
            ctx.measure("pcie_width_load", max(widths), "lanes")
    ctx.info.update(bytes=nbytes, iters=iters)


def p2p(ctx: ProbeContext) -> None:
    """GPU-to-GPU copy bandwidth matrix; ``p2p_min_gbps`` per GPU (worst link in or out)."""
    import torch

    n = torch.cuda.device_count()
    nvml = ctx.gpus or list(range(n))
    nbytes = int(ctx.param("bytes", 256 << 20, 1 << 30))
    reps = int(ctx.param("reps", 3, 5))
    bufs = [torch.empty(nbytes, dtype=torch.uint8, device=f"cuda:{i}") for i in range(n)]
    gbps: dict[tuple[int, int], float] = {}  # (from, to) -> copy bandwidth
    peer = [[i == j or torch.cuda.can_device_access_peer(i, j) for j in range(n)] for i in range(n)]
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            bufs[j].copy_(bufs[i])
            torch.cuda.synchronize(i)
            torch.cuda.synchronize(j)
            best = float("inf")
            for _ in range(reps):
                t = time.perf_counter()
                for _ in range(4):
                    bufs[j].copy_(bufs[i])
                torch.cuda.synchronize(i)
                torch.cuda.synchronize(j)
                best = min(best, (time.perf_counter() - t) / 4)
            gbps[i, j] = round(nbytes / best / 1e9, 2)
    for k in range(n):
        links = [gbps[k, j] for j in range(n) if j != k] + [gbps[j, k] for j in range(n) if j != k]
        ctx.measure("p2p_min_gbps", min(links), "GB/s", gpu=nvml[k])
    matrix = [[gbps.get((i, j)) for j in range(n)] for i in range(n)]  # None: the diagonal
    ctx.info.update(matrix_gbps=matrix, peer_access=peer, gpus=nvml, bytes=nbytes)


def sustained(ctx: ProbeContext) -> None:
    """bf16 GEMM load for a fixed window. NVML total-energy deltas give energy and average
    power (hence TFLOP/s per watt); accumulated clock-event times give the throttle fractions;
    SM clock samples give clock stability (coefficient of variation)."""
    import torch

    from millkernels.certify.preflight import POWER_PROBLEM_BITS, THERMAL_BITS

    dev = _device(ctx)
    n = int(ctx.param("n", 8192, 8192))
    seconds = float(ctx.param("seconds", 10.0, 60.0))
    warmup = float(ctx.param("warmup_s", 2.0, 5.0))
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    c = torch.empty(n, n, device=dev, dtype=torch.bfloat16)
    layer, idx, why = _nvml_for(ctx)
    t_end = time.monotonic() + warmup
    while time.monotonic() < t_end:
        for _ in range(4):
            torch.mm(a, b, out=c)
        _sync(dev)
    samples: list[dict[str, Any]] = []
    stop = threading.Event()

    def sampler() -> None:
        while not stop.is_set():
            samples.append(layer.sample(idx))
            stop.wait(0.2)

    thread = threading.Thread(target=sampler, daemon=True)
    s0 = None  # the counters at the start; None without NVML
    if why is None:
        s0 = layer.sample(idx)
        thread.start()
    t0, count = time.monotonic(), 0
    while time.monotonic() - t0 < seconds:
        for _ in range(8):
            torch.mm(a, b, out=c)
        count += 8
        _sync(dev)
    t1 = time.monotonic()
    window = t1 - t0
    tflops = 2 * n**3 * count / window / 1e12
    ctx.measure("sustained_tflops", tflops, "TFLOP/s")
    ctx.info.update(n=n, seconds=round(window, 3), warmup_s=warmup, gemms=count)
    nvml_metrics = (
        "sustained_power_w",
        "sustained_energy_j",
        "sustained_tflops_per_w",
        "throttle_thermal_frac",
        "throttle_power_frac",
        "sm_clock_cv",
        "pcie_gen_load",
        "pcie_width_load",
    )
    if s0 is None:
        for m in nvml_metrics:
            ctx.not_available(m, f"NVML unavailable: {why}")
        return
    s1 = layer.sample(idx)
    stop.set()
    thread.join(timeout=2)
    if s0["energy_mj"] is not None and s1["energy_mj"] is not None:
        joules = (s1["energy_mj"] - s0["energy_mj"]) / 1000.0
        watts = joules / window
        ctx.measure("sustained_energy_j", joules, "J")
        ctx.measure("sustained_power_w", watts, "W")
        ctx.measure(
            "sustained_tflops_per_w", tflops / watts if watts > 0 else float("nan"), "TFLOP/s/W"
        )
    else:
        for m in ("sustained_energy_j", "sustained_power_w", "sustained_tflops_per_w"):
            ctx.not_available(m, "NVML total energy counter not readable (needs Volta or newer)")
    inside = [s for s in samples if t0 <= s["t"] <= t1] or samples
    reasons = [s["clock_event_reasons"] for s in inside if s["clock_event_reasons"] is not None]
    # Thermal: the larger of the accumulated violation counter and the share of samples with a
    # thermal reason bit (the counter catches short events between samples; a counter that
    # claims more than the window is not trusted).
    thermal = []
    if s0["thermal_ns"] is not None and s1["thermal_ns"] is not None:
        frac = (s1["thermal_ns"] - s0["thermal_ns"]) / (window * 1e9)
        if 0 <= frac <= 1.1:
            thermal.append(min(frac, 1.0))
    if reasons:
        thermal.append(sum(1 for r in reasons if r & THERMAL_BITS) / len(reasons))
        power = sum(1 for r in reasons if r & POWER_PROBLEM_BITS) / len(reasons)
        ctx.measure("throttle_power_frac", power, "fraction")
    else:
        ctx.not_available("throttle_power_frac", "clock-event reasons not readable")
    if thermal:
        ctx.measure("throttle_thermal_frac", max(thermal), "fraction")
    else:
        ctx.not_available("throttle_thermal_frac", "no thermal violation counter or reasons")
    ctx.info["samples"] = len(inside)
    clocks = [s["sm_clock_mhz"] for s in inside if s["sm_clock_mhz"]]
    if len(clocks) >= 2:
        ctx.measure("sm_clock_cv", statistics.pstdev(clocks) / statistics.mean(clocks), "fraction")
    gens = [s["pcie_gen_current"] for s in inside if s["pcie_gen_current"] is not None]
    widths = [s["pcie_width_current"] for s in inside if s["pcie_width_current"] is not None]
    if gens:
        ctx.measure("pcie_gen_load", max(gens), "gen")
    if widths:
        ctx.measure("pcie_width_load", max(widths), "lanes")
    step = max(1, len(inside) // 240)
    pick = inside[::step]
    ctx.series = {
        "t": [round(s["t"] - t0, 2) for s in pick],
        "power_w": [s["power_w"] for s in pick],
        "sm_clock_mhz": [s["sm_clock_mhz"] for s in pick],
        "temperature_c": [s["temperature_c"] for s in pick],
    }


def sdc(ctx: ProbeContext) -> None:
    """The same bf16 GEMM (inputs from a fixed seed) repeated; the output's sha256 goes into
    ``info.digest`` for the cross-GPU comparison; ``sdc_self_mismatches`` counts repeats that
    differ from the first."""
    import torch

    dev = _device(ctx)
    n = int(ctx.param("n", 4096, 8192))
    reps = int(ctx.param("reps", 3, 8))
    g = torch.Generator().manual_seed(20261125)
    a = torch.randn(n, n, generator=g).to(torch.bfloat16).to(dev)
    b = torch.randn(n, n, generator=g).to(torch.bfloat16).to(dev)
    digests = []
    for _ in range(reps):
        c = a @ b
        digests.append(hashlib.sha256(c.view(torch.int16).cpu().numpy().tobytes()).hexdigest())
    ctx.measure("sdc_self_mismatches", sum(d != digests[0] for d in digests), "runs")
    ctx.info.update(digest=digests[0], reps=reps, n=n)
