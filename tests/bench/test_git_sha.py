"""The git sha of certificates and benchmark rows: the live checkout for an editable install,
else the commit the build recorded (a wheel installed from a clone), else "unknown"."""

from __future__ import annotations

import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from millkernels.bench import env

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(env.GIT_SHA_ENV, raising=False)
    env.git_sha.cache_clear()
    yield
    env.git_sha.cache_clear()


def _built_with(monkeypatch: pytest.MonkeyPatch, sha: str | None) -> None:
    """Stand in for the build's millkernels/_build_info.py (None: a build without one)."""
    module = None if sha is None else types.SimpleNamespace(GIT_SHA=sha)
    monkeypatch.setitem(sys.modules, "millkernels._build_info", module)


def test_installed_wheel_uses_the_recorded_commit(monkeypatch):
    monkeypatch.setattr(env, "_checkout_sha", lambda pkg: None)  # site-packages: no git
    _built_with(monkeypatch, SHA)
    assert env.recorded_sha() == SHA
    assert env.git_sha() == SHA


def test_live_checkout_wins_over_the_recorded_commit(monkeypatch):
    monkeypatch.setattr(env, "_checkout_sha", lambda pkg: "feedface-dirty")
    _built_with(monkeypatch, SHA)
    assert env.git_sha() == "feedface-dirty"


@pytest.mark.parametrize("recorded", [None, "unknown", " "])
def test_unknown_without_git_or_a_recorded_commit(monkeypatch, recorded):
    monkeypatch.setattr(env, "_checkout_sha", lambda pkg: None)
    _built_with(monkeypatch, recorded)
    assert env.recorded_sha() is None
    assert env.git_sha() == "unknown"


def test_environment_wins(monkeypatch):
    monkeypatch.setenv(env.GIT_SHA_ENV, "abc123")
    _built_with(monkeypatch, SHA)
    assert env.git_sha() == "abc123"


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_checkout_sha_reads_head_of_the_package_checkout(tmp_path):
    pkg = tmp_path / "src" / "millkernels"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")

    def git(*args: str) -> str:
        cmd = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", *args]
        return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    git("add", "-A")
    git("commit", "-q", "-m", "one")
    head = git("rev-parse", "HEAD")
    assert env._checkout_sha(Path(pkg).resolve()) == head
    (pkg / "__init__.py").write_text("x = 1\n")
    assert env._checkout_sha(Path(pkg).resolve()) == f"{head}-dirty"
    assert env._checkout_sha((tmp_path / "src").resolve()) is None  # not src/millkernels
