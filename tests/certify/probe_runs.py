"""Run one registered probe in its own process on the CPU, as certify would."""

from __future__ import annotations

from typing import Any

from millkernels.certify.probes.registry import get
from millkernels.certify.probes.runner import SubprocessRunner


def run_probe(
    name: str, *, mode: str | None = None, gpu: int | None = None, timeout: float = 120, **kw: Any
) -> dict[str, Any]:
    """The record of probe ``name`` (``kw``: ``params``, ``env``); ``mode`` None is the
    runner's default."""
    return SubprocessRunner(mode=mode).run(
        get(name),
        gpu=gpu,
        gpus=[] if gpu is None else [gpu],
        uuids=[],
        device="cpu",
        quick=True,
        timeout=timeout,
        **kw,
    )
