"""Benchmark harness: timing, FLOP/byte counting, result rows, ceilings and suites.

A family adds a suite with :func:`suite` in ``millkernels/bench/suites/<name>.py`` (see
:mod:`millkernels.bench.registry`). Importing this
package is cheap: torch, triton and pynvml are imported only when something runs.
"""

from millkernels.bench.context import BenchContext, SuiteUnavailable, autotune_config
from millkernels.bench.registry import Suite, register_suite, suite, suites
from millkernels.bench.rows import Row, read_jsonl, write_jsonl
from millkernels.bench.timing import Timing, measure

__all__ = [
    "BenchContext",
    "Row",
    "Suite",
    "SuiteUnavailable",
    "Timing",
    "autotune_config",
    "measure",
    "read_jsonl",
    "register_suite",
    "suite",
    "suites",
    "write_jsonl",
]
