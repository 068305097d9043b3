"""The real CPU profile, end to end through the command line: keygen, certify --quick, verify;
the four files; kill -9 in the middle of a run and --resume loses no finished measurement; the
HTML report renders in headless Chromium without console errors."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "millkernels.certify"]
ENV = {**os.environ, "COLUMNS": "160"}


def _run(*args: str, timeout: float = 170, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, env=env or ENV
    )


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    """One real quick CPU certification exactly as the README runs it: no --key, so it is
    signed with the node key (made on first use; here in a temporary place)."""
    pytest.importorskip("cryptography")
    d = tmp_path_factory.mktemp("cpu-cert")
    env = {**ENV, "MILLKERNELS_KEY": str(d / "node-key.pem")}
    t0 = time.monotonic()
    r = _run("certify", "--quick", "--out", str(d / "out"), env=env)
    return d, r, time.monotonic() - t0


def test_cpu_certify_writes_four_files_and_passes(cpu_run):
    d, r, seconds = cpu_run
    assert r.returncode == 0, r.stdout + r.stderr
    out = d / "out"
    for f in ("certificate.json", "report.html", "metrics.prom", "results.jsonl"):
        assert (out / f).stat().st_size > 0, f
    doc = json.loads((out / "certificate.json").read_text())
    cert = doc["certificate"]
    assert cert["device_class"] == "cpu" and cert["label"].startswith("CPU certificate")
    assert cert["verdict"] == "pass" and cert["profile"]["name"] == "cpu"
    values = {c["name"]: c for c in cert["checks"]}
    assert values["cpu_copy_gbps"]["value"] > 0.4 and values["cpu_gemm_gflops"]["value"] > 5
    assert values["mem_pattern_mismatches"]["value"] == 0
    # RAPL: measured where readable, otherwise said so plainly (skipped, with the reason).
    e = values["cpu_energy_j"]
    assert e["status"] in ("pass", "skipped")
    if e["status"] == "skipped":
        assert e["reason"] == "MK_UNAVAILABLE" and "RAPL" in e["message"]
    assert "verdict: PASS" in r.stdout
    print(f"quick CPU certification took {seconds:.0f} s")  # reported, never asserted


def test_verify_accepts_the_cpu_certificate_only_with_allow_cpu(cpu_run):
    d, r, _ = cpu_run
    assert (d / "node-key.pem").exists() and (d / "node-key.pub").exists()
    assert f"signing key {d / 'node-key.pem'}" in r.stderr  # the first run says where it is
    cert = str(d / "out" / "certificate.json")
    for public in (d / "out" / "signer.pub", d / "node-key.pub"):
        v = _run("verify", cert, "--public", str(public), "--allow-cpu")
        assert v.returncode == 0, v.stderr
        assert v.stdout.startswith("valid: node certificate, cpu, ")
    v = _run("verify", cert, "--public", str(d / "node-key.pub"))
    assert v.returncode == 1 and v.stderr.startswith("rejected: CPU certificate")


def test_verify_rejects_an_edit_with_exit_1(cpu_run, tmp_path):
    d, _, _ = cpu_run
    doc = json.loads((d / "out" / "certificate.json").read_text())
    for c in doc["certificate"]["checks"]:
        if c["name"] == "cpu_gemm_gflops":
            c["value"] = c["value"] * 2
    f = tmp_path / "edited.json"
    f.write_text(json.dumps(doc))
    v = _run("verify", str(f), "--public", str(d / "node-key.pub"), "--allow-cpu")
    assert v.returncode == 1 and "signature does not match" in v.stderr


def test_prometheus_file_is_well_formed(cpu_run):
    d, _, _ = cpu_run
    text = (d / "out" / "metrics.prom").read_text()
    sample = re.compile(r'^[A-Z_][A-Z0-9_]*\{([a-zA-Z_]+="[^"]*",?)*\} -?[0-9.e+-]+$')
    typed = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name = line.split()[2]
            assert name not in typed
            typed.add(name)
        elif not line.startswith("# HELP "):
            assert sample.match(line), line
            assert line.split("{")[0] in typed
    assert 'MK_CERT_NODE_PASS{Hostname="' in text and "MK_CERT_CPU_GEMM_GFLOPS" in text


def test_html_is_self_contained(cpu_run):
    d, _, _ = cpu_run
    html = (d / "out" / "report.html").read_text()
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert "data:image/png;base64," in html and "CPU certificate" in html


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc: parent ids)."""
    parent = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                parent[int(p.name)] = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    out, todo = [], [pid]
    while todo:
        cur = todo.pop()
        kids = [c for c, pp in parent.items() if pp == cur]
        out += kids
        todo += kids
    return out


