"""How ``certify`` writes, resumes and runs probes when things go wrong: planted symbolic links,
an earlier certificate, edited or broken ``results.jsonl`` lines on ``--resume``, filesystem
errors, hung or noisy probes and a ``kill -9``. Each fault gets its exit code (2 usage, 3 could
not run), a reason that names the problem, and never a passing certificate.

The command line runs for real (typer), against a simulated 2-GPU H100 node (``certify.sim``)
swapped in under ``certify_node``; probes that must really run go through the real
``SubprocessRunner``."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import typer
from probe_runs import run_probe
from typer.testing import CliRunner

from millkernels.certify import node as N
from millkernels.certify import outdir
from millkernels.certify.probes.registry import get
from millkernels.certify.probes.runner import SubprocessRunner
from millkernels.certify.sim import SimNode

NAMES = ("report.html", "metrics.prom", "signer.pub", "results.jsonl", "certificate.json")


@pytest.fixture
def app() -> typer.Typer:
    from millkernels.certify.cli import certify

    a = typer.Typer()
    a.command()(certify)
    a.command("other")(lambda: None)  # two commands: typer keeps the `certify` name
    return a


class Harness:
    """``certify --out OUT --key KEY ARGS`` on a simulated node; ``probes``/``runner``/
    ``timeout_scale`` change what the swapped-in ``certify_node`` runs."""

    def __init__(self, app: typer.Typer, tmp: Path, key: Path, monkeypatch) -> None:
        self.app, self.tmp, self.key = app, tmp, key
        self.out = tmp / "out"
        self.node = SimNode.healthy("h100-sxm", gpus=2)
        self.probes: list[str] = ["hbm", "gemm", "sdc"]
        self.runner: Any = None
        self.timeout_scale = 1.0
        real = N.certify_node

        def fake(cfg: N.NodeConfig) -> N.NodeResult:
            return real(
                replace(
                    cfg,
                    layer=self.node.layer(),
                    runner=self.runner or self.node.runner(),
                    probes=self.probes,
                    timeout_scale=self.timeout_scale,
                )
            )

        monkeypatch.setattr(N, "certify_node", fake)

    def __call__(self, *args: str, out: Path | None = None) -> Any:
        argv = ["certify", "--out", str(out or self.out), "--key", str(self.key), *args]
        return CliRunner().invoke(self.app, argv)

    def cert(self) -> dict[str, Any] | None:
        p = self.out / "certificate.json"
        if p.is_symlink() or not p.exists():
            return None
        return json.loads(p.read_text())

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in (self.out / "results.jsonl").read_text().splitlines()]

    def write_lines(self, recs: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in recs)
        (self.out / "results.jsonl").write_text(text)


@pytest.fixture
def cli(app, tmp_path, keypair, monkeypatch) -> Harness:
    return Harness(app, tmp_path, keypair[0], monkeypatch)


def _no_passing_certificate(h: Harness) -> None:
    doc = h.cert()
    assert doc is None or doc["certificate"]["verdict"] != "pass", "a passing certificate"


def _interrupted(h: Harness) -> None:
    """A run that finished some probes and was killed before its certificate."""
    h.probes = ["hbm", "gemm"]
    assert h().exit_code == 0
    (h.out / "certificate.json").unlink()
    h.probes = ["hbm", "gemm", "sdc"]


# --------------------------------------------------------------------------- symbolic links


@pytest.mark.parametrize("name", NAMES)
def test_planted_link_in_out_is_refused_and_its_target_untouched(cli, name):
    cli.out.mkdir()
    victim = cli.tmp / "victim.txt"
    victim.write_text("precious")
    (cli.out / name).symlink_to(victim)
    r = cli()
    assert r.exit_code == 2, r.output
    assert "symbolic link" in r.output and name in r.output
    assert victim.read_text() == "precious"
    assert (cli.out / name).is_symlink()  # refused, not silently replaced
    _no_passing_certificate(cli)


@pytest.mark.parametrize("name", ["report.html", "certificate.json", "results.jsonl"])
def test_link_planted_during_the_run_is_refused(cli, name):
    victim = cli.tmp / "victim.txt"
    victim.write_text("precious")
    sim, lock = cli.node.runner(), threading.Lock()

    class Planting:
        def run(self, spec, **kw):
            with lock:  # GPUs run side by side: plant once
                if not (cli.out / name).is_symlink():
                    (cli.out / name).unlink(missing_ok=True)
                    (cli.out / name).symlink_to(victim)
            return sim.run(spec, **kw)

    cli.runner = Planting()
    r = cli()
    assert r.exit_code == 2, r.output
    assert "symbolic link" in r.output and name in r.output
    assert victim.read_text() == "precious"
    _no_passing_certificate(cli)


def test_old_temp_name_link_is_never_written_through(cli):
    cli.out.mkdir()
    victim = cli.tmp / "victim.txt"
    victim.write_text("precious")
    (cli.out / "certificate.json.tmp").symlink_to(victim)
    r = cli()
    assert r.exit_code == 0, r.output
    assert victim.read_text() == "precious" and cli.cert()["certificate"]["verdict"] == "pass"
    leftovers = [p.name for p in cli.out.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == ["certificate.json.tmp"]


def test_out_that_is_a_link_is_refused(cli):
    real = cli.tmp / "real"
    real.mkdir()
    cli.out.symlink_to(real)
    r = cli()
    assert r.exit_code == 2 and "symbolic link" in r.output and str(real) in r.output
    assert list(real.iterdir()) == []


def test_write_atomic_replaces_whole_files_only(tmp_path):
    p = tmp_path / "f.txt"
    outdir.write_atomic(p, "one")
    outdir.write_atomic(p, "two")
    assert p.read_text() == "two" and [x.name for x in tmp_path.iterdir()] == ["f.txt"]
    (tmp_path / "link").symlink_to(p)
    with pytest.raises(outdir.UnsafeOutput, match="symbolic link"):
        outdir.write_atomic(tmp_path / "link", "three")
    with pytest.raises(outdir.UnsafeOutput, match="symbolic link"):
        outdir.append_durably(tmp_path / "link", b"three")
    assert p.read_text() == "two"


# --------------------------------------------------------------------------- earlier certificate


def test_existing_certificate_needs_force(cli):
    assert cli().exit_code == 0
    before = (cli.out / "certificate.json").read_bytes()
    r = cli()
    assert r.exit_code == 2 and "already holds a certificate.json" in r.output
    assert "--force" in r.output and "--resume" in r.output
    assert (cli.out / "certificate.json").read_bytes() == before
    r = cli("--force")
    assert r.exit_code == 0, r.output
    assert json.loads(before)["certificate"]["id"] != cli.cert()["certificate"]["id"]
    r = cli("--force", "--resume")
    assert r.exit_code == 2 and "one of them" in r.output


def test_usage_errors_leave_no_out_folder(cli):
    out = cli.tmp / "new" / "deeper"
    r = cli("--profile", "h900", out=out)
    assert r.exit_code == 2 and not (cli.tmp / "new").exists()
    cli.probes = ["no_such_probe"]
    r = cli(out=out)
    assert r.exit_code == 2 and "unknown" in r.output and not (cli.tmp / "new").exists()
    cli.probes = ["hbm"]
    r = cli("--resume", out=out)
    assert r.exit_code == 2 and not (cli.tmp / "new").exists()


def test_folder_made_by_a_run_that_cannot_write_is_removed(cli, monkeypatch):
    out = cli.tmp / "new"
    monkeypatch.setattr(outdir, "_write_fd", _enospc_for("results.jsonl"))
    r = cli(out=out)
    assert r.exit_code == 3 and "No space left on device" in r.output
    assert not out.exists()


# --------------------------------------------------------------------------- --resume


def _edit_value(recs):
    p = next(r for r in recs if r["type"] == "probe" and r["measurements"])
    p["measurements"][0]["value"] *= 1.5
    return recs.index(p) + 1, "integrity check failed"


def _drop_middle(recs):
    i = next(i for i, r in enumerate(recs) if r["type"] == "probe")
    del recs[i]
    return i + 1, "integrity check failed"


def _swap(recs):
    i = next(i for i, r in enumerate(recs) if r["type"] == "probe")
    recs[i], recs[i + 1] = recs[i + 1], recs[i]
    return i + 1, "integrity check failed"


def _missing_key(recs):
    p = next(r for r in recs if r["type"] == "probe")
    del p["measurements"]
    return recs.index(p) + 1, "missing 'measurements'"


def _wrong_type(recs):
    p = next(r for r in recs if r["type"] == "probe")
    p["gpu"] = "1"
    return recs.index(p) + 1, "'gpu' is str"


def _other_run(recs):
    recs[-1]["run_id"] = "00000000-0000-0000-0000-000000000000"
    return len(recs), "not this run's"


def _bad_status(recs):
    p = next(r for r in recs if r["type"] == "probe")
    p["status"] = "great"
    return recs.index(p) + 1, "status 'great'"


RESUME_FAULTS = [_edit_value, _drop_middle, _swap, _missing_key, _wrong_type, _other_run]


@pytest.mark.parametrize("fault", [*RESUME_FAULTS, _bad_status], ids=lambda f: f.__name__[1:])
def test_resume_refuses_a_bad_line_and_names_it(cli, fault):
    _interrupted(cli)
    recs = cli.lines()
    line, why = fault(recs)
    cli.write_lines(recs)
    r = cli("--resume")
    assert r.exit_code == 2, r.output
    assert f"line {line}:" in r.output and why in r.output
    _no_passing_certificate(cli)


def test_resume_refuses_text_that_is_not_json(cli):
    _interrupted(cli)
    text = (cli.out / "results.jsonl").read_text().splitlines(keepends=True)
    text[2] = '{"type": "probe", "probe": \n'
    (cli.out / "results.jsonl").write_text("".join(text))
    r = cli("--resume")
    assert r.exit_code == 2 and "line 3: not JSON" in r.output
    _no_passing_certificate(cli)


def test_resume_with_another_key_is_refused(cli, tmp_path):
    from millkernels.certify.certificate import keygen

    _interrupted(cli)
    keygen(tmp_path / "other.pem", tmp_path / "other.pub")
    cli.key = tmp_path / "other.pem"
    r = cli("--resume")
    assert r.exit_code == 2 and "line 1: integrity check failed" in r.output
    _no_passing_certificate(cli)


def test_resume_of_an_untouched_log_continues_it(cli):
    _interrupted(cli)
    before = (cli.out / "results.jsonl").read_text()
    # A crash in the middle of a write leaves a cut last line: dropped, its probe runs again.
    (cli.out / "results.jsonl").write_text(before + '{"type": "probe", "pro')
    r = cli("--resume")
    assert r.exit_code == 0, r.output
    after = (cli.out / "results.jsonl").read_text()
    assert after.startswith(before) and '"pro\n' not in after
    assert cli.cert()["certificate"]["verdict"] == "pass"
    assert {(r["probe"]) for r in cli.lines() if r["type"] == "probe"} == {"hbm", "gemm", "sdc"}


def test_resume_checks_the_node_and_profile_of_an_unsigned_run(cli, monkeypatch):
    from millkernels.certify import certificate as C

    def missing():
        raise RuntimeError("the 'cryptography' package is needed (test)")

    monkeypatch.setattr(C, "_crypto", missing)
    _interrupted(cli)
    assert all(r["mac"] is None for r in cli.lines())
    recs = cli.lines()
    recs[0]["gpus"] = [0, 1, 2]
    cli.write_lines(recs)
    r = cli("--resume")
    assert r.exit_code == 2 and "line 1:" in r.output and "GPUs [0, 1, 2]" in r.output
    recs[0]["gpus"] = [0, 1]
    last = max(i for i, r in enumerate(recs) if r["type"] == "probe")
    name, recs[last]["probe"] = recs[last]["probe"], "nccl_allreduce"
    cli.write_lines(recs)
    r = cli("--resume")
    assert r.exit_code == 2 and f"line {last + 1}:" in r.output and "not planned" in r.output
    recs[last]["probe"] = name
    cli.write_lines(recs)
    r = cli("--resume")  # no key: the lines cannot be checked, and the operator is told
    assert r.exit_code == 0, r.output
    assert "no integrity check" in r.output and "NOT signed" in r.output


# --------------------------------------------------------------------------- filesystem errors


def _enospc_for(name: str):
    """An ``outdir._write_fd`` that fails with ENOSPC for files whose name holds ``name``."""
    real = outdir._write_fd

    def write(fd: int, data: bytes) -> None:
        if name in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd, data)

    return write


def _refuse_open(root: Path, code: int):
    real = os.open

    def fake(path, flags, mode=0o777, *, dir_fd=None):
        if str(path).startswith(str(root)) and flags & (os.O_WRONLY | os.O_RDWR):
            raise OSError(code, os.strerror(code), str(path))
        return real(path, flags, mode, dir_fd=dir_fd)

    return fake


@pytest.mark.parametrize("name", ["results.jsonl", "report.html", "metrics.prom", "certificate"])
def test_disk_full_exits_3_and_leaves_no_half_written_file(cli, monkeypatch, name):
    assert cli().exit_code == 0  # then again over it, with the disk full at `name`
    monkeypatch.setattr(outdir, "_write_fd", _enospc_for(name))
    r = cli("--force")
    assert r.exit_code == 3, r.output
    assert "No space left on device" in r.output and name in r.output
    assert not (cli.out / "certificate.json").exists()  # the old one went at the start
    assert not [p for p in cli.out.iterdir() if p.name.endswith(".tmp")]
    if name == "certificate":  # everything before it was written whole
        assert "</html>" in (cli.out / "report.html").read_text()


def test_disk_full_while_appending_a_probe_line(cli, monkeypatch):
    real = outdir.append_durably
    calls = []

    def full_after_two(path, data):
        calls.append(path)
        if len(calls) > 2:
            raise outdir.error_for(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
        real(path, data)

    monkeypatch.setattr(outdir, "append_durably", full_after_two)
    r = cli()
    assert r.exit_code == 3 and "No space left on device" in r.output
    assert "results.jsonl" in r.output
    assert not (cli.out / "certificate.json").exists()


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_unwritable_out_exits_3_with_path_and_error(cli, monkeypatch, code):
    cli.out.mkdir()
    monkeypatch.setattr(os, "open", _refuse_open(cli.out, code))
    r = cli()
    assert r.exit_code == 3, r.output
    assert os.strerror(code) in r.output and str(cli.out) in r.output
    assert list(cli.out.iterdir()) == []


def test_out_under_an_unwritable_folder_exits_3(cli, monkeypatch):
    def refuse(path, mode=0o777, **kw):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(os, "mkdir", refuse)
    r = cli(out=cli.tmp / "a" / "b")
    assert r.exit_code == 3 and "Permission denied" in r.output and "cannot create" in r.output


def test_out_that_is_a_file_exits_3_before_any_probe(cli):
    cli.out.write_text("not a folder")
    r = cli()
    assert r.exit_code == 3 and "Not a directory" in r.output and str(cli.out) in r.output
    assert cli.node.calls == [] and cli.out.read_text() == "not a folder"


# --------------------------------------------------------------------------- probe processes


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def _wait_gone(pids: list[int], seconds: float = 10.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not all(_gone(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if not _gone(p)]


def _read_pids(f: Path, seconds: float = 60.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while not f.exists():
        assert time.monotonic() < deadline, "the probe never started"
        time.sleep(0.05)
    return [int(x) for x in f.read_text().split()]


def _kill_all(pids: list[int]) -> None:
    for p in pids:  # this test's own processes, should an assertion fail
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


class HangRunner:
    """Every probe is ``selftest_hang`` (with a SIGTERM-ignoring worker), run for real."""

    def __init__(self, pid_file: Path, mode: str | None = None) -> None:
        self.real, self.pid_file = SubprocessRunner(mode=mode), pid_file

    def run(self, spec, **kw):
        kw.update(device="cpu", params={"pid_file": str(self.pid_file), "worker": True})
        return self.real.run(get("selftest_hang"), record_as=spec.name, **kw)


@pytest.mark.parametrize("mode", ["forkserver", "exec"])
def test_hung_probe_and_its_worker_are_killed_at_the_timeout(cli, mode):
    cli.probes, cli.timeout_scale = ["hbm"], 0.01  # hbm: 300 s x 0.01 = 3 s
    cli.node = SimNode.healthy("h100-sxm", gpus=1)
    cli.runner = HangRunner(cli.tmp / "pids", mode)
    r = cli()
    pids = _read_pids(cli.tmp / "pids")
    try:
        assert r.exit_code == 3, r.output
        assert "MK_PROBE_TIMEOUT" in r.output
        assert _wait_gone(pids, 2.0) == [], "probe or worker outlived the timeout"
        assert cli.cert()["certificate"]["verdict"] == "fail"
    finally:
        _kill_all(pids)


@pytest.mark.parametrize("mode", ["forkserver", "exec"])
def test_worker_left_by_a_finished_probe_is_killed(tmp_path, mode):
    params = {"pid_file": str(tmp_path / "pids"), "worker": True}
    rec = run_probe("selftest_ok", mode=mode, params=params)
    pids = _read_pids(tmp_path / "pids")
    try:
        assert rec["status"] == "ok" and len(pids) == 2
        assert _wait_gone(pids, 2.0) == [], "a worker outlived its probe's record"
    finally:
        _kill_all(pids)


SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from test_output_faults import HangRunner
    from millkernels.certify.node import NodeConfig, certify_node

    certify_node(NodeConfig(out=Path({out!r}), profile="cpu", probes=["cpu_membw"],
                            runner=HangRunner(Path({pids!r}), {mode!r}), write_reports=False))
    """
)


