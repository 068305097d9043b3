"""Targets, probes run on the CPU, the runner's error paths and protocol, RAPL, pod
aggregation, CLI usage."""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

import pytest
import typer
from probe_runs import run_probe
from typer.testing import CliRunner

from millkernels.certify import power, targets
from millkernels.certify import verdict as V
from millkernels.certify.probes import ProbeContext, get, probes_for
from millkernels.certify.probes.runner import ProbeRunner, SubprocessRunner
from millkernels.certify.sim import SimNode, SimRunner
from millkernels.certify.sim import certify_sim as run_sim

# --------------------------------------------------------------------------- targets


def test_every_builtin_profile_cites_sources_for_every_floor():
    names = targets.builtin_names()
    assert set(names) >= {"h100-sxm", "h100-pcie", "h200", "a100-sxm-80gb", "l40s", "b200", "cpu"}
    for n in names:
        p = targets.load(n)
        assert p.floors, n
        for metric, lim in p.floors.items():
            assert lim.get("source") and lim.get("date") and lim.get("basis"), (n, metric)
            assert lim.get("unit") is not None, (n, metric)
        produced = {m for s in probes_for(p.device_class) for m in s.metrics}
        assert set(p.floors) <= produced, (n, set(p.floors) - produced)  # no floor nobody measures


@pytest.mark.parametrize(
    "name,pci,want",
    [
        ("NVIDIA H100 80GB HBM3", "0x233010de", "h100-sxm"),
        ("NVIDIA H100 80GB HBM3", None, "h100-sxm"),
        ("NVIDIA H100 PCIe", "0x233110de", "h100-pcie"),
        ("NVIDIA H200", 0x233510DE, "h200"),
        ("NVIDIA A100-SXM4-80GB", "0x20b210de", "a100-sxm-80gb"),
        ("NVIDIA L40S", None, "l40s"),
        ("NVIDIA B200", "0x2901", "b200"),
        ("something else", "0x233010de", "h100-sxm"),  # the PCI id wins over the name
        ("NVIDIA GeForce RTX 4090", "0x268410de", None),
    ],
)
def test_sku_detection(name, pci, want):
    assert targets.detect(name, pci) == want


def test_bad_targets_files_are_rejected(tmp_path):
    f = tmp_path / "t.json"
    f.write_text(
        json.dumps(
            {
                "format": "millkernels-targets/1",
                "profile": "x",
                "floors": {"hbm_copy_gbps": {"unit": "GB/s"}},
            }
        )
    )
    with pytest.raises(ValueError, match="needs 'min' or 'max'"):
        targets.load_file(f)
    f.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read"):
        targets.load_file(f)
    with pytest.raises(ValueError, match="unknown profile"):
        targets.load("h900")


def test_floors_sit_below_the_public_measurements_they_cite():
    h = targets.load("h100-sxm").floors
    assert h["gemm_bf16_tflops"]["min"] < 794.5 and h["gemm_fp8_tflops"]["min"] < 1402.6
    assert h["pcie_h2d_gbps"]["min"] < 55.1 and h["pcie_h2d_gbps"]["min"] > 31.5  # Gen4 fails
    assert h["nccl_allreduce_busbw_gbps"]["gpus"] == 8


# --------------------------------------------------------------------------- probes on the CPU


def _ctx(**params) -> ProbeContext:
    return ProbeContext(name="t", device="cpu", quick=True, gpu=0, params=params)


def test_gpu_probe_code_runs_on_the_cpu():
    from millkernels.certify.probes import gpu

    c = _ctx(bytes=1 << 16, iters=2, backend="reference")
    gpu.hbm(c)
    got = {m["metric"]: m["value"] for m in c.measurements}
    assert set(got) == {"hbm_copy_gbps", "hbm_read_gbps", "hbm_write_gbps"}
    assert all(v > 0 for v in got.values())
    c = _ctx(bytes=1 << 14, backend="reference")
    gpu.mem_pattern(c)
    assert c.measurements == [
        {"metric": "mem_pattern_mismatches", "gpu": 0, "value": 0, "unit": "words"}
    ]
    c = _ctx(shapes=[[64, 48, 32]], iters=2)
    gpu.gemm(c)
    assert c.measurements[0]["metric"] == "gemm_bf16_tflops" and c.measurements[0]["value"] > 0
    assert c.unavailable[0]["metric"] == "gemm_fp8_tflops"  # fp8 needs a GPU: said, not faked
    c1, c2 = _ctx(n=64, reps=3), _ctx(n=64, reps=3)
    gpu.sdc(c1)
    gpu.sdc(c2)
    assert c1.measurements[0]["value"] == 0 and c1.info["digest"] == c2.info["digest"]


