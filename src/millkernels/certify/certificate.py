"""Certificates: build, sign (Ed25519), verify.

``certificate.json`` is ``{"certificate": {...}, "signature": {...} | null}``. The certificate
part follows the JSON Schema shipped beside this module (``certificate.schema.json``, version
in ``SCHEMA_VERSION``). The signature is Ed25519 over the certificate part's canonical JSON:
keys sorted, no whitespace (``","`` and ``":"`` separators), UTF-8, no NaN/infinity; floats
are stored rounded to 6 significant figures so their text is short and stable. A verifier in
another language must produce the same bytes (Python's ``json.dumps(obj, sort_keys=True,
separators=(",", ":"), ensure_ascii=False)``).

``cryptography`` is imported only when signing or verifying: without it, ``certify`` writes an
unsigned certificate (``"signature": null`` and an ``"unsigned_reason"``) and says so, and
``verify`` fails with the reason.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from datetime import datetime, timedelta, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from millkernels.certify import verdict as V
from millkernels.certify.targets import validity_days

SCHEMA_VERSION = "1.0"
SCHEMA_ID = "https://millkernels.dev/schemas/certificate-1.0.json"
ALGORITHM = "Ed25519"
CANONICALIZATION = "json-sorted-keys-compact-utf8"


def canonical(obj: Any) -> bytes:
    """The bytes that are signed."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def schema() -> dict[str, Any]:
    """The certificate JSON Schema (draft 2020-12) shipped in the package."""
    return json.loads(
        resources.files("millkernels.certify").joinpath("certificate.schema.json").read_text()
    )


