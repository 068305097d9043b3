"""What the operator sees: the mode and validity of quick certificates, console tables that
never cut a check name or reason (CI logs included), and an HTML report that says where its
energy figures come from, draws floors where they can be seen, and names places as the
console does."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from millkernels.certify import report, targets
from millkernels.certify.node import NodeConfig, certify_node
from millkernels.certify.probes.runner import base_record, now_iso
from millkernels.certify.sim import certify_sim as run_sim

# A healthy small VM: far above the cpu profile's sanity floors (0.4 GB/s, 5 GFLOP/s).
CPU_VALUES = {"cpu_copy_gbps": 70.3, "cpu_gemm_gflops": 180.0, "cpu_sustained_gflops": 150.0}


class CpuRunner:
    """cpu-profile probes answered without running them: healthy values; RAPL unreadable
    (as in most containers), or readable with ``rapl=True``."""

    def __init__(self, rapl: bool = False) -> None:
        self.rapl = rapl

    def run(self, spec, *, gpu, **_: Any) -> dict[str, Any]:
        rec = base_record(spec.name, gpu)
        for m in spec.metrics:
            if m.startswith("cpu_energy") or m in ("cpu_power_w", "cpu_gflops_per_w"):
                if not self.rapl:
                    rec["unavailable"].append(
                        {"metric": m, "gpu": None, "reason": "RAPL unavailable: no powercap"}
                    )
                    continue
                rec["info"]["rapl_domains"] = ["package-0"]
            value = CPU_VALUES.get(m, 0 if "mismatch" in m else 42.0)
            rec["measurements"].append({"metric": m, "gpu": None, "value": value, "unit": ""})
        rec.update(status="ok", started_at=now_iso(), ended_at=now_iso(), duration_s=0.0)
        return rec


def _cpu(tmp_path: Path, quick: bool = True, rapl: bool = False, **kw: Any):
    return certify_node(
        NodeConfig(out=tmp_path, profile="cpu", quick=quick, runner=CpuRunner(rapl), **kw)
    )


def _doc(path: Path) -> dict[str, Any]:
    return json.loads((path / "certificate.json").read_text())


def _days(cert: dict[str, Any]) -> timedelta:
    end = datetime.fromisoformat(cert["ended_at"].replace("Z", "+00:00"))
    return datetime.fromisoformat(cert["valid_until"].replace("Z", "+00:00")) - end


# --------------------------------------------------------------------------- mode and validity


@pytest.mark.parametrize("quick", [True, False])
def test_certificate_carries_its_mode_and_the_mode_s_validity(tmp_path, sim_node, quick):
    mode = "quick" if quick else "standard"
    data = targets.load("cpu").data
    days = data["quick_validity_days"] if quick else data["validity_days"]
    assert data["quick_validity_days"] < data["validity_days"]
    _cpu(tmp_path / "cpu", quick=quick)
    cert = _doc(tmp_path / "cpu")["certificate"]
    assert cert["mode"] == mode and f"{mode} mode" in cert["label"]
    assert cert["label"].startswith("CPU certificate") and _days(cert) == timedelta(days=days)
    run_sim(sim_node, tmp_path / "gpu", quick=quick, probes=["hbm"])
    cert = _doc(tmp_path / "gpu")["certificate"]
    gdays = targets.load("h100-sxm").data
    want = gdays["quick_validity_days"] if quick else gdays["validity_days"]
    assert cert["mode"] == mode and f"{mode} mode" in cert["label"]
    assert _days(cert) == timedelta(days=want)
    buf = io.StringIO()
    report.print_summary(_doc(tmp_path / "cpu"), [], Console(file=buf, width=100))
    assert f"({mode} mode;" in buf.getvalue()


# --------------------------------------------------------------------------- console


def _failing_doc(tmp_path: Path, sim_node) -> dict[str, Any]:
    sim_node.fail_probe("sdc", 1, "CUDA error: an illegal memory access [at kernel sdc_gemm]")
    sim_node.set(0, hbm_copy_gbps=2000.0)
    run_sim(sim_node, tmp_path, probes=["hbm", "gemm", "sdc"])
    return _doc(tmp_path)


def test_piped_console_prints_every_check_whole(tmp_path, sim_node):
    doc = _failing_doc(tmp_path, sim_node)
    cert = doc["certificate"]
    buf = io.StringIO()
    note = "a note that is longer than forty columns, kept whole"
    report.print_summary(doc, [note], Console(file=buf, width=40))
    text = buf.getvalue()
    assert "…" not in text and note in text.splitlines()
    lines = text.splitlines()
    for c in cert["checks"]:
        row = next(ln for ln in lines if re.match(rf"[A-Z]+ +{re.escape(c['name'])}[ :]", ln))
        assert f"{report.where(cert, c['gpu'])} {report._fmt(c['value'])[:16]}" in row
        if c.get("limit"):
            assert f"limit {report._limit_text(c['limit'])}" in row
        if c["status"] != "pass":
            assert row.startswith(c["status"].upper())
            detail = next(
                ln for ln in lines if f" {c['name']} [{report.where(cert, c['gpu'])}]" in ln
            )
            assert detail.startswith(c["status"].upper())
            assert c["reason"] in detail and detail.endswith(c["message"])
    assert "[at kernel sdc_gemm]" in text  # markup-like text printed as it is


@pytest.mark.parametrize("width", [70, 400])
def test_terminal_never_cuts_and_shows_status_and_limit(tmp_path, sim_node, width):
    doc = _failing_doc(tmp_path, sim_node)
    buf = io.StringIO()
    report.print_summary(doc, [], Console(file=buf, width=width, force_terminal=True))
    text = re.sub(r"\x1b\[[0-9;]*m", "", buf.getvalue())
    assert "…" not in text
    assert max(len(ln) for ln in text.splitlines()) <= width or width == 70
    if width == 70:  # 8 GPUs do not fit: the plain lines
        assert "FAIL    hbm_copy_gbps (GB/s, limit >= 2550): GPU 0 2000 fail" in text
        return
    header = next(ln for ln in text.splitlines() if "check" in ln and "GPU 7" in ln)
    assert re.search(r"check\s+┃\s+unit\s+┃\s+limit\s+┃\s+status", header)
    row = next(ln for ln in text.splitlines() if ln.startswith("│ hbm_copy_gbps "))
    assert re.search(r"│ GB/s\s+│ >= 2550\s+│ fail: GPU 0\s+│.*2000 fail", row)
    assert "an illegal memory access [at kernel sdc_gemm]" in text


def test_cli_output_in_a_ci_log_is_not_cut(tmp_path, monkeypatch):
    import typer
    from typer.testing import CliRunner

    from millkernels.certify import cli as cli_mod
    from millkernels.certify import node as N

    real = N.certify_node
    monkeypatch.setattr(N, "certify_node", lambda cfg: real(replace(cfg, runner=CpuRunner())))
    app = typer.Typer()
    app.command()(cli_mod.certify)
    app.command("other")(lambda: None)
    r = CliRunner().invoke(
        app,
        ["certify", "--out", str(tmp_path / "o"), "--profile", "cpu", "--quick"],
        env={"COLUMNS": "40", "MILLKERNELS_KEY": str(tmp_path / "k.pem")},
    )
    assert r.exit_code == 0, r.output
    assert "…" not in r.output
    for name in ("mem_pattern_mismatches", "cpu_sustained_gflops", "cpu_gflops_per_w"):
        assert re.search(rf"^[A-Z]+ +{name} .*cpu ", r.output, re.M), name
    assert "RAPL unavailable: no powercap" in r.output and "(quick mode;" in r.output


# --------------------------------------------------------------------------- HTML


def test_floor_far_below_the_bars_gets_a_log_axis():
    assert report.value_scale([70.3], {"min": 0.4}) == "log"
    assert report.value_scale([720.0, 690.0], {"min": 600.0}) == "linear"
    assert report.value_scale([3.0, 0.0], {"min": 0.1}) == "linear"  # log needs positives
    assert report.value_scale([0.2], {"max": 0}) == "linear"


def test_cpu_report_names_rapl_not_nvml_and_places_as_the_console(tmp_path):
    _cpu(tmp_path / "a")
    html = (tmp_path / "a" / "report.html").read_text()
    footer = re.search(r'<span id="energy-source">(.*?)</span>', html).group(1)
    assert "NVML" not in footer and "RAPL" in footer and "no powercap" in footer
    cells = re.findall(r"<tr><td>([a-z_.]+)</td><td>([^<]*)</td>", html)
    assert cells and {w for _, w in cells} == {"cpu"}
    prom = (tmp_path / "a" / "metrics.prom").read_text()
    assert 'gpu="cpu"' in prom and 'gpu="node"' not in prom
    _cpu(tmp_path / "b", rapl=True)
    html = (tmp_path / "b" / "report.html").read_text()
    assert "RAPL (package-0" in html and "NVML" not in html.split('id="energy-source"')[1]


def test_gpu_report_and_console_name_node_checks_alike(tmp_path, sim_node):
    doc = _failing_doc(tmp_path, sim_node)
    cert = doc["certificate"]
    buf = io.StringIO()
    report.print_summary(doc, [], Console(file=buf, width=200))
    html = report.render_html(doc, {}, [])
    for c in cert["checks"]:
        w = report.where(cert, c["gpu"])
        assert f"<tr><td>{c['name']}</td><td>{w}</td>" in html
        if c["status"] != "pass":
            assert f"{c['name']} [{w}]" in buf.getvalue()
    assert "NVML" in re.search(r'<span id="energy-source">(.*?)</span>', html).group(1)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian package chromium)")
def test_cpu_report_renders_in_headless_chromium(tmp_path):
    _cpu(tmp_path / "r")
    html = tmp_path / "r" / "report.html"
    shot = tmp_path / "report.png"
    base = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=3000",
    ]
    r = subprocess.run(
        [*base, "--dump-dom", html.as_uri()], capture_output=True, text=True, timeout=90
    )
    assert r.returncode == 0, r.stderr[-2000:]
    n = int(re.search(r'data-images="(\d+)"', r.stdout).group(1))
    assert n >= 3 and f'data-images-ok="{n}"' in r.stdout
    r = subprocess.run(
        [*base, "--window-size=1280,2400", f"--screenshot={shot}", html.as_uri()],
        capture_output=True,
        timeout=90,
    )
    assert r.returncode == 0 and shot.stat().st_size > 10_000