def test_runner_records_an_exception_with_its_reason(tmp_path):
    r = run_probe("selftest_raise", gpu=1, timeout=60, params={"message": "CUDA out of memory"})
    assert (
        r["status"] == "error"
        and r["reason"] == V.FR_MEMORY_ALLOC
        and "out of memory" in r["message"]
    )
    r = run_probe("selftest_ok", mode="exec", timeout=60, params={"value": 7})
    assert r["status"] == "ok" and r["measurements"][0]["value"] == 7.0
    r = run_probe("selftest_crash", mode="exec", gpu=0, timeout=60)
    assert r["status"] == "crashed" and "SIGABRT" in r["message"]


def _parameters(fn):
    sig = inspect.signature(fn)
    params = [(p.name, p.kind, p.default, p.annotation) for p in sig.parameters.values()]
    return params, sig.return_annotation


@pytest.mark.parametrize("runner_class", [SubprocessRunner, SimRunner])
def test_probe_runners_take_exactly_the_protocol_arguments(runner_class):
    # the same names, kinds, defaults and types: what certify_node may pass, each runner takes
    assert _parameters(runner_class.run) == _parameters(ProbeRunner.run)
    assert issubclass(runner_class, ProbeRunner)


def test_sim_runner_records_under_the_name_asked_for():
    runner: ProbeRunner = SimNode.healthy(gpus=1).runner()
    kw = dict(gpu=0, gpus=[0], uuids=[""], device="cuda", quick=True, timeout=5.0)
    assert runner.run(get("hbm"), **kw)["probe"] == "hbm"
    rec = runner.run(get("hbm"), record_as="hbm_again", **kw)
    assert rec["probe"] == "hbm_again" and rec["status"] == "ok" and rec["measurements"]


# --------------------------------------------------------------------------- RAPL


def test_rapl_reads_package_energy_with_wraparound(tmp_path):
    pkg = tmp_path / "intel-rapl:0"
    sub = tmp_path / "intel-rapl:0:0"
    for d, name in ((pkg, "package-0"), (sub, "core")):
        d.mkdir()
        (d / "name").write_text(name + "\n")
        (d / "energy_uj").write_text("900\n")
        (d / "max_energy_range_uj").write_text("1000\n")
    doms = power.rapl_domains(tmp_path)
    assert [d.name for d in doms] == ["package-0"]  # sub-domains are inside the package
    before = power.read_uj(doms)
    (pkg / "energy_uj").write_text("100\n")  # wrapped
    assert power.delta_joules(doms, before, power.read_uj(doms)) == pytest.approx(200e-6)


def test_rapl_unavailable_says_why(tmp_path):
    with pytest.raises(power.RaplUnavailable, match="does not exist"):
        power.rapl_domains(tmp_path / "nope")
    if os.geteuid() != 0:  # root reads anything; the permission path needs a user
        pkg = tmp_path / "intel-rapl:0"
        pkg.mkdir()
        (pkg / "energy_uj").write_text("1")
        (pkg / "energy_uj").chmod(0)
        with pytest.raises(power.RaplUnavailable, match="root only"):
            power.read_uj(power.rapl_domains(tmp_path))


# --------------------------------------------------------------------------- pod


def _node_doc(node, tmp_path, key, name):
    run_sim(node, tmp_path / name, key=key, probes=["hbm", "gemm"])
    doc = json.loads((tmp_path / name / "certificate.json").read_text())
    doc["certificate"]["node"]["hostname"] = name  # as if from another host (re-sign below)
    if key is not None:
        from millkernels.certify.certificate import load_private, sign

        doc = sign(doc["certificate"], load_private(key))
    return doc


