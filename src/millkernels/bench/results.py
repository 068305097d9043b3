"""Reading stored benchmark results, whatever wrote them, as :class:`~millkernels.bench.rows.Row`.

Two formats are read:

- ``*.jsonl``: rows written by ``millkernels bench --out`` and ``benchmarks/gpu_campaign.sh``;
- ``*.json`` from pytest-benchmark (``--benchmark-json`` or its autosave storage): each
  benchmark becomes a row. The suite in ``benchmarks/pytest_suite`` stores the row's fields in
  ``extra_info`` (op, shape, dtype, backend, p20/p80, FLOPs, bytes), so its benchmarks get the
  same identity as any row; other pytest-benchmark results fall back to the test name and
  pytest-benchmark's quartiles (q1/q3 standing in for p20/p80).

Rows from the pytest suite are given the suite ``pytest.<family>`` so they never share a key
with the rows of ``millkernels bench`` (the two time differently).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from millkernels.bench.rows import Row, read_jsonl

PYTEST_SUITE_PREFIX = "pytest."

#: Keys the pytest suite puts into ``extra_info`` to give a benchmark a row's identity.
ROW_INFO_KEYS = ("family", "op", "shape", "dtype", "backend", "flops", "bytes")


def load_rows(path: str | Path) -> list[Row]:
    """Rows stored in ``path``: JSON lines of rows, or a pytest-benchmark JSON file.

    Raises ``ValueError`` when the file is neither, ``OSError`` when it cannot be read.
    """
    path = Path(path)
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return read_jsonl(path)  # JSON lines under another suffix
    if isinstance(data, dict) and "benchmarks" in data and "machine_info" in data:
        return rows_from_pytest_benchmark(data)
    if isinstance(data, list):
        return [Row.from_dict(d) for d in data]  # `millkernels bench --format json` output
    if isinstance(data, dict) and "op" in data and "median_us" in data:
        return [Row.from_dict(data)]
    raise ValueError(f"{path}: neither benchmark rows nor a pytest-benchmark result file")


def load_many(paths: Iterable[str | Path]) -> list[Row]:
    """Rows of every file in ``paths``, in order."""
    rows: list[Row] = []
    for p in paths:
        rows += load_rows(p)
    return rows


def rows_from_pytest_benchmark(data: dict[str, Any]) -> list[Row]:
    """Rows for the benchmarks of one pytest-benchmark JSON document."""
    machine = data.get("machine_info") or {}
    gpu = machine.get("millkernels") or {}
    commit = data.get("commit_info") or {}
    device = gpu.get("device") or "cpu"
    rows = []
    for bench in data.get("benchmarks") or []:
        stats = bench.get("stats") or {}
        info = dict(bench.get("extra_info") or {})
        if "median" not in stats:
            continue
        median_us = float(stats["median"]) * 1e6
        family = info.get("family")
        if family:
            suite = PYTEST_SUITE_PREFIX + str(family)
            op, shape = str(info.get("op", bench.get("name", ""))), info.get("shape", "")
            dtype, backend = str(info.get("dtype", "")), str(info.get("backend", ""))
        else:  # a benchmark not written for millkernels: identified by its test id
            suite, op, shape = "pytest", str(bench.get("fullname") or bench.get("name")), ""
            dtype = backend = ""
        p20 = info.get("p20_us", float(stats.get("q1", stats["median"])) * 1e6)
        p80 = info.get("p80_us", float(stats.get("q3", stats["median"])) * 1e6)
        flops, nbytes = info.get("flops"), info.get("bytes")
        extra = {k: v for k, v in info.items() if k not in (*ROW_INFO_KEYS, "p20_us", "p80_us")}
        extra["pytest_name"] = bench.get("fullname") or bench.get("name")
        rows.append(
            Row(
                op=op,
                shape=shape,
                dtype=dtype,
                backend=backend,
                median_us=median_us,
                p20_us=float(p20),
                p80_us=float(p80),
                n=int(stats.get("rounds", 0)),
                suite=suite,
                timer=str(info.get("timer") or (bench.get("options") or {}).get("timer", "")),
                flops=flops,
                bytes=nbytes,
                tflops=flops / (median_us * 1e-6) / 1e12 if flops else None,
                gbps=nbytes / (median_us * 1e-6) / 1e9 if nbytes else None,
                device=device,
                clocks=gpu.get("clocks"),
                power_limit_w=gpu.get("power_limit_w"),
                driver=gpu.get("driver"),
                versions=dict(gpu.get("versions") or {}),
                git_sha=str(gpu.get("git_sha") or commit.get("id") or "unknown"),
                command=str(gpu.get("command") or ""),
                timestamp=str(data.get("datetime") or ""),
                extra=extra,
            )
        )
    return rows