def _parse_time(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


def _iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _gpu_identity(inv: dict[str, Any]) -> list[dict[str, Any]]:
    keys = (
        "index",
        "name",
        "uuid",
        "serial",
        "pci_bus_id",
        "pci_device_id",
        "vbios",
        "inforom",
        "board_part_number",
        "memory_bytes",
    )
    return [{k: g.get(k) for k in keys} for g in inv.get("gpus", [])]


def build_certificate(
    *,
    kind: str,
    device_class: str,
    host: dict[str, Any],
    inventory: dict[str, Any],
    profile: Any,
    mode: str,
    checks: list[V.Check],
    verdict: V.Verdict,
    started_at: str,
    ended_at: str,
    run_id: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The certificate part (unsigned)."""
    from millkernels import __version__
    from millkernels.bench.env import git_sha

    days = validity_days(profile.data, mode)
    valid_until = _iso(_parse_time(ended_at) + timedelta(days=days))
    label = (
        f"CPU certificate ({mode} mode): this machine was certified without a GPU "
        "(cpu profile); it says nothing about any GPU"
        if device_class == "cpu"
        else f"GPU {kind} certificate ({profile.name}, {mode} mode)"
    )
    cert = {
        "schema": SCHEMA_ID,
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "device_class": device_class,
        "label": label,
        "id": run_id,
        "tool": {"name": "millkernels", "version": __version__, "git_sha": git_sha()},
        "node": {
            **host,
            "driver": inventory.get("driver", {}),
            "nvml_available": bool(inventory.get("available")),
            "gpus": _gpu_identity(inventory),
        },
        "profile": profile.summary(),
        "mode": mode,
        "verdict": verdict.verdict,
        "summary": {"counts": verdict.counts, "reasons": verdict.reasons, "gpus": verdict.gpus},
        "checks": [c.to_dict() for c in checks],
        "started_at": started_at,
        "ended_at": ended_at,
        "valid_until": valid_until,
    }
    if extra:
        cert.update(extra)
    # Round-trip once so the signed object is exactly what a reader parses back.
    return json.loads(canonical(cert))


# ------------------------------------------------------------------------------ keys


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as exc:
        raise RuntimeError(
            f"the 'cryptography' package is needed for Ed25519 signatures ({exc})"
        ) from exc
    return ed25519, serialization


def keygen(private: Path, public: Path, *, overwrite: bool = False) -> str:
    """Write a new Ed25519 key pair (PEM: PKCS#8 private key, mode 0600; SubjectPublicKeyInfo
    public key). Returns the key id (first 16 hex digits of the public key's sha256).

    Raises FileExistsError when a file exists and ``overwrite`` is False; RuntimeError when
    ``cryptography`` is missing."""
    ed25519, ser = _crypto()
    private, public = Path(private), Path(public)
    for p in (private, public):
        if p.exists() and not overwrite:
            raise FileExistsError(f"{p} exists; refusing to overwrite a key")
    key = ed25519.Ed25519PrivateKey.generate()
    priv_pem = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    pub = key.public_key()
    pub_pem = pub.public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo)
    private.parent.mkdir(parents=True, exist_ok=True)
    public.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(priv_pem)
    public.write_bytes(pub_pem)
    return key_id(pub)


KEY_ENV = "MILLKERNELS_KEY"


def default_key() -> Path:
    """The node's own signing key, used when ``certify`` gets no ``--key``: ``$MILLKERNELS_KEY``
    or ``~/.config/millkernels/node-key.pem``, made (with its ``.pub``) on first use.

    A marketplace should pin the public keys it trusts; this default only means a plain
    ``certify`` always produces a certificate that ``verify`` can check.
    Raises RuntimeError when ``cryptography`` is missing."""
    path = Path(os.environ.get(KEY_ENV) or Path.home() / ".config" / "millkernels" / "node-key.pem")
    if not path.exists():
        keygen(path, path.with_suffix(".pub"))
    return path


def write_public(private: Path, public: Path) -> None:
    """Write the PEM public key of the private key file ``private`` to ``public``."""
    _, ser = _crypto()
    from millkernels.certify.outdir import write_atomic

    pub = load_private(private).public_key()
    write_atomic(public, pub.public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo))


def _raw_public(pub: Any) -> bytes:
    _, ser = _crypto()
    return pub.public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)


def key_id(pub: Any) -> str:
    return hashlib.sha256(_raw_public(pub)).hexdigest()[:16]


def load_private(path: Path) -> Any:
    ed25519, ser = _crypto()
    key = ser.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError(f"key: {path} is not an Ed25519 private key")
    return key


def load_public(path: Path) -> Any:
    ed25519, ser = _crypto()
    key = ser.load_pem_public_key(Path(path).read_bytes())
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ValueError(f"public: {path} is not an Ed25519 public key")
    return key


# ------------------------------------------------------------------------------ sign / verify


def sign(cert: dict[str, Any], private_key: Any) -> dict[str, Any]:
    """``{"certificate": cert, "signature": {...}}``."""
    sig = private_key.sign(canonical(cert))
    pub = private_key.public_key()
    return {
        "certificate": cert,
        "signature": {
            "algorithm": ALGORITHM,
            "canonicalization": CANONICALIZATION,
            "key_id": key_id(pub),
            "public_key": base64.b64encode(_raw_public(pub)).decode(),
            "value": base64.b64encode(sig).decode(),
        },
    }


def sign_document(cert: dict[str, Any], key: Path | None) -> tuple[dict[str, Any], list[str]]:
    """Sign with the key file when given and ``cryptography`` is present; otherwise an
    unsigned document that says why. Returns (document, notes for the operator)."""
    if key is None:
        why = "no --key given"
    else:
        try:
            return sign(cert, load_private(key)), []
        except RuntimeError as exc:  # cryptography missing
            why = str(exc)
    note = f"certificate NOT signed: {why}; `millkernels verify` will reject it"
    return {"certificate": cert, "signature": None, "unsigned_reason": why}, [note]


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` as indented JSON, atomically (``outdir.write_atomic``: never through a
    link, never half-written). Raises ``outdir.OutputError`` when the file cannot be written."""
    from millkernels.certify.outdir import write_atomic

    text = json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
    write_atomic(Path(path), text + "\n")


def _schema_errors(cert: Any) -> list[str]:
    try:
        import jsonschema
    except ImportError:  # minimal structural check without jsonschema
        req = schema()["required"]
        if not isinstance(cert, dict):
            return ["the certificate part is not an object"]
        return [f"missing field {k!r}" for k in req if k not in cert]
    v = jsonschema.Draft202012Validator(schema())
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
        for e in v.iter_errors(cert)
    ][:5]


def verify(
    doc: dict[str, Any], public_key_path: Path, *, now: datetime | None = None
) -> tuple[bool, str]:
    """(ok, reason). OK only for: a schema-valid certificate, a present Ed25519 signature that
    matches the public key over the canonical certificate, verdict "pass", and ``now`` (default:
    the current time) before ``valid_until``."""
    if not isinstance(doc, dict) or "certificate" not in doc:
        return False, "not a certificate document (no 'certificate' object)"
    cert, sig = doc["certificate"], doc.get("signature")
    if not sig:
        why = doc.get("unsigned_reason")
        return False, "missing signature" + (f" (unsigned: {why})" if why else "")
    try:
        _crypto()
    except RuntimeError as exc:
        return False, f"cannot verify: {exc}"
    if sig.get("algorithm") != ALGORITHM:
        return False, f"unsupported signature algorithm {sig.get('algorithm')!r}"
    try:
        pub = load_public(public_key_path)
    except (OSError, ValueError) as exc:
        return False, f"cannot read the public key: {exc}"
    try:
        raw = base64.b64decode(sig["value"], validate=True)
        pub.verify(raw, canonical(cert))
    except Exception:
        return (
            False,
            "signature does not match the certificate and the public key "
            "(edited, or signed by another key)",
        )
    errors = _schema_errors(cert)
    if errors:
        return False, "certificate does not follow the schema: " + "; ".join(errors)
    if cert.get("verdict") != "pass":
        reasons = ", ".join(cert.get("summary", {}).get("reasons", [])) or "see checks"
        return False, f"verdict is {cert.get('verdict')!r} ({reasons})"
    now = now or datetime.now(timezone.utc)
    try:
        until = _parse_time(cert["valid_until"])
    except (KeyError, ValueError):
        return False, "valid_until is missing or unreadable"
    if now >= until:
        return False, f"expired: valid until {cert['valid_until']}"
    return (
        True,
        f"valid: {cert.get('kind')} certificate, verdict pass, valid until {cert['valid_until']}",
    )
