"""The op probes (attention, quantised matmul, custom all-reduce): their code run on the CPU
(Triton under the interpreter, the all-reduce over gloo), their correctness and unavailability
paths, their planning and timeouts, and their verdicts on a simulated 8-GPU H100 node."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from probe_runs import run_probe

from millkernels.certify import targets
from millkernels.certify import verdict as V
from millkernels.certify.node import NodeConfig, certify_node, plan
from millkernels.certify.probes import ProbeContext, get, ops, probes_for
from millkernels.certify.sim import SimNode
from millkernels.certify.sim import certify_sim as run_sim

OP_PROBES = ("attention", "quant", "custom_allreduce")
PER_GPU_PERF = (
    "attention_fwd_tflops",
    "attention_decode_gbps",
    "quant_w4a16_gbps",
    "quant_fp8_rowwise_tflops",
)
WRONG = (
    "attention_fwd_wrong",
    "attention_decode_wrong",
    "quant_w4a16_wrong",
    "quant_fp8_rowwise_wrong",
)
# Tiny shapes for the CPU (the interpreter runs every Triton program in Python).
TINY = {
    "attention": {
        "fwd_shape": [1, 40, 2, 32],
        "decode_shape": [2, 40, 16, 4, 2, 32],
        "rep_ms": 2,
        "warmup_ms": 0,
    },
    "quant": {"w4a16_mnk": [3, 48, 256], "fp8_mnk": [5, 48, 256], "rep_ms": 2, "warmup_ms": 0},
    "custom_allreduce": {"small_bytes": 1024, "large_bytes": 4096, "iters": 2, "warmup": 1},
}


def _ctx(name: str, gpu: int | None = 0, device: str = "cpu", **params: Any) -> ProbeContext:
    return ProbeContext(name=name, device=device, quick=True, gpu=gpu, params=params)


def _got(ctx: ProbeContext) -> dict[str, Any]:
    return {m["metric"]: m["value"] for m in ctx.measurements}


def _bad(res, gpu: int | None = -1):
    return [c for c in res.checks if c.status in (V.FAIL, V.ERROR) and (gpu == -1 or c.gpu == gpu)]


# --------------------------------------------------------------------------- probe code, CPU


def test_attention_probe_runs_end_to_end_on_the_cpu():
    c = _ctx("attention", **TINY["attention"])
    ops.attention(c)
    got = _got(c)
    assert not c.unavailable, c.unavailable
    assert got["attention_fwd_wrong"] == 0 and got["attention_decode_wrong"] == 0
    assert got["attention_fwd_tflops"] > 0 and got["attention_decode_gbps"] > 0
    fwd = c.info["attention_fwd"]
    assert fwd["backend"] == "triton" and fwd["max_error"] <= fwd["allowed_error"]
    assert c.info["attention_decode"]["backend"] == "triton"


def test_quant_probe_runs_end_to_end_on_the_cpu():
    c = _ctx("quant", **TINY["quant"])
    ops.quant(c)
    got = _got(c)
    assert not c.unavailable, c.unavailable
    assert got["quant_w4a16_wrong"] == 0 and got["quant_fp8_rowwise_wrong"] == 0
    assert got["quant_w4a16_gbps"] > 0 and got["quant_fp8_rowwise_tflops"] > 0
    assert c.info["quant_w4a16"]["bytes"] > c.info["quant_w4a16"]["weight_bytes"] > 0


def test_custom_allreduce_probe_runs_over_gloo_on_the_cpu():
    c = _ctx("custom_allreduce", gpu=None, **TINY["custom_allreduce"])
    ops.custom_allreduce(c)
    got = {(m["metric"], m["gpu"]): m["value"] for m in c.measurements}
    assert got[("custom_allreduce_wrong", None)] == 0
    assert got[("custom_allreduce_busbw_gbps", None)] > 0
    assert got[("custom_allreduce_small_busbw_gbps", None)] > 0
    assert set(c.info["results"]) == {
        "small/one_shot",
        "small/two_shot",
        "large/one_shot",
        "large/two_shot",
    }
    # busbw = S / t x 2(n-1)/n, t the slowest rank
    r = c.info["results"]["large/two_shot"]
    assert r["busbw_gbps"] == pytest.approx(r["bytes"] / (r["us"] * 1e-6) / 1e9 * 2 * 1 / 2)


def test_op_probe_runs_in_its_own_process_through_the_registry():
    r = run_probe("quant", gpu=0, env={"TRITON_INTERPRET": "1"}, params=TINY["quant"])
    assert r["status"] == "ok", (r["message"], r["stderr_tail"][-800:])
    assert {m["metric"] for m in r["measurements"]} == set(get("quant").metrics)


# --------------------------------------------------------------------------- wrong answers


def test_wrong_attention_output_is_counted_and_not_timed(monkeypatch):
    from millkernels.ops.attention import api

    real = api.attention

    def off_by_a_bit(q, k, v, **kw):
        out = real(q, k, v, **kw)
        out[0, 3, 1, 5] += 0.25  # one element of the checked slice (batch 0, head 1)
        return out

    monkeypatch.setattr(api, "attention", off_by_a_bit)
    c = _ctx("attention", **TINY["attention"])
    ops.attention(c)
    got = _got(c)
    assert got["attention_fwd_wrong"] == 1
    assert "attention_fwd_tflops" not in got  # a wrong answer has no speed
    why = {u["metric"]: u["reason"] for u in c.unavailable}
    assert "not timed: 1 output elements are wrong" in why["attention_fwd_tflops"]
    assert got["attention_decode_wrong"] == 0 and got["attention_decode_gbps"] > 0


def test_nan_in_decode_and_quant_outputs_counts_as_wrong(monkeypatch):
    from millkernels.ops.attention import api as decode
    from millkernels.ops.quant import api as qapi

    real_decode, real_mm = decode.attention_decode, qapi.matmul

    def nan_decode(*a, **kw):
        out = real_decode(*a, **kw)
        out[0, 0, :4] = float("nan")
        return out

    def nan_mm(x, qw, *a, **kw):
        out = real_mm(x, qw, *a, **kw)
        if qw.scheme == "fp8_rowwise":
            out[1, :2] = float("nan")
        return out

    monkeypatch.setattr(decode, "attention_decode", nan_decode)
    monkeypatch.setattr(qapi, "matmul", nan_mm)
    c = _ctx("attention", **TINY["attention"])
    ops.attention(c)
    assert _got(c)["attention_decode_wrong"] == 4
    assert "attention_decode_gbps" not in _got(c)
    c = _ctx("quant", **TINY["quant"])
    ops.quant(c)
    got = _got(c)
    assert got["quant_fp8_rowwise_wrong"] == 2 and "quant_fp8_rowwise_tflops" not in got
    assert got["quant_w4a16_wrong"] == 0 and got["quant_w4a16_gbps"] > 0


def test_quant_bound_catches_a_wrong_weight_element():
    from millkernels.ops.quant import quantize

    x = torch.randn(4, 256, dtype=torch.bfloat16)
    qw = quantize(torch.randn(32, 256) * 0.02, "w4a16", group_size=128)
    ref = (x.float() @ qw.dequantize().t()).to(torch.bfloat16)
    assert ops.quant_wrong(ref, x, qw)[0] == 0
    bad = ref.clone()
    bad[2, 7] += 0.05
    assert ops.quant_wrong(bad, x, qw)[0] == 1


# --------------------------------------------------------------------------- unavailable


def test_missing_triton_makes_the_kernel_parts_unavailable_not_reference_timings(monkeypatch):
    from millkernels import runtime

    monkeypatch.setattr(runtime, "triton_version", lambda: None)
    for name, probe in (("attention", ops.attention), ("quant", ops.quant)):
        c = _ctx(name, **TINY[name])
        probe(c)
        assert not c.measurements, c.measurements  # the reference is not timed in its place
        why = {u["metric"]: u["reason"] for u in c.unavailable}
        assert set(why) == set(get(name).metrics)
        assert all("no kernel backend serves" in w and "Triton" in w for w in why.values()), why


def test_backend_forced_to_the_reference_is_unavailable(monkeypatch):
    monkeypatch.setenv("MILLKERNELS_BACKEND", "reference")
    c = _ctx("quant", **TINY["quant"])
    ops.quant(c)
    assert not c.measurements
    assert all("MILLKERNELS_BACKEND forces" in u["reason"] for u in c.unavailable), c.unavailable


def test_fp8_below_sm89_is_unavailable_with_the_reason():
    from millkernels.ops.quant import capabilities

    facts = capabilities.QuantCall(
        op="matmul",
        scheme="fp8_rowwise",
        device="cuda",
        dtype="bfloat16",
        capability=(8, 0),
        group_size=8192,
        in_features=8192,
        m=8192,
    )
    with pytest.raises(ops.Unavailable, match=r"compute capability >= 8.9.*sm_80"):
        ops._kernel_backend(capabilities.TABLE, "matmul", facts, "auto")


def test_custom_allreduce_without_two_gpus_says_so():
    c = _ctx("custom_allreduce", gpu=None, device="cuda")  # this machine has no GPU
    ops.custom_allreduce(c)
    assert not c.measurements
    assert {u["metric"] for u in c.unavailable} == set(ops.CUSTOM_ALLREDUCE_METRICS)
    assert all(u["gpu"] is None and "two or more GPUs" in u["reason"] for u in c.unavailable)


# --------------------------------------------------------------------------- planning, profiles


def test_op_probes_are_planned_for_gpu_profiles_only():
    gpu_names = {s.name for s in probes_for("gpu")}
    assert set(OP_PROBES) <= gpu_names
    assert not set(OP_PROBES) & {s.name for s in probes_for("cpu")}
    tasks = plan(targets.load("h100-sxm"), list(range(8)), None)
    count = {p: sum(1 for s, _ in tasks if s.name == p) for p in OP_PROBES}
    assert count == {"attention": 8, "quant": 8, "custom_allreduce": 1}
    assert not [s for s, _ in plan(targets.load("cpu"), [], None) if s.name in OP_PROBES]
    spec = get("custom_allreduce")
    assert spec.scope == "node" and spec.min_gpus == 2


class _Recording:
    """A runner that records the timeout and mode each probe was started with."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.seen = inner, {}

    def run(self, spec, **kw):
        self.seen[(spec.name, kw["gpu"])] = (kw["timeout"], kw["quick"])
        return self.inner.run(spec, **kw)


