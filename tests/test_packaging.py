"""Packaging: without nvcc the package still builds (pure Python, no millkernels._C)."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_builds_without_nvcc(tmp_path):
    if not (REPO / "CMakeLists.txt").exists():
        pytest.skip("needs the source tree (run from a checkout)")
    src = tmp_path / "tree"
    for name in ("csrc", "src"):
        shutil.copytree(REPO / name, src / name)
    for name in ("pyproject.toml", "CMakeLists.txt", "README.md"):
        shutil.copy(REPO / name, src / name)
    head = _commit_all(src)  # a clone: the wheel records its commit (certificates' git sha)
    # A PATH with Python's tools but no CUDA compiler anywhere on it.
    path = os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"])
    env = {**os.environ, "PATH": path}
    env.pop("CUDACXX", None)
    assert shutil.which("nvcc", path=path) is None
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-w"]
    out = subprocess.run(
        [*cmd, str(tmp_path / "dist"), str(src)], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    (wheel,) = (tmp_path / "dist").glob("millkernels-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "millkernels/__init__.py" in names
    assert "millkernels/py.typed" in names, "type checkers read the package's annotations"
    assert not [n for n in names if "/_C" in n], "no nvcc, so no extension"
    build_info = zipfile.ZipFile(wheel).read("millkernels/_build_info.py").decode()
    scope: dict = {}
    exec(build_info, scope)
    assert scope["GIT_SHA"] == (head or "unknown")


def _commit_all(tree: Path) -> str | None:
    """Make ``tree`` a git checkout with one commit; its sha (None without git)."""
    if shutil.which("git") is None:
        return None

    def git(*args: str) -> str:
        cmd = ["git", "-C", str(tree), "-c", "user.name=t", "-c", "user.email=t@t", *args]
        return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    git("add", "-A")
    git("commit", "-q", "-m", "tree")
    return git("rev-parse", "HEAD")
