"""Stored baselines: per GPU SKU, the time of every benchmark over repeated runs.

A baseline lives in ``benchmarks/baselines/<sku>.json`` where ``<sku>`` is the GPU name in
lower case with every run of other characters replaced by ``-`` (``NVIDIA H100 80GB HBM3`` ->
``nvidia-h100-80gb-hbm3``; the CPU is ``cpu``), the same slug as the GPU campaign's result
files. It is made from result files of repeated runs on that card (see
``benchmarks/baselines/README.md``)::

    python -m millkernels.bench.baseline create run1.jsonl run2.jsonl run3.jsonl \\
        --out benchmarks/baselines/nvidia-h100-80gb-hbm3.json
    python -m millkernels.bench.baseline sku      # the SKU slug of this machine's GPU 0
    python -m millkernels.bench.baseline path     # benchmarks/baselines/<that sku>.json
    python -m millkernels.bench.baseline show FILE

Format (``"format": "millkernels-baseline"``, ``"schema": 1``): ``sku``, ``device``,
``example`` (true for a file that only illustrates the format: never a reference to gate on),
``note``, ``created``, ``source`` (git sha, driver, power limit, versions, commands, files) and
``benchmarks``: one object per benchmark with its key (suite, op, shape, dtype, backend), its
``median_us`` (median of the run medians), ``runs_us`` (each run's median), ``p20_us``/``p80_us``
and ``spread`` (see :mod:`millkernels.bench.noise`; recomputed from the runs when read).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from millkernels.bench.noise import Key, Measurement, aggregate
from millkernels.bench.results import load_many, load_rows
from millkernels.bench.rows import Row

FORMAT = "millkernels-baseline"
SCHEMA = 1
DEFAULT_DIR = Path("benchmarks") / "baselines"
KEY_FIELDS = ("suite", "op", "shape", "dtype", "backend")


def sku_slug(device: str) -> str:
    """The SKU slug of a device name: lower case, other characters runs become ``-``."""
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")
    if not slug:
        raise ValueError(f"device: no letters or digits in {device!r}")
    return slug


def detect_device() -> str:
    """This machine's benchmark device: GPU 0's name, or "cpu" (asks the GPU when called)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return "cpu"


def baseline_path(sku: str, directory: str | Path = DEFAULT_DIR) -> Path:
    """Where the baseline of ``sku`` is kept."""
    return Path(directory) / f"{sku}.json"


