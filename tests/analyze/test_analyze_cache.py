"""The analysis cache: stored tool outputs come back only for the same inputs."""

from __future__ import annotations

import json

import pytest

from millkernels.analyze import cache


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.ENV, str(tmp_path / "c"))
    return tmp_path / "c"


def test_second_call_reads_what_the_first_stored(folder):
    calls = []

    def produce():
        calls.append(1)
        return {"returncode": 0, "log": f"run {len(calls)}"}

    k = cache.key("ptx text", "-v --gpu-name=sm_90a")
    assert cache.cached(k, produce) == {"returncode": 0, "log": "run 1"}
    assert cache.cached(k, produce) == {"returncode": 0, "log": "run 1"}
    assert len(calls) == 1
    assert list(folder.rglob("*.json"))


def test_keys_differ_for_any_changed_or_regrouped_part():
    base = cache.key("a", "bc")
    assert cache.key("ab", "c") != base  # length-prefixed parts
    assert cache.key("a", "bd") != base
    assert cache.key(b"a", "bc") == base


def test_off_switch_and_a_corrupt_entry_run_the_tools(folder, monkeypatch):
    k = cache.key("x")
    cache.cached(k, lambda: {"log": "first"})
    (entry,) = folder.rglob("*.json")
    entry.write_text("{not json")
    assert cache.cached(k, lambda: {"log": "again"}) == {"log": "again"}
    assert json.loads(entry.read_text()) == {"log": "again"}
    monkeypatch.setenv(cache.ENV, "off")
    assert cache.cache_dir() is None
    assert cache.cached(k, lambda: {"log": "uncached"}) == {"log": "uncached"}


def test_tool_identity_changes_with_the_tool(tmp_path):
    tool = tmp_path / "ptxas"
    tool.write_text("v1")
    first = cache.tool_identity(tool)
    tool.write_text("v2 longer")
    assert cache.tool_identity(tool) != first
    assert cache.tool_identity(tmp_path / "none").endswith(":missing")