def test_quick_mode_plans_the_op_probes_with_their_quick_timeouts(sim_node, tmp_path):
    rec = _Recording(sim_node.runner())
    cfg = NodeConfig(
        out=tmp_path,
        quick=True,
        layer=sim_node.layer(),
        runner=rec,
        write_reports=False,
    )
    res = certify_node(cfg)
    assert res.verdict.verdict == "pass", [c for c in res.checks if c.status != "pass"]
    for p in OP_PROBES:
        started = {k: v for k, v in rec.seen.items() if k[0] == p}
        assert started, p
        quick_timeout = get(p).timeout_s[0]
        assert 0 < quick_timeout <= 120  # each fits the 2-minute quick budget
        assert all(v == (quick_timeout, True) for v in started.values()), started


def test_profiles_hold_wrong_results_to_zero_and_op_metrics_to_the_spread_rule():
    for name in targets.builtin_names():
        p = targets.load(name)
        if p.device_class != "gpu":
            assert not {m for m in p.floors if m.startswith(("attention_", "quant_", "custom_"))}
            continue
        fp8 = name != "a100-sxm-80gb"
        for m in (*WRONG, "custom_allreduce_wrong"):
            if m == "quant_fp8_rowwise_wrong" and not fp8:
                assert m not in p.floors  # A100 has no fp8: nothing expected
                continue
            lim = p.floors[m]
            assert lim["max"] == 0 and lim["reason"] == V.MK_WRONG_RESULT, (name, m)
        want = set(PER_GPU_PERF) if fp8 else set(PER_GPU_PERF) - {"quant_fp8_rowwise_tflops"}
        assert want <= set(p.spread["metrics"]), name
        assert want <= set(p.data["expect"]) | set(p.floors), name
        if not fp8:
            assert "quant_fp8_rowwise_tflops" not in set(p.data["expect"]) | set(p.floors)


