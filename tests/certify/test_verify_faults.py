"""``millkernels verify`` against forged and malformed certificates: every case ends in
``rejected: <reason>`` and exit 1 (never a traceback, never a hang); valid GPU certificates are
accepted with a line that names what was certified, CPU certificates only with --allow-cpu."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from millkernels.certify import certificate as C
from millkernels.certify import verdict as V
from millkernels.certify.probes.runner import base_record, now_iso
from millkernels.certify.sim import SimNode
from millkernels.certify.sim import certify_sim as run_sim

pytest.importorskip("cryptography")


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    """The pinned key and another one, made once for the module."""
    d = tmp_path_factory.mktemp("verify-keys")
    C.keygen(d / "pinned.pem", d / "pinned.pub")
    C.keygen(d / "other.pem", d / "other.pub")
    return {n: d / n for n in ("pinned.pem", "pinned.pub", "other.pem", "other.pub")}


@pytest.fixture(scope="module")
def gpu_doc(tmp_path_factory, keys) -> dict[str, Any]:
    """A passing signed certificate of a simulated 2-GPU H100 node (every probe)."""
    out = tmp_path_factory.mktemp("gpu-cert")
    run_sim(SimNode.healthy(gpus=2), out, key=keys["pinned.pem"])
    return json.loads((out / "certificate.json").read_text())


class _CpuRunner:
    """Answers every CPU probe with healthy values (no process, no measurement)."""

    def run(self, spec: Any, *, gpu: int | None, **_: Any) -> dict[str, Any]:
        rec = base_record(spec.name, gpu)
        for m in spec.metrics:
            value = 0 if m.endswith("mismatches") else 40.0 + len(m)
            rec["measurements"].append({"metric": m, "gpu": None, "value": value, "unit": ""})
        rec.update(status="ok", started_at=now_iso(), ended_at=now_iso(), duration_s=0.0)
        return rec


@pytest.fixture(scope="module")
def cpu_doc(tmp_path_factory, keys) -> dict[str, Any]:
    """A passing signed CPU certificate (the cpu profile, probes answered in-process)."""
    from millkernels.certify.node import NodeConfig, certify_node

    node = SimNode.healthy(gpus=1)
    node.nvml_error = "NVML Shared Library Not Found"
    node.pci_gpus = 0  # a machine without NVIDIA GPUs
    out = tmp_path_factory.mktemp("cpu-cert")
    cfg = NodeConfig(
        out=out,
        profile="cpu",
        key=keys["pinned.pem"],
        layer=node.layer(),
        runner=_CpuRunner(),
        write_reports=False,
    )
    res = certify_node(cfg)
    assert res.verdict.verdict == "pass", res.verdict.reasons
    return json.loads((out / "certificate.json").read_text())


def _verify(tmp_path: Path, content: bytes | dict | Path, public: Path, *extra: str):
    """Run ``verify`` through the CLI; returns (exit code, output)."""
    from millkernels.certify.__main__ import app

    if isinstance(content, Path):
        path = content
    else:
        path = tmp_path / "certificate.json"
        data = content if isinstance(content, bytes) else json.dumps(content).encode()
        path.write_bytes(data)
    r = CliRunner().invoke(app, ["verify", str(path), "--public", str(public), *extra])
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    return r.exit_code, r.output


def _assert_rejected(code: int, output: str, reason: str) -> None:
    assert code == 1, output
    assert output.startswith("rejected: "), output
    assert reason in output, output
    assert "Traceback" not in output


# ----------------------------------------------------------------------------- helpers


def _resign(doc: dict[str, Any], key: Path) -> dict[str, Any]:
    return C.sign(doc["certificate"], C.load_private(key))


def _resummarise(cert: dict[str, Any]) -> None:
    """Make the verdict and summary agree with the (edited) checks, as ``certify`` would."""
    v = V.node_verdict(
        [V.Check.from_dict(c) for c in cert["checks"]], [s["gpu"] for s in cert["summary"]["gpus"]]
    )
    cert["verdict"] = v.verdict
    cert["summary"] = {"counts": v.counts, "reasons": v.reasons, "gpus": v.gpus}


def _text(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=1, sort_keys=True)


def _replace_once(text: str, old: str, new: str) -> bytes:
    assert old in text, old
    return text.replace(old, new, 1).encode()


def _iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _at(cert: dict[str, Any], key: str) -> datetime:
    return datetime.fromisoformat(cert[key].replace("Z", "+00:00"))


# Each case: (id, mutation, the reason the output must name). A mutation takes the valid
# document (a deep copy) and the keys and returns the file content (bytes, or a document).
Mutation = Callable[[dict[str, Any], dict[str, Path]], "bytes | dict[str, Any]"]


def _signed_edit(edit: Callable[[dict[str, Any]], None]) -> Mutation:
    """Edit the certificate part, then sign it again with the pinned key: the signature is
    valid, the content is not."""

    def mutate(doc: dict[str, Any], keys: dict[str, Path]) -> dict[str, Any]:
        edit(doc["certificate"])
        return _resign(doc, keys["pinned.pem"])

    return mutate


def _drop_required(cert: dict[str, Any]) -> None:
    cert["checks"] = [c for c in cert["checks"] if (c["name"], c["gpu"]) != ("hbm_copy_gbps", 1)]
    _resummarise(cert)


def _skip_required(cert: dict[str, Any]) -> None:
    for c in cert["checks"]:
        if (c["name"], c["gpu"]) == ("gemm_bf16_tflops", 0):
            c.update(status="skipped", reason="MK_UNAVAILABLE", value=None)
    _resummarise(cert)


def _fail_a_check(cert: dict[str, Any]) -> None:
    cert["checks"][-1]["status"] = "fail"  # verdict and summary left saying pass


def _no_checks(cert: dict[str, Any]) -> None:
    cert["checks"] = []
    _resummarise(cert)


def _future(cert: dict[str, Any]) -> None:
    later = datetime.now(timezone.utc) + timedelta(days=2)
    cert["issued_at"] = _iso(later)
    cert["valid_until"] = _iso(later + timedelta(days=1))


def _out_of_order(cert: dict[str, Any]) -> None:
    cert["started_at"] = _iso(_at(cert, "ended_at") + timedelta(seconds=30))


def _too_long(days: int, mode: str) -> Callable[[dict[str, Any]], None]:
    def edit(cert: dict[str, Any]) -> None:
        cert["mode"] = mode
        cert["valid_until"] = _iso(_at(cert, "ended_at") + timedelta(days=days))

    return edit


def _expired(cert: dict[str, Any]) -> None:
    """A run two days ago that was valid for one second."""
    for key in ("started_at", "ended_at", "issued_at"):
        cert[key] = _iso(_at(cert, key) - timedelta(days=2))
    cert["valid_until"] = _iso(_at(cert, "issued_at") + timedelta(seconds=1))


def _no_gpus(cert: dict[str, Any]) -> None:
    cert["checks"] = [c for c in cert["checks"] if c["gpu"] is None]
    cert["summary"]["gpus"] = []
    _resummarise(cert)


def _naive(key: str) -> Callable[[dict[str, Any]], None]:
    def edit(cert: dict[str, Any]) -> None:
        cert[key] = cert[key].rstrip("Z")

    return edit


def _claims_other_key(doc: dict[str, Any], keys: dict[str, Path]) -> dict[str, Any]:
    """Signed by the pinned key, but the signature block names the other key."""
    other = C.sign(doc["certificate"], C.load_private(keys["other.pem"]))["signature"]
    doc["signature"].update(key_id=other["key_id"], public_key=other["public_key"])
    return doc


def _sig_field(field: str, value: Any) -> Mutation:
    def mutate(doc: dict[str, Any], keys: dict[str, Path]) -> dict[str, Any]:
        doc["signature"][field] = value
        return doc

    return mutate


def _doc_edit(edit: Callable[[dict[str, Any]], None]) -> Mutation:
    def mutate(doc: dict[str, Any], keys: dict[str, Path]) -> dict[str, Any]:
        edit(doc)
        return doc

    return mutate


def _dup_valid_until(doc: dict[str, Any], keys: dict[str, Path]) -> bytes:
    """A second, later valid_until before the signed one: Python keeps the last one (which the
    signature covers); another parser may keep the first."""
    v = doc["certificate"]["valid_until"]
    return _replace_once(
        _text(doc),
        f'"valid_until": "{v}"',
        f'"valid_until": "2099-01-01T00:00:00Z", "valid_until": "{v}"',
    )


def _dup_status(doc: dict[str, Any], keys: dict[str, Path]) -> bytes:
    return _replace_once(_text(doc), '"status": "pass"', '"status": "fail", "status": "pass"')


def _dup_top(key: str) -> Mutation:
    def mutate(doc: dict[str, Any], keys: dict[str, Path]) -> bytes:
        body = _text(doc)
        return ('{"' + key + '": {"forged": true}, ' + body[1:]).encode()

    return mutate


def _raw(make: Callable[[str], bytes]) -> Mutation:
    return lambda doc, keys: make(_text(doc))


def _value_token(token: str) -> Mutation:
    return _raw(lambda t: _replace_once(t, '"value": 0\n', f'"value": {token}\n'))


def _by_other_key(doc: dict[str, Any], keys: dict[str, Path]) -> dict[str, Any]:
    return _resign(doc, keys["other.pem"])


CASES: list[tuple[str, Mutation, str]] = [
    # B: unknown keys next to the signed object and in the signature.
    ("top-level extra key", _doc_edit(lambda d: d.update(note="ok")), "unknown top-level key"),
    (
        "unsigned_reason beside a signature",
        _doc_edit(lambda d: d.update(unsigned_reason="x")),
        "unsigned_reason",
    ),
    ("signature extra key", _sig_field("comment", "trust me"), "unknown signature field"),
    # C: duplicate keys at every level.
    ("duplicate valid_until", _dup_valid_until, "duplicate key 'valid_until'"),
    ("duplicate check status", _dup_status, "duplicate key 'status'"),
    ("duplicate certificate", _dup_top("certificate"), "duplicate key 'certificate'"),
    ("duplicate signature", _dup_top("signature"), "duplicate key 'signature'"),
    # D: malformed signatures.
    ("signature is a string", _doc_edit(lambda d: d.update(signature="c2ln")), "not an object"),
    ("signature is a list", _doc_edit(lambda d: d.update(signature=[1, 2])), "not an object"),
    ("signature is a number", _doc_edit(lambda d: d.update(signature=7)), "not an object"),
    ("signature value a number", _sig_field("value", 12), "not strings: value"),
    ("signature key_id a list", _sig_field("key_id", ["a"]), "not strings: key_id"),
    ("signature public_key null", _sig_field("public_key", None), "not strings: public_key"),
    ("signature algorithm an object", _sig_field("algorithm", {}), "not strings: algorithm"),
    ("signature without value", _doc_edit(lambda d: d["signature"].pop("value")), "value"),
    ("signature algorithm RSA", _sig_field("algorithm", "RSA"), "unsupported signature"),
    ("signature canonicalization", _sig_field("canonicalization", "xml"), "canonicalization"),
    ("signature value not base64", _sig_field("value", "!!"), "signature does not match"),
    ("public_key not base64", _sig_field("public_key", "%%"), "not a base64 Ed25519"),
    ("key_id not the key's", _sig_field("key_id", "0123456789abcdef"), "is not the id"),
    # D: bytes that are not one clean JSON object.
    ("bad UTF-8", _raw(lambda t: t.encode().replace(b'"label": "', b'"label": "\xff', 1)), "UTF-8"),
    ("UTF-8 BOM", _raw(lambda t: b"\xef\xbb\xbf" + t.encode()), "byte-order mark"),
    ("UTF-16 with BOM", _raw(lambda t: t.encode("utf-16")), "byte-order mark"),
    ("UTF-16 without BOM", _raw(lambda t: t.encode("utf-16-le")), "NUL bytes"),
    (
        "deep nesting",
        _raw(lambda t: b'{"certificate": ' + b"[" * 200000 + b"]" * 200000 + b"}"),
        "nested too deeply",
    ),
    ("5000-digit integer", _value_token("1" + "0" * 5000), "not valid JSON"),
    ("NaN", _value_token("NaN"), "NaN is not a JSON number"),
    ("Infinity", _value_token("Infinity"), "Infinity is not a JSON number"),
    ("-Infinity", _value_token("-Infinity"), "Infinity is not a JSON number"),
    ("1e999", _value_token("1e999"), "out of range"),
    (
        "lone surrogate",
        _raw(lambda t: _replace_once(t, '"label": "', '"label": "\\ud800')),
        "not valid Unicode",
    ),
    ("truncated", _raw(lambda t: t[: len(t) // 2].encode()), "not valid JSON"),
    ("empty file", _raw(lambda t: b""), "not valid JSON"),
    ("top level a list", _raw(lambda t: b"[]"), "not an object"),
    ("top level a string", _raw(lambda t: b'"certificate"'), "not an object"),
    ("top level null", _raw(lambda t: b"null"), "not an object"),
    # E: validly signed content that makes no sense.
    ("pass with a failed check", _signed_edit(_fail_a_check), "contradicts its checks"),
    (
        "counts edited",
        _signed_edit(lambda c: c["summary"]["counts"].update(fail=0, skipped=3)),
        "summary",
    ),
    ("zero checks", _signed_edit(_no_checks), "no checks"),
    ("a required check missing", _signed_edit(_drop_required), "hbm_copy_gbps@gpu1"),
    ("a required check skipped", _signed_edit(_skip_required), "gemm_bf16_tflops@gpu0"),
    ("no GPU judged", _signed_edit(_no_gpus), "judged no GPU"),
    ("issued in the future", _signed_edit(_future), "in the future"),
    ("times out of order", _signed_edit(_out_of_order), "out of order"),
    ("standard valid 31 days", _signed_edit(_too_long(31, "standard")), "at most 30 days"),
    ("quick valid 30 days", _signed_edit(_too_long(30, "quick")), "at most 7 days"),
    ("naive valid_until", _signed_edit(_naive("valid_until")), "has no timezone"),
    ("naive issued_at", _signed_edit(_naive("issued_at")), "has no timezone"),
    ("expired", _signed_edit(_expired), "expired: valid until"),
    (
        "cpu class on a gpu profile",
        _signed_edit(lambda c: c.update(device_class="cpu")),
        "device_class 'cpu'",
    ),
    (
        "schema: a check without status",
        _signed_edit(lambda c: c["checks"][0].pop("status")),
        "schema",
    ),
    # E: keys.
    ("claims another key", _claims_other_key, "not by the pinned key"),
    ("signed by another key", _by_other_key, "not by the pinned key"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_forged_or_malformed_certificate_is_rejected(case, gpu_doc, keys, tmp_path):
    _, mutate, reason = case
    content = mutate(copy.deepcopy(gpu_doc), keys)
    code, out = _verify(tmp_path, content, keys["pinned.pub"])
    _assert_rejected(code, out, reason)


# ----------------------------------------------------------------------------- files and keys


def _fifo(tmp_path: Path, name: str) -> Path:
    p = tmp_path / name
    os.mkfifo(p)
    return p


def _big(tmp_path: Path, name: str, size: int) -> Path:
    p = tmp_path / name
    with open(p, "wb") as f:
        f.truncate(size)
    return p


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "where, reason",
    [
        (lambda d: _fifo(d, "fifo.json"), "not a regular file"),
        (lambda d: Path("/dev/zero"), "not a regular file"),
        (lambda d: d, "not a regular file"),
        (lambda d: _big(d, "big.json", C.MAX_DOCUMENT_BYTES + 1), "larger than"),
        (lambda d: d / "missing.json", "cannot read"),
    ],
    ids=["fifo", "dev-zero", "directory", "over-8MiB", "missing"],
)
def test_certificate_file_that_is_not_a_small_regular_file_is_rejected(
    where, reason, keys, tmp_path
):
    code, out = _verify(tmp_path, where(tmp_path), keys["pinned.pub"])
    _assert_rejected(code, out, reason)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "public, reason",
    [
        (lambda d: _fifo(d, "fifo.pub"), "not a regular file"),
        (lambda d: Path("/dev/zero"), "not a regular file"),
        (lambda d: _big(d, "big.pub", C.MAX_KEY_BYTES + 1), "larger than"),
        (lambda d: d / "missing.pub", "cannot read public key"),
        (lambda d: (d / "junk.pub").write_text("not a key") and d / "junk.pub", "not a PEM"),
    ],
    ids=["fifo", "dev-zero", "too-big", "missing", "not-pem"],
)
def test_public_key_file_faults_are_rejected(public, reason, gpu_doc, keys, tmp_path):
    code, out = _verify(tmp_path, gpu_doc, public(tmp_path))
    _assert_rejected(code, out, reason)


def test_private_key_as_public_key_is_rejected(gpu_doc, keys, tmp_path):
    code, out = _verify(tmp_path, gpu_doc, keys["pinned.pem"])
    _assert_rejected(code, out, "not a PEM public key")


# ----------------------------------------------------------------------------- GPU by default


def test_gpu_certificate_is_accepted_with_what_it_certifies(gpu_doc, keys, tmp_path):
    code, out = _verify(tmp_path, gpu_doc, keys["pinned.pub"])
    assert code == 0, out
    assert out.startswith(
        "valid: node certificate, gpu, 2x NVIDIA H100 80GB HBM3 (h100-sxm, standard), "
        "verdict pass, valid until "
    ), out
    assert gpu_doc["signature"]["key_id"] in out


def test_cpu_certificate_is_rejected_unless_allow_cpu(cpu_doc, keys, tmp_path):
    code, out = _verify(tmp_path, cpu_doc, keys["pinned.pub"])
    _assert_rejected(code, out, "CPU certificate")
    assert "--allow-cpu" in out
    code, out = _verify(tmp_path, cpu_doc, keys["pinned.pub"], "--allow-cpu")
    assert code == 0 and out.startswith("valid: node certificate, cpu, "), out
    assert "(cpu, standard)" in out and "NVIDIA" not in out


def test_cpu_certificate_of_a_machine_with_nvidia_gpus_says_so(cpu_doc, keys, tmp_path):
    doc = copy.deepcopy(cpu_doc)
    doc["certificate"]["node"]["pci_nvidia_gpus"] = ["0000:18:00.0", "0000:2a:00.0"]
    doc = _resign(doc, keys["pinned.pem"])
    code, out = _verify(tmp_path, doc, keys["pinned.pub"], "--allow-cpu")
    assert code == 0, out
    assert "2 NVIDIA GPU(s) (0000:18:00.0, 0000:2a:00.0)" in out and "says nothing" in out


# ----------------------------------------------------------------------------- binding


def test_node_and_gpu_binding(gpu_doc, keys, tmp_path):
    node = gpu_doc["certificate"]["node"]
    uuids = [g["uuid"] for g in node["gpus"]]
    ok = [
        ["--node", node["hostname"]],
        ["--node", node["hostname"], "--gpu-uuid", uuids[0], "--gpu-uuid", uuids[1]],
        ["--gpu-uuid", uuids[1]],
    ]
    if node.get("machine_id"):
        ok.append(["--node", node["machine_id"]])
    for extra in ok:
        code, out = _verify(tmp_path, gpu_doc, keys["pinned.pub"], *extra)
        assert code == 0, (extra, out)
    code, out = _verify(tmp_path, gpu_doc, keys["pinned.pub"], "--node", "other-host")
    _assert_rejected(code, out, "not for node 'other-host'")
    code, out = _verify(
        tmp_path, gpu_doc, keys["pinned.pub"], "--gpu-uuid", uuids[0], "--gpu-uuid", "GPU-nope"
    )
    _assert_rejected(code, out, "'GPU-nope' are not among the certified GPUs")


def test_gpu_outside_the_tested_set_is_not_certified(gpu_doc, keys, tmp_path):
    """The node lists three GPUs but the run judged two (CUDA_VISIBLE_DEVICES): the third is
    not certified, and the valid line says two of three."""
    doc = copy.deepcopy(gpu_doc)
    extra = dict(doc["certificate"]["node"]["gpus"][0], index=2, uuid="GPU-untested")
    doc["certificate"]["node"]["gpus"].append(extra)
    doc = _resign(doc, keys["pinned.pem"])
    code, out = _verify(tmp_path, doc, keys["pinned.pub"])
    assert code == 0 and "2x NVIDIA H100 80GB HBM3 of the node's 3" in out, out
    code, out = _verify(tmp_path, doc, keys["pinned.pub"], "--gpu-uuid", "GPU-untested")
    _assert_rejected(code, out, "not among the certified GPUs")


@pytest.mark.parametrize(
    "edit",
    [
        lambda c: c.update(summary=[]),
        lambda c: c.update(checks={"a": 1}),
        lambda c: c["profile"].update(targets=5),
        lambda c: c.update(node="host"),
        lambda c: c["checks"][0].pop("status"),
        lambda c: c.update(valid_until=17),
    ],
    ids=["summary-list", "checks-object", "targets-number", "node-string", "no-status", "int-time"],
)
def test_wrong_types_are_rejected_without_jsonschema(edit, gpu_doc, keys, monkeypatch):
    """Where jsonschema is not installed (it is a dev dependency) only a minimal structural
    check runs: signed content of the wrong shape must still be rejected, not raise."""
    monkeypatch.setattr(C, "_schema_errors", lambda cert: [])
    doc = copy.deepcopy(gpu_doc)
    edit(doc["certificate"])
    ok, why = C.verify(_resign(doc, keys["pinned.pem"]), keys["pinned.pub"])
    assert not ok and why, why
