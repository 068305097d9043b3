"""A test run leaves the temporary folder as it found it: no node key, no folder of a probe or
a compile worker that was killed before it could clean up."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

# Representative and quick: a certify run that signs with the node key (made on first use),
# probe processes (forked and exec'd, one of them crashing), and a compile worker that dies.
_SAMPLE = (
    "certify/test_certify_sim.py::test_healthy_node_passes",
    "certify/test_certify_parts.py::test_runner_records_an_exception_with_its_reason",
    "analyze/test_analyze_triton.py::test_worker_survives_a_crash",
)


@pytest.mark.slow
def test_a_test_run_leaves_tmpdir_empty(tmp_path):
    # A short TMPDIR: the probes' forkserver puts a Unix socket there, and a socket path may
    # not exceed 107 bytes (pytest's tmp_path under xdist can come close on its own).
    tmp = Path(tempfile.mkdtemp(prefix="mk-hyg-", dir="/tmp"))
    try:
        _run_sample_in(tmp, tmp_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run_sample_in(tmp: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("MILLKERNELS_KEY", "PYTEST_ADDOPTS")}
    env["TMPDIR"] = str(tmp)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    cmd += ["--basetemp", str(tmp_path / "basetemp"), *(str(TESTS / t) for t in _SAMPLE)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "3 passed" in out.stdout, out.stdout[-3000:]
    left = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*"))
    assert left == [], f"the run left files in its TMPDIR: {left}"


def test_a_killed_compile_worker_leaves_no_folder(tmp_path, monkeypatch):
    """The worker's scratch lives in the folder its parent removes, so a worker that dies
    mid-compile leaves nothing behind."""
    from millkernels.analyze.registry import TritonVariant
    from millkernels.analyze.triton_compile import TritonJob, run_jobs

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    (tmp_path / "mk_t_exit.py").write_text("import os\nos._exit(7)\n")
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr("tempfile.tempdir", None)  # re-read TMPDIR here too
    variant = TritonVariant({"x_ptr": "*fp32", "B": "constexpr"}, {"B": 16})
    job = TritonJob(0, "mk_t_exit", "k", str(tmp_path / "mk_t_exit.py"), 1, variant)
    assert "died (exit 7)" in run_jobs([job], 80)[0]["error"]
    assert sorted(p.name for p in tmp.iterdir()) == []
