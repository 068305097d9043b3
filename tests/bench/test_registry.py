"""The suite registry and the runner's exit codes."""

from __future__ import annotations

import pytest

from millkernels.bench import registry
from millkernels.bench.context import BenchContext, SuiteUnavailable
from millkernels.bench.runner import command_for, run_suites
from millkernels.bench.timing import Timing


@pytest.fixture
def scratch(monkeypatch: pytest.MonkeyPatch):
    """An isolated registry holding only what a test registers."""
    monkeypatch.setattr(registry, "_SUITES", {})
    monkeypatch.setattr(registry, "_BROKEN", {})
    monkeypatch.setattr(registry, "_discovered", True)
    return registry


def test_builtin_suites_are_discovered() -> None:
    found = registry.suites()
    assert list(found)[:2] == ["ceilings", "probes"]
    assert found["probes"].description
    assert "millkernels.bench.suites.probes" in registry.suite_modules()
    assert registry.get("probes").name == "probes"
    with pytest.raises(KeyError, match="known"):
        registry.get("nope")


def test_register_and_order(scratch) -> None:
    @scratch.suite("b", order=5)
    def b(ctx):
        """Suite b does things."""
        return []

    scratch.register_suite("a", lambda ctx: [], description="A", order=50)
    assert list(scratch.suites()) == ["b", "a"]
    assert scratch.suites()["b"].description == "Suite b does things."
    scratch.register_suite("b", b, order=5)  # the same function again: fine
    with pytest.raises(ValueError, match="already registered"):
        scratch.register_suite("b", lambda ctx: [])
    for bad in ("all", "", "has space"):
        with pytest.raises(ValueError):
            scratch.register_suite(bad, lambda ctx: [])


def test_broken_module_is_reported(monkeypatch: pytest.MonkeyPatch, scratch) -> None:
    monkeypatch.setattr(scratch, "_discovered", False)
    monkeypatch.setattr(scratch, "suite_modules", lambda: ["millkernels.bench.no_such_module"])
    assert scratch.suites() == {}
    assert "ModuleNotFoundError" in scratch.broken()["millkernels.bench.no_such_module"]


def _ctx() -> BenchContext:
    return BenchContext(device="cpu", log=lambda m: None)


def _one_row(ctx):
    yield ctx.row(op="o", shape="s", dtype="u32", backend="b", timing=Timing(1, 1, 1, 1))


def test_runner_exit_codes(scratch) -> None:
    scratch.register_suite("good", _one_row)

    def failing(ctx):
        ctx.check(False, "wrong result")
        yield from _one_row(ctx)

    def crashing(ctx):
        raise RuntimeError("boom")
        yield

    def unavailable(ctx):
        raise SuiteUnavailable("needs 8 GPUs")
        yield

    scratch.register_suite("failing", failing)
    scratch.register_suite("crashing", crashing)
    scratch.register_suite("unavailable", unavailable)

    seen = []
    ok = run_suites(["good"], _ctx(), extra_args=["--quick"], on_row=seen.append)
    assert ok.exit_code() == 0 and len(ok.rows) == 1 and seen == ok.rows
    assert ok.rows[0].command == "millkernels bench good --quick"
    assert ok.rows[0].suite == "good"

    failed = run_suites(["failing", "good"], _ctx())
    assert failed.exit_code() == 1 and len(failed.rows) == 2
    assert failed.failures == ["failing: check failed: wrong result"]

    crashed = run_suites(["crashing", "good"], _ctx())
    assert crashed.exit_code() == 3 and "boom" in crashed.errors["crashing"]
    assert len(crashed.rows) == 1

    named = run_suites(["unavailable"], _ctx(), explicit=True)
    assert named.exit_code() == 3
    in_all = run_suites(["unavailable", "good"], _ctx(), explicit=False)
    assert in_all.exit_code() == 0 and "needs 8 GPUs" in in_all.unavailable["unavailable"]


def test_command_for_quotes() -> None:
    assert command_for("probes", ["--device", "cpu"]) == "millkernels bench probes --device cpu"
    assert command_for("a b") == "millkernels bench 'a b'"