@pytest.mark.parametrize("mode", ["forkserver", "exec"])
def test_kill_9_of_certify_takes_its_probe_with_it(tmp_path, mode):
    script = SCRIPT.format(
        tests=str(Path(__file__).parent),
        out=str(tmp_path / "out"),
        pids=str(tmp_path / "p"),
        mode=mode,
    )
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    pids: list[int] = []
    try:
        pids = _read_pids(tmp_path / "p")
        proc.send_signal(signal.SIGKILL)  # kill -9, no chance to clean up
        proc.wait()
        assert _wait_gone(pids[:1]) == [], "the probe outlived certify"
        assert not (tmp_path / "out" / "certificate.json").exists()
    finally:
        proc.kill()
        _kill_all(pids)


def test_probe_flooding_stderr_gets_a_capped_record():
    rec = run_probe("selftest_ok", params={"stderr_bytes": 10 << 20})
    assert rec["status"] == "ok"
    assert len(rec["stderr_tail"]) <= 3000 and rec["stderr_tail"].endswith("last stderr line\n")
    params = {"message": "CUDA error: " + "x" * 100_000}
    rec = run_probe("selftest_raise", mode="exec", params=params)
    assert rec["status"] == "error" and len(rec["message"]) < 2100
    assert "more characters cut" in rec["message"]