def test_pod_aggregates_nodes_and_catches_a_slow_gpu_across_nodes(tmp_path, keypair):
    from millkernels.certify.certificate import load_private, verify
    from millkernels.certify.pod import aggregate, pod_env
    from millkernels.certify.sim import SimNode

    a, b = SimNode.healthy(gpus=4), SimNode.healthy(gpus=4)
    b.slow(2, 0.965)  # within its node's 5% ... and within the pod's too
    c = SimNode.healthy(gpus=4)
    c.set(1, gemm_bf16_tflops=720 * 0.93)  # 7% below: fails the node and the pod spread
    docs = [_node_doc(n, tmp_path, keypair[0], f"node{i}") for i, n in enumerate((a, b, c))]
    cert, checks, verdict = aggregate(
        docs,
        profile=targets.load("h100-sxm"),
        mode="quick",
        allreduce_busbw=300.0,
        allreduce_ranks=12,
        started_at=docs[0]["certificate"]["started_at"],
    )
    bad = [(c.name, c.node, c.gpu, c.reason) for c in checks if c.status != "pass"]
    assert ("pod.node_verdict", "node2", None, "MK_NODE_FAILED") in bad
    assert ("pod_spread.gemm_bf16_tflops", "node2", 1, V.MK_SPREAD) in bad
    assert not [x for x in bad if x[1] in ("node0", "node1")]
    assert all(c.status == "pass" for c in checks if c.name == "pod.node_signature")
    assert verdict.verdict == "fail" and cert["kind"] == "pod" and len(cert["nodes"]) == 3
    from millkernels.certify.certificate import sign

    doc = sign(cert, load_private(keypair[0]))
    ok, why = verify(doc, keypair[1])
    assert not ok and "verdict is 'fail'" in why  # schema-valid, signed, failing
    assert (
        pod_env(
            {"WORLD_SIZE": "16", "RANK": "3", "LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "8"}
        ).local_rank
        == 3
    )
    assert pod_env({}) is None


def test_pod_passes_healthy_nodes_and_flags_unsigned_ones(tmp_path, keypair):
    from millkernels.certify.pod import aggregate
    from millkernels.certify.sim import SimNode

    docs = [_node_doc(SimNode.healthy(gpus=2), tmp_path, keypair[0], f"n{i}") for i in range(2)]
    _, checks, verdict = aggregate(
        docs,
        profile=targets.load("h100-sxm"),
        mode="quick",
        allreduce_busbw=40.0,
        allreduce_ranks=4,
        started_at="2026-01-01T00:00:00Z",
    )
    assert verdict.verdict == "pass", [c for c in checks if c.status != "pass"]
    docs.append(_node_doc(SimNode.healthy(gpus=2), tmp_path, None, "n2"))
    _, checks, verdict = aggregate(
        docs,
        profile=targets.load("h100-sxm"),
        mode="quick",
        allreduce_busbw=None,
        allreduce_ranks=6,
        started_at="2026-01-01T00:00:00Z",
    )
    bad = {(c.name, c.node, c.status) for c in checks if c.status != "pass"}
    assert ("pod.node_signature", "n2", "error") in bad
    assert ("pod_allreduce_busbw_gbps", None, "error") in bad and verdict.verdict == "fail"


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def app():
    from millkernels.certify.cli import certify, keygen, verify

    a = typer.Typer()
    a.command()(keygen)
    a.command()(certify)
    a.command()(verify)
    return a


def test_cli_usage_errors_exit_2(app, tmp_path):
    r = CliRunner()
    assert r.invoke(app, ["certify", "--out", str(tmp_path), "--profile", "h900"]).exit_code == 2
    f = tmp_path / "t.json"
    f.write_text("{}")
    res = r.invoke(
        app, ["certify", "--out", str(tmp_path), "--profile", "cpu", "--targets", str(f)]
    )
    assert res.exit_code == 2
    assert r.invoke(app, ["certify", "--out", str(tmp_path / "new"), "--resume"]).exit_code == 2
    assert r.invoke(app, ["certify"]).exit_code == 2  # --out is required
    assert (
        r.invoke(app, ["keygen", "--private", str(f), "--public", str(tmp_path / "p")]).exit_code
        == 2
    )


def test_cli_verify_rejects_garbage_with_exit_1(app, tmp_path, keypair):
    f = tmp_path / "c.json"
    f.write_text("not json")
    r = CliRunner().invoke(app, ["verify", str(f), "--public", str(keypair[1])])
    assert r.exit_code == 1


def test_main_cli_still_imports():
    from millkernels.cli import app as main_app

    assert main_app is not None


def test_bad_key_fails_before_any_probe_runs(app, tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    for key in (bad, tmp_path / "missing.pem"):
        r = CliRunner().invoke(app, ["certify", "--out", str(tmp_path / "o"), "--key", str(key)])
        assert r.exit_code == 2 and "--key" in r.output
        assert (
            not (tmp_path / "o" / "results.jsonl").exists()
            or "probe" not in (tmp_path / "o" / "results.jsonl").read_text()
        )


def test_unknown_metric_floor_fails_with_a_floor_reason():
    c = V.limit_check("some_new_probe_tflops", 0, 100.0, "TFLOP/s", {"min": 200.0})
    assert c.status == "fail" and c.reason == V.MK_BELOW_FLOOR
    c = V.limit_check("x", 0, None, "", {"min": 1})
    assert c.status == "error" and c.reason == V.MK_NO_MEASUREMENT


def test_runner_falls_back_to_exec_when_the_fork_server_cannot_start(tmp_path):
    """A TMPDIR too long for the fork server's Unix socket must not stop certify: the probe
    runs exec'd instead, and its record says so."""
    import os
    import subprocess
    import sys

    deep = tmp_path / ("d" * 60) / ("e" * 60)  # with pymp-*/listener-*: over 107 bytes
    deep.mkdir(parents=True)
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); "
        "from probe_runs import run_probe; "
        "rec = run_probe('selftest_ok', timeout=120, params={'value': 7}); "
        "print(json.dumps([rec['status'], rec['info'].get('runner', '')]))"
    )
    env = {**os.environ, "TMPDIR": str(deep)}
    env.pop("MILLKERNELS_CERTIFY_EXEC", None)
    out = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    status, runner = json.loads(out.stdout.strip().splitlines()[-1])
    assert status == "ok"
    assert runner.startswith("exec (the fork server could not start: OSError")
