"""The real GPU probes through the real runner and NVML (GPU machines only; short sizes).

Preflight rules are not asserted here: a cloud GPU may legitimately fail one (a provider's
lowered power limit, say). What must hold anywhere: every probe runs and reports plausible,
NVML-backed numbers.
"""

from __future__ import annotations

import pytest

from millkernels.certify.node import NodeConfig, certify_node

SHORT = {
    "hbm": {"bytes": 256 << 20, "iters": 5},
    "mem_pattern": {"fraction": 0.05},
    "gemm": {"shapes": [[4096, 4096, 4096]], "iters": 5},
    "pcie": {"bytes": 64 << 20, "iters": 3},
    "sustained": {"seconds": 3.0, "warmup_s": 1.0, "n": 4096},
    "sdc": {"n": 2048, "reps": 3},
    "p2p": {"bytes": 64 << 20, "reps": 2},
    "allreduce": {"bytes": 64 << 20, "iters": 5},
}


def _measured(res):
    return {
        (m["metric"], m["gpu"]): m["value"]
        for r in res.records
        if r.get("type") == "probe"
        for m in r["measurements"]
    }


@pytest.mark.gpu
def test_gpu_probes_run_and_report_plausible_numbers(tmp_path):
    res = certify_node(
        NodeConfig(
            out=tmp_path,
            quick=True,
            probes=["hbm", "mem_pattern", "gemm", "pcie", "sustained", "sdc"],
            params=SHORT,
        )
    )
    probes = [r for r in res.records if r.get("type") == "probe"]
    assert probes and all(r["status"] == "ok" for r in probes), [
        (r["probe"], r["status"], r["message"], r["stderr_tail"][-500:])
        for r in probes
        if r["status"] != "ok"
    ]
    m = _measured(res)
    assert m[("hbm_copy_gbps", 0)] > 500 and m[("gemm_bf16_tflops", 0)] > 50
    assert m[("mem_pattern_mismatches", 0)] == 0 and m[("sdc_self_mismatches", 0)] == 0
    assert m[("sustained_power_w", 0)] > 30  # NVML energy counter delta, not a sample
    assert m[("pcie_gen_load", 0)] >= 3
    assert res.certificate["node"]["nvml_available"]
    assert res.certificate["profile"]["name"] != "cpu"


@pytest.mark.multi_gpu
def test_node_probes_on_several_gpus(tmp_path):
    res = certify_node(
        NodeConfig(out=tmp_path, quick=True, probes=["p2p", "allreduce", "sdc"], params=SHORT)
    )
    probes = [r for r in res.records if r.get("type") == "probe"]
    assert all(r["status"] == "ok" for r in probes), [(r["probe"], r["message"]) for r in probes]
    m = _measured(res)
    assert m[("nccl_allreduce_busbw_gbps", None)] > 1
    assert all(v > 1 for (k, _), v in m.items() if k == "p2p_min_gbps")
    assert not [c for c in res.checks if c.name == "sdc.cross_gpu" and c.status != "pass"]


@pytest.mark.gpu
def test_a_real_run_holds_every_check_verify_requires(tmp_path):
    """``verify`` requires the checks the profile implies (``required_checks``); a real run on
    this GPU node must produce each of them (passed or not), so a healthy node is never refused
    for a check it could not have produced."""
    from millkernels.certify.certificate import required_checks
    from millkernels.certify.probes.registry import probes_for

    res = certify_node(NodeConfig(out=tmp_path, quick=True, params=SHORT, write_reports=False))
    cert = res.certificate
    gpus = [s["gpu"] for s in cert["summary"]["gpus"]]
    need = required_checks(cert["profile"]["targets"], cert["device_class"], gpus)
    have = {(c["name"], c["gpu"]) for c in cert["checks"]}
    # A probe that crashed is one probe.<name> error instead of its metrics.
    failed = {
        (c["name"][len("probe.") :], c["gpu"])
        for c in cert["checks"]
        if c["name"].startswith("probe.")
    }
    of = {m: s.name for s in probes_for("gpu") for m in s.metrics}
    missing = [
        (m, g)
        for m, g in need - have
        if (of.get(m), g) not in failed and (of.get(m), None) not in failed
    ]
    assert gpus and not missing, sorted(missing, key=repr)
