"""Fixtures for the benchmark-harness tests: tiny sizes and a fresh ceilings cache."""

from __future__ import annotations

import pytest

from millkernels.bench import ceilings
from millkernels.bench.suites import probes as probes_suite


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the probes suite and the CPU ceilings use tiny sizes and short timings."""
    ceilings.clear_cache()
    monkeypatch.setattr(probes_suite, "default_nbytes", lambda ctx: 64 << 10)
    monkeypatch.setattr(ceilings, "copy_nbytes", lambda device, quick: 256 << 10)
    monkeypatch.setattr(ceilings, "CPU_MATMUL_SHAPES", ((64, 64, 64),))
    monkeypatch.setattr(ceilings, "CPU_MATMUL_SHAPES_QUICK", ((64, 64, 64),))
    yield
    ceilings.clear_cache()
