"""CPU-profile probes: host memory bandwidth, fp32 GEMM, the pattern test on host memory,
a sustained GEMM load with RAPL energy, and a bitwise repeatability check.

Sizes are small in quick mode so that ``certify --quick`` on a CPU takes well under a minute.
"""

from __future__ import annotations

import hashlib
import time

from millkernels.certify.probes.registry import ProbeContext


def _best(fn, iters: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def membw(ctx: ProbeContext) -> None:
    """``cpu_copy_gbps``: bytes read + written per second by ``dst.copy_(src)``."""
    import torch

    nbytes = int(ctx.param("bytes", 64 << 20, 512 << 20))
    src = torch.ones(nbytes // 4, dtype=torch.int32)
    dst = torch.empty_like(src)
    t = _best(lambda: dst.copy_(src), int(ctx.param("iters", 5, 10)))
    if not torch.equal(dst, src):
        raise RuntimeError("host copy produced a wrong result")
    ctx.measure("cpu_copy_gbps", 2 * nbytes / t / 1e9, "GB/s")
    ctx.info.update(bytes=nbytes, threads=torch.get_num_threads())


def gemm(ctx: ProbeContext) -> None:
    """``cpu_gemm_gflops``: fp32 ``a @ b``, best of a few runs."""
    import torch

    n = int(ctx.param("n", 1024, 2048))
    a, b = torch.randn(n, n), torch.randn(n, n)
    t = _best(lambda: a @ b, int(ctx.param("iters", 5, 10)))
    ctx.measure("cpu_gemm_gflops", 2 * n**3 / t / 1e9, "GFLOP/s")
    ctx.info.update(n=n, dtype="float32", threads=torch.get_num_threads())


def pattern(ctx: ProbeContext) -> None:
    """``mem_pattern_mismatches`` over a host buffer, three patterns (reference backend)."""
    import torch

    from millkernels.ops.probes import pattern_test

    nbytes = int(ctx.param("bytes", 4 << 20, 64 << 20))
    buf = torch.empty(nbytes // 4, dtype=torch.int32)
    total, first = 0, {}
    for seed, pat in enumerate(("walking_ones", "address", "random")):
        rep = pattern_test(buf, pat, seed=seed + 1, backend="reference")
        total += rep.mismatches
        if rep.mismatches:
            first[pat] = [(b.index, b.expected, b.actual) for b in rep.bad[:4]]
    ctx.measure("mem_pattern_mismatches", total, "words")
    ctx.info.update(bytes=nbytes, first_bad=first, backend="reference")


def sustained(ctx: ProbeContext) -> None:
    """fp32 GEMM for a fixed window; RAPL package energy over it where readable."""
    import torch

    from millkernels.certify import power

    seconds = float(ctx.param("seconds", 2.0, 10.0))
    n = int(ctx.param("n", 512, 1024))
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    try:
        domains = power.rapl_domains()
        e0 = power.read_uj(domains)
        why = None
    except power.RaplUnavailable as exc:
        domains, e0, why = [], [], str(exc)
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        count += 1
    dt = time.perf_counter() - t0
    gflops = 2 * n**3 * count / dt / 1e9
    ctx.measure("cpu_sustained_gflops", gflops, "GFLOP/s")
    if why is None:
        try:
            joules = power.delta_joules(domains, e0, power.read_uj(domains))
        except power.RaplUnavailable as exc:
            why = str(exc)
    if why is None:
        watts = joules / dt
        ctx.measure("cpu_energy_j", joules, "J")
        ctx.measure("cpu_power_w", watts, "W")
        ctx.measure("cpu_gflops_per_w", gflops / watts if watts > 0 else float("nan"), "GFLOP/s/W")
        ctx.info["rapl_domains"] = [d.name for d in domains]
    else:
        for m in ("cpu_energy_j", "cpu_power_w", "cpu_gflops_per_w"):
            ctx.not_available(m, f"RAPL unavailable: {why}")
    ctx.info.update(seconds=round(dt, 3), n=n, gemms=count)


def sdc(ctx: ProbeContext) -> None:
    """``sdc_self_mismatches``: the same fp32 GEMM repeated must give the same bits."""
    import torch

    n = int(ctx.param("n", 512, 1024))
    reps = int(ctx.param("reps", 4, 10))
    g = torch.Generator().manual_seed(20261125)
    a = torch.randn(n, n, generator=g)
    b = torch.randn(n, n, generator=g)
    digests = [hashlib.sha256((a @ b).numpy().tobytes()).hexdigest() for _ in range(reps)]
    ctx.measure("sdc_self_mismatches", sum(d != digests[0] for d in digests), "runs")
    ctx.info.update(digest=digests[0], reps=reps, n=n)