def test_absolute_op_floors_are_loose_fractions_of_the_public_numbers_they_cite():
    anchors = {  # REFERENCES.md, H100 SXM kernel anchors
        "attention_fwd_tflops": 395.0,  # Triton forward, FlashAttention-3 paper
        "attention_decode_gbps": 1200.0,  # FA3 paged decode, low end
        "quant_w4a16_gbps": 8192 * 8192 / 2 / 23e-6 / 1e9,  # Marlin, 23 us
        "quant_fp8_rowwise_tflops": 1125.0,  # FBGEMM per-token x per-channel
        "custom_allreduce_small_busbw_gbps": 512 * 1024 / 13e-6 / 1e9 * 1.75,  # vLLM one-shot
    }
    for name in ("h100-sxm", "h200"):
        f = targets.load(name).floors
        for metric, anchor in anchors.items():
            assert f[metric]["min"] <= 0.26 * anchor, (name, metric)
            assert "provisional" in f[metric]["basis"] and f[metric]["source"]
        assert f["custom_allreduce_small_busbw_gbps"]["gpus"] == 8
    for name in ("a100-sxm-80gb", "b200", "h100-pcie", "l40s"):  # no anchor: spread only
        assert not set(anchors) & set(targets.load(name).floors), name


# --------------------------------------------------------------------------- verdicts (sim)