@dataclass
class Baseline:
    """The reference times of one device's benchmarks."""

    device: str
    entries: dict[Key, Measurement]
    sku: str = ""
    example: bool = False
    note: str = ""
    created: str = ""
    source: dict[str, Any] = field(default_factory=dict)
    path: str = ""

    def __post_init__(self) -> None:
        if not self.sku:
            self.sku = sku_slug(self.device)

    @classmethod
    def from_rows(
        cls, rows: Sequence[Row], *, sku: str = "", example: bool = False, note: str = ""
    ) -> Baseline:
        """A baseline from result rows, each row of a key being one run. All rows must come
        from one device (ValueError otherwise)."""
        if not rows:
            raise ValueError("rows: no benchmark rows to make a baseline from")
        devices = sorted({r.device for r in rows})
        if len(devices) != 1:
            raise ValueError(f"rows: a baseline is for one device; these are from {devices}")
        last = rows[-1]
        source = {
            "git_sha": sorted({r.git_sha for r in rows}),
            "driver": last.driver,
            "power_limit_w": last.power_limit_w,
            "versions": last.versions,
            "commands": sorted({r.command for r in rows if r.command}),
        }
        return cls(
            device=devices[0],
            entries=aggregate(rows),
            sku=sku,
            example=example,
            note=note,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            source=source,
        )

    def to_dict(self) -> dict[str, Any]:
        benchmarks = []
        for key, m in self.entries.items():
            item: dict[str, Any] = dict(zip(KEY_FIELDS, key, strict=True))
            item.update(
                median_us=round(m.center_us, 4),
                runs_us=[round(t, 4) for t in m.runs_us],
                p20_us=round(m.p20_us, 4),
                p80_us=round(m.p80_us, 4),
                spread=round(m.spread, 5),
            )
            benchmarks.append(item)
        return {
            "format": FORMAT,
            "schema": SCHEMA,
            "sku": self.sku,
            "device": self.device,
            "example": self.example,
            "note": self.note,
            "created": self.created,
            "source": self.source,
            "benchmarks": benchmarks,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, path: str = "") -> Baseline:
        where = path or "baseline"
        if data.get("format") != FORMAT:
            raise ValueError(f"{where}: not a millkernels baseline (format {data.get('format')!r})")
        if int(data.get("schema", 0)) > SCHEMA:
            raise ValueError(f"{where}: schema {data['schema']} is newer than this reader")
        entries: dict[Key, Measurement] = {}
        for i, item in enumerate(data.get("benchmarks") or []):
            try:
                key = tuple(str(item[f]) for f in KEY_FIELDS)
                runs = item.get("runs_us") or [item["median_us"]]
                entries[key] = Measurement(  # type: ignore[index]
                    runs_us=tuple(float(t) for t in runs),
                    p20_us=float(item.get("p20_us", item["median_us"])),
                    p80_us=float(item.get("p80_us", item["median_us"])),
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{where}: benchmarks[{i}] is malformed: {exc}") from exc
        return cls(
            device=str(data.get("device") or ""),
            entries=entries,
            sku=str(data.get("sku") or ""),
            example=bool(data.get("example", False)),
            note=str(data.get("note") or ""),
            created=str(data.get("created") or ""),
            source=dict(data.get("source") or {}),
            path=path,
        )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")
        return path


def load_baseline(path: str | Path) -> Baseline:
    """A baseline file, or any result file (rows JSONL, pytest-benchmark JSON) taken as one.

    Raises ``OSError`` when it cannot be read and ``ValueError`` when it is malformed.
    """
    path = Path(path)
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and data.get("format") == FORMAT:
            return Baseline.from_dict(data, path=str(path))
    base = Baseline.from_rows(load_rows(path), note=f"made from the results in {path}")
    base.path = str(path)
    return base


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m millkernels.bench.baseline")
    sub = parser.add_subparsers(dest="cmd", required=True)
    make = sub.add_parser("create", help="make a baseline from result files of repeated runs")
    make.add_argument("results", nargs="+", help="rows .jsonl or pytest-benchmark .json files")
    make.add_argument("--out", required=True, help="baseline file to write")
    make.add_argument("--sku", default="", help="SKU slug (default: from the rows' device)")
    make.add_argument("--example", action="store_true", help="mark it as a format example")
    make.add_argument("--note", default="", help="free text stored in the file")
    sub.add_parser("sku", help="print this machine's SKU slug (GPU 0, or cpu)")
    where = sub.add_parser("path", help="print the baseline path for this machine's SKU")
    where.add_argument("--dir", default=str(DEFAULT_DIR))
    show = sub.add_parser("show", help="print a baseline's benchmarks")
    show.add_argument("baseline")
    args = parser.parse_args(argv)

    if args.cmd == "sku":
        print(sku_slug(detect_device()))
        return 0
    if args.cmd == "path":
        print(baseline_path(sku_slug(detect_device()), args.dir))
        return 0
    try:
        if args.cmd == "show":
            _show(load_baseline(args.baseline))
            return 0
        base = Baseline.from_rows(
            load_many(args.results), sku=args.sku, example=args.example, note=args.note
        )
    except (OSError, ValueError) as exc:
        print(f"baseline: {exc}", file=sys.stderr)
        return 3
    base.source["files"] = [str(p) for p in args.results]
    out = base.save(args.out)
    runs = sorted({m.runs for m in base.entries.values()})
    print(f"baseline: {len(base.entries)} benchmarks on {base.device} ({runs} runs) -> {out}")
    return 0


def _show(base: Baseline, out: Any = None) -> None:
    out = out or sys.stdout
    tag = " [EXAMPLE: not a measured reference]" if base.example else ""
    print(f"{base.path or 'baseline'}: {base.device} (sku {base.sku}){tag}", file=out)
    if base.note:
        print(f"  note: {base.note}", file=out)
    for key, m in base.entries.items():
        print(
            f"  {describe(key)}: {m.center_us:,.2f} us  +-{100 * m.spread:.1f}%  ({m.runs} runs)",
            file=out,
        )


def describe(key: Iterable[str]) -> str:
    """A benchmark key as one short line: ``suite op [shape] dtype backend``."""
    suite, op, shape, dtype, backend = key
    parts = [suite, op, f"[{shape}]" if shape else "", dtype, backend]
    return " ".join(p for p in parts if p)


if __name__ == "__main__":
    raise SystemExit(main())
