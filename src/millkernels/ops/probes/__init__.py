"""Memory probes (bandwidth and pattern tests) used by certification and benchmarks."""

from millkernels.ops.probes.api import (
    mem_copy,
    mem_read,
    mem_write,
    pattern_check,
    pattern_test,
    pattern_write,
)
from millkernels.ops.probes.capabilities import TABLE
from millkernels.ops.probes.patterns import PATTERNS, BadWord, PatternReport

__all__ = [
    "PATTERNS",
    "TABLE",
    "BadWord",
    "PatternReport",
    "mem_copy",
    "mem_read",
    "mem_write",
    "pattern_check",
    "pattern_test",
    "pattern_write",
]
