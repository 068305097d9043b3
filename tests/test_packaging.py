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
    assert not [n for n in names if "/_C" in n], "no nvcc, so no extension"
