"""Result rows: JSON-lines round trip, forward compatibility, identity."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest

from millkernels.bench.rows import (
    SCHEMA,
    JsonlWriter,
    Row,
    read_jsonl,
    shape_str,
    write_jsonl,
)


def _row(**kw) -> Row:
    base = dict(
        op="mem_copy", shape={"bytes": 1024}, dtype="u32", backend="cuda",
        median_us=10.0, p20_us=9.0, p80_us=11.0, n=50,
    )  # fmt: skip
    return Row(**{**base, **kw})


def test_round_trip(tmp_path: Path) -> None:
    rows = [_row(), _row(backend="triton", clocks={"sm_mhz": 1980}, config={"BLOCK": 4096})]
    path = tmp_path / "sub" / "r.jsonl"
    assert write_jsonl(path, rows) == 2
    assert write_jsonl(path, rows[:1]) == 1  # appends
    back = read_jsonl(path)
    assert back == [*rows, rows[0]]
    assert all(r.schema == SCHEMA for r in back)
    write_jsonl(path, rows[:1], append=False)
    assert len(read_jsonl(path)) == 1


def test_writer_appends_one_row_at_a_time(tmp_path: Path) -> None:
    w = JsonlWriter(tmp_path / "w.jsonl")
    w(_row())
    w(_row(op="mem_read"))
    assert w.count == 2
    assert [r.op for r in read_jsonl(w.path)] == ["mem_copy", "mem_read"]


def test_unknown_keys_go_to_extra(tmp_path: Path) -> None:
    data = _row(extra={"a": 1}).to_dict() | {"future_field": [1, 2]}
    path = tmp_path / "f.jsonl"
    path.write_text(json.dumps(data) + "\n\n")
    (row,) = read_jsonl(path)
    assert row.extra == {"a": 1, "future_field": [1, 2]}


def test_bad_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(_row().to_dict()) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        read_jsonl(path)


def test_key_and_shape_str() -> None:
    assert shape_str({"M": 1, "N": 2}) == "M=1,N=2"
    assert shape_str("8192x8192") == "8192x8192"
    assert _row(suite="probes").key() == ("probes", "mem_copy", "bytes=1024", "u32", "cuda")


def test_schema_has_the_documented_fields() -> None:
    names = {f.name for f in fields(Row)}
    assert {
        "op", "shape", "dtype", "backend", "median_us", "p20_us", "p80_us", "tflops", "gbps",
        "pct_of_ceiling", "ceiling", "baseline", "ratio_to_baseline", "config", "device",
        "clocks", "power_limit_w", "driver", "versions", "git_sha", "command", "timestamp",
    } <= names  # fmt: skip


def test_failed_row_is_strict_json(tmp_path: Path) -> None:
    """A failed case (NaN timings, an infinite ratio in extra) is written as strict JSON, which
    any reader accepts, and reads back with NaN timings."""
    nan = float("nan")
    row = _row(median_us=nan, p20_us=nan, p80_us=nan, extra={"ratio": float("inf"), "k": [nan]})
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, [row])
    text = path.read_text()

    def refuse(token: str) -> None:
        raise ValueError(f"non-strict JSON token {token}")

    data = json.loads(text, parse_constant=refuse)
    assert data["median_us"] is None and data["extra"] == {"ratio": None, "k": [None]}
    (back,) = read_jsonl(path)
    assert all(v != v for v in (back.median_us, back.p20_us, back.p80_us))  # NaN
