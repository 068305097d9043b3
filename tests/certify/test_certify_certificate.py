"""Signing and verification: only a valid signature, a passing verdict and an unexpired
certificate are accepted; any edited value, a wrong key, a missing signature are rejected."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone

import pytest

from millkernels.certify import certificate as C
from millkernels.certify.sim import certify_sim as run_sim


@pytest.fixture
def signed(sim_node, tmp_path, keypair):
    private, _ = keypair
    sim_node.values = sim_node.values[:2]
    sim_node.snapshots = sim_node.snapshots[:2]
    run_sim(sim_node, tmp_path, key=private)
    return json.loads((tmp_path / "certificate.json").read_text())


def _leaves(obj, path=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _leaves(v, (*path, i))
    else:
        yield path, obj


def _edited(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if value is None:
        return 0
    return str(value) + "x"


def test_valid_certificate_is_accepted(signed, keypair):
    ok, why = C.verify(signed, keypair[1])
    assert ok, why
    assert signed["signature"]["algorithm"] == "Ed25519"


def test_every_edited_value_is_rejected(signed, keypair):
    leaves = list(_leaves(signed["certificate"]))
    assert len(leaves) > 100
    for path, value in leaves:
        doc = copy.deepcopy(signed)
        node = doc["certificate"]
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = _edited(value)
        ok, why = C.verify(doc, keypair[1])
        assert not ok and "signature does not match" in why, path


def test_added_field_is_rejected(signed, keypair):
    doc = copy.deepcopy(signed)
    doc["certificate"]["checks"].append(
        {"name": "x", "gpu": None, "value": 1, "unit": "", "status": "pass", "reason": "OK"}
    )
    assert not C.verify(doc, keypair[1])[0]


def test_wrong_key_is_rejected(signed, tmp_path):
    C.keygen(tmp_path / "other.pem", tmp_path / "other.pub")
    ok, why = C.verify(signed, tmp_path / "other.pub")
    assert not ok and "not by the pinned key" in why


def test_missing_signature_is_rejected(signed, keypair):
    for sig in (None, {}):
        doc = dict(signed, signature=sig)
        ok, why = C.verify(doc, keypair[1])
        assert not ok and "missing signature" in why
    doc = {k: v for k, v in signed.items() if k != "signature"}
    assert not C.verify(doc, keypair[1])[0]


def test_expired_certificate_is_rejected(signed, keypair):
    until = datetime.fromisoformat(signed["certificate"]["valid_until"].replace("Z", "+00:00"))
    assert C.verify(signed, keypair[1], now=until - timedelta(seconds=1))[0]
    ok, why = C.verify(signed, keypair[1], now=until + timedelta(seconds=1))
    assert not ok and why.startswith("expired")


def test_failing_verdict_is_rejected_even_if_signed(sim_node, tmp_path, keypair):
    sim_node.snapshot(0).update(remap_pending=True)
    run_sim(sim_node, tmp_path, key=keypair[0], probes=["hbm"])
    doc = json.loads((tmp_path / "certificate.json").read_text())
    ok, why = C.verify(doc, keypair[1])
    assert not ok and "verdict is 'fail'" in why and "DCGM_FR_PENDING_ROW_REMAP" in why


def test_certificate_follows_the_published_schema(signed):
    jsonschema = pytest.importorskip("jsonschema")
    schema = C.schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(signed["certificate"], schema)
    cert = signed["certificate"]
    for c in cert["checks"]:
        assert {"name", "gpu", "value", "unit", "status", "reason"} <= set(c)
    assert cert["tool"]["git_sha"] and cert["node"]["gpus"][0]["uuid"]
    assert cert["started_at"] <= cert["ended_at"] <= cert["issued_at"] < cert["valid_until"]


def test_canonical_form_is_sorted_compact_utf8():
    assert C.canonical({"b": 1, "a": [1.5, "é"]}) == '{"a":[1.5,"é"],"b":1}'.encode()
    with pytest.raises(ValueError):
        C.canonical({"x": float("nan")})


def test_without_cryptography_certify_writes_unsigned_and_verify_says_why(
    sim_node, tmp_path, keypair, monkeypatch
):
    def missing():
        raise RuntimeError("the 'cryptography' package is needed for Ed25519 signatures (test)")

    monkeypatch.setattr(C, "_crypto", missing)
    res = run_sim(sim_node, tmp_path, key=keypair[0], probes=["hbm"])
    doc = json.loads((tmp_path / "certificate.json").read_text())
    assert doc["signature"] is None and "cryptography" in doc["unsigned_reason"]
    assert res.verdict.verdict == "pass" and any("NOT signed" in n for n in res.notes)
    ok, why = C.verify(doc, keypair[1])
    assert not ok and "missing signature" in why and "cryptography" in why


def test_keygen_refuses_to_overwrite(tmp_path):
    C.keygen(tmp_path / "k.pem", tmp_path / "k.pub")
    assert (tmp_path / "k.pem").stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):
        C.keygen(tmp_path / "k.pem", tmp_path / "k2.pub")


def test_valid_until_follows_the_profile(signed):
    cert = signed["certificate"]
    end = datetime.fromisoformat(cert["ended_at"].replace("Z", "+00:00"))
    until = datetime.fromisoformat(cert["valid_until"].replace("Z", "+00:00"))
    days = cert["profile"]["targets"]["validity_days"]
    assert until - end == timedelta(days=days) and until.tzinfo == timezone.utc


# ------------------------------------------------------------------------------ keys


def _cli(*args: str, env: dict[str, str] | None = None):
    from typer.testing import CliRunner

    from millkernels.certify.__main__ import app

    return CliRunner().invoke(app, list(args), env=env)


def test_keygen_force_writes_the_private_key_0600_over_a_0644_file(tmp_path):
    priv, pub = tmp_path / "k.pem", tmp_path / "k.pub"
    priv.write_text("old")
    priv.chmod(0o644)
    pub.write_text("old")
    r = _cli("keygen", "--private", str(priv), "--public", str(pub), "--force")
    assert r.exit_code == 0, r.output
    assert priv.stat().st_mode & 0o777 == 0o600
    assert C.load_private(priv) is not None and C.load_public(pub) is not None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


def test_encrypted_private_key_gets_a_clear_error(tmp_path):
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.BestAvailableEncryption(b"secret")
    )
    path = tmp_path / "enc.pem"
    path.write_bytes(pem)
    with pytest.raises(ValueError, match=r"enc\.pem is encrypted"):
        C.load_private(path)


def test_a_private_key_readable_by_others_is_warned_about(signed, keypair, tmp_path):
    key = tmp_path / "k.pem"
    key.write_bytes(keypair[0].read_bytes())
    key.chmod(0o600)
    assert C.sign_document(signed["certificate"], key)[1] == []
    key.chmod(0o640)
    notes = C.sign_document(signed["certificate"], key)[1]
    assert len(notes) == 1 and "readable by group or others" in notes[0] and str(key) in notes[0]


def test_first_use_of_the_node_key_says_where_it_is_and_to_register_it(tmp_path, monkeypatch):
    path = tmp_path / "cfg" / "node-key.pem"
    monkeypatch.setenv(C.KEY_ENV, str(path))
    got, notes = C.node_key()
    assert got == path and path.stat().st_mode & 0o777 == 0o600
    assert len(notes) == 1 and str(path) in notes[0]
    assert str(path.with_suffix(".pub")) in notes[0] and "marketplace" in notes[0]
    assert C.node_key() == (path, [])  # only the run that made it says so
    # ... and `certify` prints it (here it stops at once on an unknown profile).
    path2 = tmp_path / "cfg2" / "node-key.pem"
    r = _cli(
        "certify", "--out", str(tmp_path / "o"), "--profile", "h900", env={C.KEY_ENV: str(path2)}
    )
    assert r.exit_code == 2 and f"signing key {path2}" in r.output, r.output


def test_a_bad_node_key_is_named_as_the_node_key_not_as_key(tmp_path):
    bad = tmp_path / "node-key.pem"
    bad.write_text("not a key")
    r = _cli("certify", "--out", str(tmp_path / "o"), env={C.KEY_ENV: str(bad)})
    assert r.exit_code == 2, r.output
    assert f"node key {bad}" in r.output and C.KEY_ENV in r.output and "--key" not in r.output
    assert not (tmp_path / "o" / "results.jsonl").exists()
