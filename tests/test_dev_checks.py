"""The pre-commit hooks run the checks CI runs on the source, with the dev extras' versions."""

import fnmatch
import itertools
import re
from pathlib import Path

import pytest
import yaml

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / ".pre-commit-config.yaml"


def _hooks() -> list[dict]:
    config = yaml.safe_load(CONFIG.read_text())
    return [hook for repo in config["repos"] for hook in repo["hooks"]]


def _ci_lint_commands() -> list[str]:
    """The commands of .ci/run's lint section, continuation lines joined, spaces collapsed."""
    lines = (REPO / ".ci" / "run").read_text().replace("\\\n", " ").splitlines()
    start = lines.index('echo "== lint"') + 1
    section = itertools.takewhile(lambda line: not line.startswith('echo "=='), lines[start:])
    commands = (" ".join(line.split()) for line in section)
    return [c for c in commands if c and not c.startswith("#")]


def _hook_files(hook: dict, root: str) -> set[str]:
    """The files under ``root`` that pre-commit hands ``hook`` with --all-files."""
    pattern = re.compile(hook.get("files", ""))
    paths = (p.relative_to(REPO).as_posix() for p in (REPO / root).rglob("*") if p.is_file())
    return {p for p in paths if pattern.search(p)}


def test_every_ci_lint_command_is_a_pre_commit_hook():
    hooks = _hooks()
    whole_tree = {h["entry"] for h in hooks if h.get("pass_filenames") is False}
    commands = _ci_lint_commands()
    assert commands, "no lint section in .ci/run"
    for command in commands:
        if "| xargs -0 " not in command:
            assert command in whole_tree, f"{command!r} runs in CI but no pre-commit hook runs it"
            continue
        # find ROOT ( -name GLOB -o ... ) -print0 | xargs -0 TOOL: TOOL on those files.
        find, tool = command.split(" | xargs -0 ")
        root = find.split()[1]
        globs = re.findall(r"-name '([^']+)'", find)
        ci_files = {
            p.relative_to(REPO).as_posix()
            for p in (REPO / root).rglob("*")
            if any(fnmatch.fnmatch(p.name, g) for g in globs)
        }
        (hook,) = [h for h in hooks if h["entry"] == tool] or [None]
        assert hook is not None, f"{tool!r} runs in CI but no pre-commit hook runs it"
        assert ci_files and _hook_files(hook, root) == ci_files


def test_pre_commit_tools_are_the_dev_extras_versions():
    dev = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    pins = {re.match(r"[\w.-]+", spec)[0]: spec.replace(" ", "") for spec in dev["dev"]}
    for hook in _hooks():
        for spec in hook.get("additional_dependencies", []):
            name = re.match(r"[\w.-]+", spec)[0]
            assert spec.replace(" ", "") == pins.get(name), (hook["id"], spec, pins.get(name))