def test_healthy_node_passes_with_every_op_check_present(sim_node, tmp_path):
    res = run_sim(sim_node, tmp_path)
    assert res.verdict.verdict == "pass", [c for c in res.checks if c.status != "pass"]
    by = {}
    for c in res.checks:
        by.setdefault(c.name, []).append(c)
    for m in PER_GPU_PERF + WRONG:
        assert len(by[m]) == 8 and all(c.status == "pass" for c in by[m]), m
    for m in PER_GPU_PERF:
        assert len(by[f"spread.{m}"]) == 8, m
    for m in ("custom_allreduce_busbw_gbps", "custom_allreduce_small_busbw_gbps"):
        assert [c.gpu for c in by[m]] == [None] and by[m][0].status == "pass"
    assert by["custom_allreduce_wrong"][0].reason == V.OK
    assert by["attention_fwd_tflops"][0].reason == V.OK  # judged against the loose floor


def test_one_gpu_8_percent_slow_in_attention_fails_on_that_gpu(sim_node, tmp_path):
    sim_node.set(3, attention_fwd_tflops=sim_node.values[3]["attention_fwd_tflops"] * 0.92)
    res = run_sim(sim_node, tmp_path)
    assert res.verdict.verdict == "fail" and res.exit_code == 1
    bad = _bad(res)
    assert [(c.name, c.gpu, c.reason) for c in bad] == [
        ("spread.attention_fwd_tflops", 3, V.MK_SPREAD)
    ]
    assert "below the node median" in bad[0].message
    assert [g["gpu"] for g in res.verdict.gpus if g["verdict"] == "fail"] == [3]