def test_kill_9_then_resume_loses_no_finished_measurement(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [*CLI, "certify", "--quick", "--out", str(out), "--format", "json"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
        start_new_session=True,
    )
    log = out / "results.jsonl"
    deadline = time.monotonic() + 150
    finished = []
    while time.monotonic() < deadline:
        if log.exists():
            finished = [
                json.loads(x) for x in log.read_text().splitlines() if '"type": "probe"' in x
            ]
            if len(finished) >= 2:
                break
        time.sleep(0.05)
    assert len(finished) >= 2, "the run never finished two probes"
    kids = _descendants(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)  # kill -9 mid-run
    proc.wait()
    for k in kids:  # the run's own children (probe server, running probe): this test's processes
        with contextlib.suppress(ProcessLookupError):
            os.kill(k, signal.SIGKILL)
    assert not (out / "certificate.json").exists(), "the run ended before the kill"
    before = log.read_text()
    finished = [json.loads(x) for x in before.splitlines() if '"type": "probe"' in x]

    r = _run("certify", "--quick", "--out", str(out), "--resume", "--format", "json")
    assert r.returncode == 0, r.stderr
    after = log.read_text()
    assert after.startswith(before)  # nothing finished was rewritten or lost
    probes = [json.loads(x) for x in after.splitlines() if '"type": "probe"' in x]
    for rec in finished:
        assert sum(p["probe"] == rec["probe"] for p in probes) == 1, rec["probe"]  # not re-run
    cert = json.loads(r.stdout)["certificate"]
    checks = {c["name"]: c for c in cert["checks"]}
    for rec in finished:
        for m in rec["measurements"]:
            assert checks[m["metric"]]["value"] == pytest.approx(m["value"], rel=1e-5)
    assert {p["probe"] for p in probes} == {
        "cpu_membw",
        "cpu_gemm",
        "cpu_pattern",
        "cpu_sustained",
        "cpu_sdc",
    }


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _render(html: Path, tmp: Path) -> tuple[str, str]:
    """Chromium headless --dump-dom: (DOM after load, console/log output)."""
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=3000",
        "--dump-dom",
        html.as_uri(),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout, r.stderr


def _console_errors(log: str) -> list[str]:
    return [
        ln
        for ln in log.splitlines()
        if "CONSOLE" in ln and re.search(r"error|uncaught|exception", ln, re.I)
    ]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian package chromium)")
def test_html_report_renders_in_headless_chromium(sim_node, tmp_path):
    from millkernels.certify.sim import certify_sim as run_sim

    sim_node.slow(5, 0.92)
    sim_node.crash("gemm", 2)
    run_sim(sim_node, tmp_path / "sim", write_reports=True)
    html = tmp_path / "sim" / "report.html"
    dom, log = _render(html, tmp_path)
    assert not _console_errors(log), _console_errors(log)
    n = int(re.search(r'data-images="(\d+)"', dom).group(1))
    assert n >= 10  # per-metric bars, spread, power over time
    assert f'data-images-ok="{n}"' in dom  # every inline image decoded
    assert 'id="verdict"' in dom and ">FAIL<" in dom and "MK_PROBE_CRASHED" in dom
    assert 'id="p2p"' in dom  # the GPU-to-GPU matrix

    # The detector itself: a page that throws is caught.
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>throw new Error('boom')</script></body></html>")
    _, log = _render(bad, tmp_path)
    assert _console_errors(log)


TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which(
    "torchrun"
)


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun is not installed")
def test_pod_run_under_torchrun_writes_a_verifiable_pod_certificate(cpu_run, tmp_path):
    d, _, _ = cpu_run
    import socket

    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "pod-run"
    r = subprocess.run(
        [
            TORCHRUN,
            "--nnodes=1",
            "--nproc-per-node=2",
            f"--master-port={port}",
            "-m",
            "millkernels.certify",
            "certify",
            "--quick",
            "--out",
            str(out),
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=170,
        env={**ENV, "MILLKERNELS_KEY": str(d / "node-key.pem")},  # no --key: the node key
    )
    assert r.returncode == 0, r.stderr[-3000:]
    pod = json.loads((out / "pod" / "certificate.json").read_text())
    cert = pod["certificate"]
    assert cert["kind"] == "pod" and cert["verdict"] == "pass" and len(cert["nodes"]) == 1
    names = {c["name"] for c in cert["checks"]}
    assert {"pod.node_verdict", "pod.node_signature", "pod_allreduce_busbw_gbps"} <= names
    v = _run(
        "verify",
        str(out / "pod" / "certificate.json"),
        "--public",
        str(out / "pod" / "signer.pub"),
        "--allow-cpu",
    )
    assert v.returncode == 0, v.stderr
    assert v.stdout.startswith("valid: pod certificate, cpu, ")
    node_dir = next((out / "nodes").iterdir())
    node_doc = json.loads((node_dir / "certificate.json").read_text())
    assert (node_dir / "signer.pub").read_bytes() == (d / "node-key.pub").read_bytes()
    assert cert["nodes"][0]["key_id"] == node_doc["signature"]["key_id"]
    import hashlib

    from millkernels.certify.certificate import canonical

    sha = hashlib.sha256(canonical(node_doc["certificate"])).hexdigest()
    assert cert["nodes"][0]["certificate_sha256"] == sha
