"""Certification probes: each runs in its own process with a timeout.

The registry (:mod:`.registry`) names every probe, the metrics it produces and where its code
lives; :mod:`.run` is the process entry point (``python -m millkernels.certify.probes.run``);
:mod:`.runner` starts it and records crashes and hangs. To add a probe (attention, quantised
matmul, custom all-reduce, ...): write ``fn(ctx: ProbeContext) -> None`` that calls
``ctx.measure(...)``, register a :class:`ProbeSpec` pointing at it, and give its metrics floors
in the target profiles (metrics without a floor are recorded, not judged).
"""

from millkernels.certify.probes.registry import ProbeContext, ProbeSpec, get, probes_for, register

__all__ = ["ProbeContext", "ProbeSpec", "get", "probes_for", "register"]