@pytest.mark.parametrize(
    "metric,gpu,speed",
    [
        ("attention_fwd_wrong", 2, "attention_fwd_tflops"),
        ("attention_decode_wrong", 6, "attention_decode_gbps"),
        ("quant_w4a16_wrong", 1, "quant_w4a16_gbps"),
        ("quant_fp8_rowwise_wrong", 5, "quant_fp8_rowwise_tflops"),
    ],
)
def test_wrong_result_fails_with_a_correctness_reason(sim_node, tmp_path, metric, gpu, speed):
    # What the probe reports for a wrong answer: the count, and no speed.
    sim_node.set(gpu, **{metric: 12})
    del sim_node.values[gpu][speed]
    res = run_sim(sim_node, tmp_path)
    assert res.verdict.verdict == "fail" and res.exit_code == 1
    hit = [c for c in _bad(res, gpu) if c.name == metric]
    assert hit and hit[0].status == V.FAIL and hit[0].reason == V.MK_WRONG_RESULT, hit
    assert hit[0].value == 12 and hit[0].limit["max"] == 0
    missing = [c for c in _bad(res, gpu) if c.name == speed]
    assert missing and missing[0].status == V.ERROR  # never a pass
    assert {c.gpu for c in _bad(res)} == {gpu}


def test_wrong_custom_allreduce_fails_the_node(sim_node, tmp_path):
    sim_node.node_values["custom_allreduce_wrong"] = 3
    res = run_sim(sim_node, tmp_path)
    hit = [c for c in _bad(res) if c.name == "custom_allreduce_wrong"]
    assert hit and hit[0].gpu is None and hit[0].reason == V.MK_WRONG_RESULT
    assert res.verdict.verdict == "fail"


def test_unavailable_op_backend_is_an_error_never_a_pass(sim_node, tmp_path):
    inner = sim_node.runner()
    why = "no kernel backend serves attention.attention here (triton: Triton is not installed)"

    class NoTriton:
        def run(self, spec, **kw):
            rec = inner.run(spec, **kw)
            if spec.name == "attention" and kw["gpu"] == 4:
                rec["unavailable"] = [
                    {"metric": m["metric"], "gpu": 4, "reason": why} for m in rec["measurements"]
                ]
                rec["measurements"] = []
            return rec

    res = certify_node(
        NodeConfig(out=tmp_path, layer=sim_node.layer(), runner=NoTriton(), write_reports=False)
    )
    bad = _bad(res, 4)
    assert {c.name for c in bad} == set(get("attention").metrics)
    assert all(c.status == V.ERROR and c.reason == V.MK_UNAVAILABLE for c in bad)
    assert all(c.message == why for c in bad)
    assert res.verdict.verdict == "fail" and res.exit_code == 3


def test_custom_allreduce_is_not_expected_on_a_one_gpu_node(tmp_path):
    node = SimNode.healthy("h100-sxm", gpus=1)
    res = run_sim(node, tmp_path)
    assert res.verdict.verdict == "pass", [c for c in res.checks if c.status != "pass"]
    listed = [c for c in res.checks if "custom_allreduce" in c.name]  # listed, not judged
    assert [(c.name, c.status, c.reason) for c in listed] == [
        ("probe.custom_allreduce", V.SKIPPED, V.MK_NOT_APPLICABLE)
    ]
    recs = [r for r in res.records if r.get("probe") == "custom_allreduce"]
    assert recs and recs[0]["status"] == "not_applicable"
    assert ("custom_allreduce", None) not in node.calls  # never started
    assert [c for c in res.checks if c.name == "attention_fwd_tflops"]  # per-GPU ones still run


