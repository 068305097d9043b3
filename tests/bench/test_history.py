"""Reading stored results of either format, and the history plot across result files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from millkernels.bench import history
from millkernels.bench.results import load_many, load_rows, rows_from_pytest_benchmark
from millkernels.bench.rows import Row, write_jsonl


def _row(median: float, when: str, sha: str, backend: str = "triton", op: str = "mem_copy"):
    return Row(
        op=op, shape={"bytes": 1 << 20}, dtype="u32", backend=backend, median_us=median,
        p20_us=median * 0.98, p80_us=median * 1.03, suite="probes", bytes=2 << 20,
        gbps=(2 << 20) / (median * 1e-6) / 1e9, timestamp=when, git_sha=sha,
    )  # fmt: skip


def _pytest_json(median_s: float, *, ours: bool = True) -> dict:
    info = {"family": "probes", "op": "mem_copy", "shape": "bytes=65536", "dtype": "u32",
            "backend": "reference", "flops": None, "bytes": 131072,
            "p20_us": median_s * 0.9e6, "p80_us": median_s * 1.2e6} if ours else {}  # fmt: skip
    return {
        "machine_info": {"millkernels": {"device": "NVIDIA H200", "driver": "580.1",
                                         "git_sha": "feed", "versions": {"torch": "2.11"}}},
        "commit_info": {"id": "c0ffee"},
        "datetime": "2026-11-25T12:00:00+00:00",
        "benchmarks": [{"name": "test_x[a]", "fullname": "bench/test_x.py::test_x[a]",
                        "stats": {"median": median_s, "q1": median_s * 0.95,
                                  "q3": median_s * 1.1, "rounds": 100},
                        "options": {"timer": "cuda_event_timer"}, "extra_info": info}],
    }  # fmt: skip


def test_rows_from_pytest_benchmark() -> None:
    (row,) = rows_from_pytest_benchmark(_pytest_json(2e-5))
    assert row.key() == ("pytest.probes", "mem_copy", "bytes=65536", "u32", "reference")
    assert row.median_us == pytest.approx(20.0) and row.p20_us == pytest.approx(18.0)
    assert row.p80_us == pytest.approx(24.0) and row.n == 100
    assert row.device == "NVIDIA H200" and row.driver == "580.1" and row.git_sha == "feed"
    assert row.gbps == pytest.approx(131072 / 20e-6 / 1e9)
    assert row.extra["pytest_name"] == "bench/test_x.py::test_x[a]"
    (other,) = rows_from_pytest_benchmark(_pytest_json(1e-3, ours=False))
    assert other.key() == ("pytest", "bench/test_x.py::test_x[a]", "", "", "")
    assert other.p20_us == pytest.approx(950.0) and other.p80_us == pytest.approx(1100.0)


def test_load_rows_formats(tmp_path: Path) -> None:
    jsonl, pb, listed = tmp_path / "a.jsonl", tmp_path / "b.json", tmp_path / "c.json"
    write_jsonl(jsonl, [_row(10.0, "2026-01-01T00:00:00+00:00", "a")])
    pb.write_text(json.dumps(_pytest_json(1e-5)))
    listed.write_text(json.dumps([_row(11.0, "", "b").to_dict()]))
    assert [r.median_us for r in load_many([jsonl, pb, listed])] == pytest.approx([10, 10, 11])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="neither"):
        load_rows(bad)


@pytest.fixture
def stored(tmp_path: Path) -> list[Path]:
    """Three days of results, written out of order, with a reference backend beside."""
    days = [("2026-11-03T09:00:00+00:00", "ccc3333", 90.0), ("2026-11-01T09:00:00+00:00",
            "aaa1111", 100.0), ("2026-11-02T09:00:00+00:00", "bbb2222", 120.0)]  # fmt: skip
    paths = []
    for i, (when, sha, t) in enumerate(days):
        path = tmp_path / f"day{i}.jsonl"
        write_jsonl(path, [_row(t, when, sha), _row(3 * t, when, sha, backend="reference"),
                           _row(5.0, when, sha, op="mem_read")])  # fmt: skip
        paths.append(path)
    return paths


def test_load_history_filters_and_orders(stored) -> None:
    series = history.load_history(stored, op="mem_copy", backend="triton")
    (points,) = series.values()
    assert [p.value for p in points] == [100.0, 120.0, 90.0]  # by timestamp, not file order
    assert [p.git_sha for p in points] == ["aaa1111", "bbb2222", "ccc3333"]
    both = history.load_history(stored, op="mem_copy")
    assert sorted(both) == ["reference", "triton"]  # labelled by what differs
    rates = history.load_history(stored, op="mem_copy", backend="triton", metric="gbps")
    assert next(iter(rates.values()))[0].value == pytest.approx((2 << 20) / 100e-6 / 1e9)
    assert history.load_history(stored, op="nothing") == {}
    with pytest.raises(ValueError, match="metric"):
        history.load_history(stored, op="mem_copy", metric="watts")
    with pytest.raises(ValueError, match="filters"):
        history.load_history(stored, colour="red")


def test_history_plot_and_main(stored, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib (extras dev/report) is not installed")
    series = history.load_history(stored, op="mem_copy")
    fig = history.plot_history(series, title="mem_copy")
    ax = fig.axes[0]
    assert ax.get_title() == "mem_copy" and ax.get_ylabel() == "median time (us)"
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == ["reference", "triton"]
    shas = {t.get_text() for t in ax.texts}
    assert shas == {"aaa1111", "bbb2222", "ccc3333"}
    out = tmp_path / "h.png"
    args = [*map(str, stored), "--op", "mem_copy", "--backend", "triton", "--out", str(out)]
    assert history.main(args) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert history.main([str(stored[0]), "--op", "nothing", "--out", str(out)]) == 3