def test_custom_allreduce_that_cannot_run_is_skipped_where_the_profile_makes_it_optional(
    sim_node, tmp_path
):
    inner = sim_node.runner()
    why = "GPU 0 cannot map GPU 1's memory (no peer access): CUDA IPC needs it"

    class NoPeerAccess:
        def run(self, spec, **kw):
            rec = inner.run(spec, **kw)
            if spec.name == "custom_allreduce":
                rec["unavailable"] = [
                    {"metric": m, "gpu": None, "reason": why} for m in spec.metrics
                ]
                rec["measurements"] = []
            return rec

    def certify(out, targets_file=None):
        return certify_node(
            NodeConfig(
                out=out,
                layer=sim_node.layer(),
                runner=NoPeerAccess(),
                targets=targets_file,
                write_reports=False,
            )
        )

    # h100-sxm (NVLink): the custom all-reduce is expected; could not run = error.
    res = certify(tmp_path / "a")
    bad = [c for c in _bad(res) if c.name.startswith("custom_allreduce")]
    assert len(bad) == 3 and all(c.status == V.ERROR and c.message == why for c in bad)
    # A profile that makes it optional (as h100-pcie, l40s and b200 do): skipped, with why.
    f = tmp_path / "t.json"
    f.write_text(
        '{"extends": "h100-sxm", "profile": "pcie-like", "optional": '
        '["custom_allreduce_busbw_gbps", "custom_allreduce_small_busbw_gbps", '
        '"custom_allreduce_wrong"]}'
    )
    res = certify(tmp_path / "b", f)
    assert res.verdict.verdict == "pass", _bad(res)
    skipped = [c for c in res.checks if c.name.startswith("custom_allreduce")]
    assert len(skipped) == 3 and all(c.status == V.SKIPPED and c.message == why for c in skipped)
    for name in ("h100-pcie", "l40s", "b200"):
        assert "custom_allreduce_wrong" in targets.load(name).optional, name


# --------------------------------------------------------------------------- on a GPU

GPU_SHORT = {
    "attention": {"fwd_shape": [1, 2048, 8, 128], "decode_shape": [16, 2048, 16, 32, 8, 128]},
    "quant": {"w4a16_mnk": [16, 4096, 4096], "fp8_mnk": [2048, 4096, 4096]},
    "custom_allreduce": {"iters": 10, "warmup": 3},
}


def _measured(res):
    return {
        (m["metric"], m["gpu"]): m["value"]
        for r in res.records
        if r.get("type") == "probe"
        for m in r["measurements"]
    }


@pytest.mark.gpu
def test_op_probes_on_a_gpu_are_right_and_plausible(tmp_path):
    res = certify_node(
        NodeConfig(out=tmp_path, quick=True, probes=["attention", "quant"], params=GPU_SHORT)
    )
    recs = [r for r in res.records if r.get("type") == "probe"]
    assert recs and all(r["status"] == "ok" for r in recs), [
        (r["probe"], r["status"], r["message"], r["stderr_tail"][-800:]) for r in recs
    ]
    m = _measured(res)
    assert all(m[(w, 0)] == 0 for w in WRONG if (w, 0) in m), m
    assert m[("attention_fwd_tflops", 0)] > 20 and m[("attention_decode_gbps", 0)] > 100
    assert m[("quant_w4a16_gbps", 0)] > 50
    if torch.cuda.get_device_capability() >= (8, 9):
        assert m[("quant_fp8_rowwise_tflops", 0)] > 20
    else:
        why = [u["reason"] for r in recs for u in r["unavailable"]]
        assert why and all("8.9" in w for w in why), why


@pytest.mark.multi_gpu
def test_custom_allreduce_probe_on_several_gpus(tmp_path):
    res = certify_node(
        NodeConfig(out=tmp_path, quick=True, probes=["custom_allreduce"], params=GPU_SHORT)
    )
    rec = next(r for r in res.records if r.get("probe") == "custom_allreduce")
    assert rec["status"] == "ok", (rec["message"], rec["stderr_tail"][-800:])
    m = _measured(res)
    if rec["unavailable"]:  # e.g. no peer access between these GPUs: said, not faked
        assert not m and all(u["reason"] for u in rec["unavailable"])
        return
    assert m[("custom_allreduce_wrong", None)] == 0
    assert m[("custom_allreduce_busbw_gbps", None)] > 1
    assert m[("custom_allreduce_small_busbw_gbps", None)] > 0.1
