"""Certificates: build, sign (Ed25519), verify.

``certificate.json`` is ``{"certificate": {...}, "signature": {...} | null}`` (an unsigned
document adds ``"unsigned_reason"``; no other top-level key is accepted). The certificate part
follows the JSON Schema shipped beside this module (``certificate.schema.json``, version in
``SCHEMA_VERSION``). The signature is Ed25519 over the certificate part's canonical JSON: keys
sorted, no whitespace (``","`` and ``":"`` separators), UTF-8, no NaN/infinity; floats are
stored rounded to 6 significant figures so their text is short and stable. A verifier in
another language must produce the same bytes (Python's ``json.dumps(obj, sort_keys=True,
separators=(",", ":"), ensure_ascii=False)``) and must read the file as strictly as
:func:`parse_document` (UTF-8 without a BOM, no duplicate keys, no NaN/Infinity), so that two
readers never see different contents in one signed file.

``cryptography`` is imported only when signing or verifying: without it, ``certify`` writes an
unsigned certificate (``"signature": null`` and an ``"unsigned_reason"``) and says so, and
``verify`` fails with the reason.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import hashlib
import json
import math
import os
import stat
import tempfile
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from millkernels.certify import verdict as V
from millkernels.certify.preflight import pci_bus_ids
from millkernels.certify.targets import validity_days

SCHEMA_VERSION = "1.0"
SCHEMA_ID = "https://millkernels.dev/schemas/certificate-1.0.json"
ALGORITHM = "Ed25519"
CANONICALIZATION = "json-sorted-keys-compact-utf8"
DOCUMENT_KEYS = ("certificate", "signature", "unsigned_reason")
SIGNATURE_KEYS = ("algorithm", "canonicalization", "key_id", "public_key", "value")
MAX_DOCUMENT_BYTES = 8 << 20  # a real certificate is well under 1 MiB
MAX_KEY_BYTES = 64 << 10  # a PEM Ed25519 key is about 120 bytes
CLOCK_SKEW = timedelta(minutes=5)  # how far in the future a signed time may be


class Rejected(ValueError):
    """A certificate document (or key file) that ``verify`` refuses, with the reason."""


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


def _parse_time(s: Any, what: str = "time") -> datetime:
    """An ISO 8601 time with a timezone (``Z`` or an offset). Raises ValueError otherwise."""
    if not isinstance(s, str):
        raise ValueError(f"{what} is not a string")
    try:
        dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{what} {s!r} is not an ISO 8601 time") from None
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"{what} {s!r} has no timezone")
    return dt


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
    """The certificate part (unsigned). ``issued_at`` is now."""
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
            "pci_nvidia_gpus": pci_bus_ids(inventory) or [],
        },
        "profile": profile.summary(),
        "mode": mode,
        "verdict": verdict.verdict,
        "summary": {"counts": verdict.counts, "reasons": verdict.reasons, "gpus": verdict.gpus},
        "checks": [c.to_dict() for c in checks],
        "started_at": started_at,
        "ended_at": ended_at,
        "issued_at": _iso(datetime.now(timezone.utc)),
        "valid_until": valid_until,
    }
    if extra:
        cert.update(extra)
    # Round-trip once so the signed object is exactly what a reader parses back.
    return json.loads(canonical(cert))


def certified_gpus(cert: dict[str, Any]) -> list[dict[str, Any]]:
    """The identity (``node.gpus`` entry) of every GPU a node certificate judged: the GPUs of
    its per-GPU verdicts (``summary.gpus``), which are all of the node's NVML GPUs unless
    ``CUDA_VISIBLE_DEVICES`` chose fewer. A pod certificate: those of all its nodes."""
    if cert.get("kind") == "pod":
        return [g for n in cert.get("nodes", []) for g in n.get("gpus") or []]
    by_index = {g.get("index"): g for g in cert["node"].get("gpus", [])}
    return [by_index.get(s["gpu"]) or {"index": s["gpu"]} for s in cert["summary"]["gpus"]]


# ------------------------------------------------------------------------------ files


def read_regular_file(path: Path, limit: int, what: str) -> bytes:
    """The bytes of the regular file ``path`` (``what`` names it in errors).

    Opened non-blocking and checked with ``fstat`` on the opened descriptor, so a FIFO, a
    device (``/dev/zero``) or a directory is refused without reading it; at most ``limit + 1``
    bytes are read. Raises Rejected (not a regular file, larger than ``limit`` bytes) or OSError
    (cannot open or read)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise Rejected(f"{what} {path} is not a regular file")
        chunks, n = [], 0
        while n <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - n))
            if not chunk:
                break
            chunks.append(chunk)
            n += len(chunk)
        if n > limit:
            raise Rejected(f"{what} {path} is larger than {limit} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise Rejected(f"duplicate key {k!r} in one JSON object")
        out[k] = v
    return out


def _no_constant(token: str) -> Any:
    raise Rejected(f"{token} is not a JSON number")


def _finite_float(text: str) -> float:
    x = float(text)
    if not math.isfinite(x):
        raise Rejected(f"number {text[:40]} is out of range")
    return x


def _json_type(value: Any) -> str:
    kinds = ((bool, "boolean"), ((int, float), "number"), (str, "string"), (list, "array"))
    return next((name for t, name in kinds if isinstance(value, t)), "null")


def parse_document(raw: bytes) -> dict[str, Any]:
    """A certificate document from its file bytes, read strictly: UTF-8 without a byte-order
    mark, no duplicate keys at any level, no NaN/Infinity, numbers in range, an object at the
    top. Raises Rejected with the reason."""
    if raw.startswith((codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise Rejected("the file starts with a byte-order mark: it must be UTF-8 without a BOM")
    if b"\x00" in raw:
        raise Rejected("the file contains NUL bytes (UTF-16 or UTF-32?): it must be UTF-8")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejected(f"the file is not valid UTF-8 (byte {exc.start})") from None
    try:
        doc = json.loads(
            text,
            object_pairs_hook=_no_duplicate_keys,
            parse_constant=_no_constant,
            parse_float=_finite_float,
        )
        canonical(doc)  # text the signature cannot cover (a lone surrogate) fails here
    except Rejected:
        raise
    except RecursionError:
        raise Rejected("the JSON is nested too deeply") from None
    except UnicodeEncodeError:
        raise Rejected("the JSON holds text that is not valid Unicode (a lone surrogate)") from None
    except ValueError as exc:  # JSONDecodeError, an integer over Python's digit limit
        raise Rejected(f"not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise Rejected(f"the top level is a JSON {_json_type(doc)}, not an object")
    return doc


def read_document(path: Path) -> dict[str, Any]:
    """:func:`parse_document` of the file ``path`` (at most ``MAX_DOCUMENT_BYTES``).
    Raises Rejected with the reason."""
    try:
        raw = read_regular_file(Path(path), MAX_DOCUMENT_BYTES, "certificate")
    except OSError as exc:
        raise Rejected(f"cannot read {path}: {exc.strerror or exc}") from None
    return parse_document(raw)


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


def _publish(path: Path, data: bytes, mode: int, *, overwrite: bool) -> None:
    """Write ``data`` to ``path`` whole, with ``mode``, whatever was there before: a temp file
    in the same folder (created 0600), then renamed over ``path`` (``overwrite``) or hard-linked
    to it (fails with FileExistsError if ``path`` exists, so two processes making the same key
    at once never mix their halves)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def keygen(private: Path, public: Path, *, overwrite: bool = False) -> str:
    """Write a new Ed25519 key pair (PEM: PKCS#8 private key, mode 0600 even over an existing
    file; SubjectPublicKeyInfo public key, 0644). Returns the key id (first 16 hex digits of the
    public key's sha256).

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
    _publish(private, priv_pem, 0o600, overwrite=overwrite)  # the private half first: see
    _publish(public, pub_pem, 0o644, overwrite=overwrite)  # _publish on racing processes
    return key_id(pub)


KEY_ENV = "MILLKERNELS_KEY"


def node_key_path() -> Path:
    """Where the node's own signing key lives: ``$MILLKERNELS_KEY`` or
    ``~/.config/millkernels/node-key.pem``."""
    return Path(os.environ.get(KEY_ENV) or Path.home() / ".config" / "millkernels" / "node-key.pem")


def node_key() -> tuple[Path, list[str]]:
    """The node's signing key (used when ``certify`` gets no ``--key``), made with its ``.pub``
    on first use, and checked. Returns (path, notes for the operator): the run that makes the key
    says where it is and that the public key must be registered with the marketplace.

    A marketplace pins the public keys it trusts; this default only means a plain ``certify``
    always produces a certificate that ``verify`` can check.
    Raises RuntimeError when ``cryptography`` is missing, OSError when the key cannot be
    created, ValueError (naming the path and ``$MILLKERNELS_KEY``) when it cannot be used."""
    path = node_key_path()
    notes: list[str] = []
    if not path.exists():
        try:
            kid = keygen(path, path.with_suffix(".pub"))
            notes.append(
                f"created this node's private signing key {path} (key id {kid}); register its "
                f"public key {path.with_suffix('.pub')} with the marketplace, which accepts "
                "only certificates signed by keys it has pinned"
            )
        except FileExistsError:
            pass  # another process (a pod's other rank) made it at the same moment
    try:
        load_private(path)
    except ValueError as exc:
        raise ValueError(
            f"node key {path} (${KEY_ENV}, default ~/.config/millkernels/node-key.pem): {exc}"
        ) from None
    return path, notes


def key_notes(path: Path) -> list[str]:
    """A warning when the private key file ``path`` is readable by group or others."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return []
    if mode & 0o077:
        return [
            f"warning: the private key {path} is readable by group or others "
            f"(mode {stat.S_IMODE(mode):04o}): anyone who reads it can sign certificates; "
            f"chmod 600 {path}"
        ]
    return []


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
    """First 16 hex digits of the sha256 of the raw 32-byte Ed25519 public key."""
    return hashlib.sha256(_raw_public(pub)).hexdigest()[:16]


def _read_key(path: Path, what: str) -> bytes:
    try:
        return read_regular_file(Path(path), MAX_KEY_BYTES, what)
    except OSError as exc:
        raise ValueError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def load_private(path: Path) -> Any:
    """The Ed25519 private key in the PEM file ``path``. Raises ValueError (not a regular file,
    too large, not PEM, encrypted, not Ed25519; unreadable), RuntimeError (no cryptography)."""
    ed25519, ser = _crypto()
    data = _read_key(path, "private key")
    try:
        key = ser.load_pem_private_key(data, password=None)
    except TypeError:  # cryptography: "Password was not given but private key is encrypted"
        raise ValueError(
            f"private key {path} is encrypted (passphrase-protected); millkernels signs with an "
            "unencrypted Ed25519 key kept at mode 0600: make one with `millkernels keygen` "
            "or decrypt it (openssl pkey -in KEY -out NEW)"
        ) from None
    except Exception as exc:  # ValueError, UnsupportedAlgorithm: not a PEM private key
        raise ValueError(f"private key {path} is not a PEM private key ({exc})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ValueError(f"private key {path} is not an Ed25519 private key")
    return key


def load_public(path: Path) -> Any:
    """The Ed25519 public key in the PEM file ``path``. Raises ValueError (as
    :func:`load_private`), RuntimeError (no cryptography)."""
    ed25519, ser = _crypto()
    data = _read_key(path, "public key")
    try:
        key = ser.load_pem_public_key(data)
    except Exception as exc:  # ValueError, UnsupportedAlgorithm: not a PEM public key
        raise ValueError(f"public key {path} is not a PEM public key ({exc})") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ValueError(f"public key {path} is not an Ed25519 public key")
    return key


# ------------------------------------------------------------------------------ sign


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
    unsigned document that says why. Returns (document, notes for the operator: why it is
    unsigned, or that the key file is readable by others)."""
    if key is None:
        why = "no --key given"
    else:
        try:
            return sign(cert, load_private(key)), key_notes(key)
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


# ------------------------------------------------------------------------------ verify


def signature_key(sig: dict[str, Any]) -> Any:
    """The Ed25519 public key a signature block carries (``public_key``, base64 of the raw 32
    bytes), checked against its ``key_id``. Raises ValueError; RuntimeError (no cryptography)."""
    ed25519, _ = _crypto()
    try:
        pub = ed25519.Ed25519PublicKey.from_public_bytes(
            base64.b64decode(sig["public_key"], validate=True)
        )
    except (binascii.Error, ValueError, TypeError):
        raise ValueError("signature.public_key is not a base64 Ed25519 public key") from None
    if key_id(pub) != sig["key_id"]:
        raise ValueError(
            f"signature.key_id {_shown(sig['key_id'])} is not the id of signature.public_key "
            f"({key_id(pub)})"
        )
    return pub


def signature_matches(cert: Any, sig: dict[str, Any], pub: Any) -> bool:
    """Whether ``sig["value"]`` is ``pub``'s Ed25519 signature of ``canonical(cert)``."""
    try:
        pub.verify(base64.b64decode(sig["value"], validate=True), canonical(cert))
    except Exception:  # InvalidSignature, bad base64, text that cannot be encoded: no match
        return False
    return True


def _shown(value: Any, limit: int = 120) -> str:
    """Unsigned text from a document, safe to print on one line."""
    text = value if isinstance(value, str) else repr(value)
    text = "".join(ch if ch.isprintable() else "?" for ch in text[:limit])
    return repr(text) + ("..." if len(str(value)) > limit else "")


def _names(keys: Sequence[Any], limit: int = 5) -> str:
    shown = ", ".join(_shown(k, 40) for k in list(keys)[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _envelope(doc: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The certificate and signature objects of a document, or Rejected: only the known keys
    at the top and in the signature, every signature field a string."""
    if not isinstance(doc, dict):
        raise Rejected("not a certificate document (the top level is not a JSON object)")
    unknown = sorted(set(doc) - set(DOCUMENT_KEYS))
    if unknown:
        raise Rejected(
            f"unknown top-level key(s) {_names(unknown)}: a certificate document holds only "
            "'certificate', 'signature' and (unsigned) 'unsigned_reason'"
        )
    cert, sig = doc.get("certificate"), doc.get("signature")
    if not isinstance(cert, dict):
        raise Rejected("not a certificate document (no 'certificate' object)")
    if sig is None or sig == {}:
        why = doc.get("unsigned_reason")
        raise Rejected("missing signature" + (f" (unsigned: {_shown(why)})" if why else ""))
    if not isinstance(sig, dict):
        raise Rejected(f"the signature is a JSON {_json_type(sig)}, not an object")
    if "unsigned_reason" in doc:
        raise Rejected("a signed document carries an 'unsigned_reason'")
    unknown = sorted(set(sig) - set(SIGNATURE_KEYS))
    missing = [k for k in SIGNATURE_KEYS if k not in sig]
    not_text = [k for k in SIGNATURE_KEYS if k in sig and not isinstance(sig[k], str)]
    if unknown:
        raise Rejected(f"unknown signature field(s) {_names(unknown)}")
    if missing or not_text:
        raise Rejected(f"signature fields missing or not strings: {', '.join(missing + not_text)}")
    if sig["algorithm"] != ALGORITHM:
        raise Rejected(f"unsupported signature algorithm {_shown(sig['algorithm'])}")
    if sig["canonicalization"] != CANONICALIZATION:
        raise Rejected(f"unsupported canonicalization {_shown(sig['canonicalization'])}")
    return cert, sig


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


def required_checks(
    targets: dict[str, Any], device_class: str, gpus: Sequence[int]
) -> set[tuple[str, int | None]]:
    """The (check name, GPU) pairs a passing node certificate of profile ``targets`` on
    ``gpus`` (NVML indices; none for a CPU) must hold, as ``evaluate`` names them: ``nvml`` on a
    GPU node, and every floor metric of every probe the run plans (the profile's
    ``skip_probes`` and node probes needing more GPUs left out) unless the profile lists it as
    optional or its floor is for another GPU count: per GPU for per-GPU probes (and the per-GPU
    node metrics), once for node probes and on a CPU. PCIe link readings are judged as
    ``pcie.gen``/``pcie.width`` and not required here."""
    from millkernels.certify.evaluate import _LINK_METRICS, _NODE_PER_GPU
    from millkernels.certify.probes.registry import probes_for

    floors = targets.get("floors", {})
    optional = set(targets.get("optional", []))
    skip = set(targets.get("skip_probes", []))
    need: set[tuple[str, int | None]] = {("nvml", None)} if device_class == "gpu" else set()
    for spec in probes_for(device_class):
        if spec.name in skip or (spec.scope == "node" and len(gpus) < spec.min_gpus):
            continue
        for metric in spec.metrics:
            floor = floors.get(metric)
            if not floor or metric in optional or metric in _LINK_METRICS:
                continue
            if floor.get("gpus") is not None and floor["gpus"] != len(gpus):
                continue
            if device_class == "gpu" and (spec.scope == "gpu" or metric in _NODE_PER_GPU):
                need |= {(metric, g) for g in gpus}
            else:
                need.add((metric, None))
    return need


def _needed(cert: dict[str, Any]) -> tuple[set[tuple[str, int | None, str | None]], str | None]:
    """(name, GPU, node) of the checks ``cert`` must have passed, or a problem."""
    if cert["kind"] == "pod":
        hosts = [n["hostname"] for n in cert["nodes"]]
        if not hosts:
            return set(), "a pod certificate with no nodes"
        per_node = ("pod.node_verdict", "pod.node_signature")
        return {(n, None, h) for h in hosts for n in per_node} | {
            ("pod_allreduce_busbw_gbps", None, None)
        }, None
    gpus = [s["gpu"] for s in cert["summary"]["gpus"]]
    if cert["device_class"] == "gpu" and not gpus:
        return set(), "a GPU certificate that judged no GPU"
    need = required_checks(cert["profile"]["targets"], cert["device_class"], gpus)
    return {(n, g, None) for n, g in need}, None


def _verdict_problem(cert: dict[str, Any]) -> str | None:
    """The verdict and summary must be what the checks give (``verdict.node_verdict``), the
    verdict a pass, and every required check present and passed."""
    if not cert["checks"]:
        return "the certificate has no checks"
    checks = [V.Check.from_dict(c) for c in cert["checks"]]
    want = V.node_verdict(checks, [s["gpu"] for s in cert["summary"]["gpus"]])
    got = cert["summary"]
    if cert["verdict"] != want.verdict:
        return f"verdict {cert['verdict']!r} contradicts its checks (counts {want.counts})"
    if (got["counts"], got["reasons"], got["gpus"]) != (want.counts, want.reasons, want.gpus):
        return "the summary (counts, reasons, per-GPU verdicts) does not match the checks"
    if cert["verdict"] != V.PASS:
        return f"verdict is {cert['verdict']!r} ({', '.join(got['reasons']) or 'see checks'})"
    need, problem = _needed(cert)
    if problem:
        return problem
    passed = {(c["name"], c["gpu"], c.get("node")) for c in cert["checks"] if c["status"] == V.PASS}
    missing = [
        n + ("" if g is None else f"@gpu{g}") + ("" if h is None else f"@{h}")
        for n, g, h in sorted(need - passed, key=repr)
    ]
    if missing:
        more = f" and {len(missing) - 6} more" if len(missing) > 6 else ""
        return f"required check(s) missing or not passed: {', '.join(missing[:6])}{more}"
    return None


def _time_problem(cert: dict[str, Any], now: datetime) -> str | None:
    """Signed times with a timezone, in order, none in the future (beyond ``CLOCK_SKEW``),
    valid no longer than the profile allows for the mode, and not expired."""
    try:
        t = {k: _parse_time(cert[k], k) for k in ("started_at", "ended_at", "issued_at")}
        until = _parse_time(cert["valid_until"], "valid_until")
    except ValueError as exc:
        return str(exc)
    if not t["started_at"] <= t["ended_at"] <= t["issued_at"] < until:
        return "times out of order (started_at <= ended_at <= issued_at < valid_until)"
    if t["issued_at"] > now + CLOCK_SKEW:
        return f"issued_at {cert['issued_at']} is in the future"
    days = validity_days(cert["profile"]["targets"], cert["mode"])
    if until - t["ended_at"] > timedelta(days=days):
        return (
            f"valid_until is {(until - t['ended_at']).days} days after ended_at; a {cert['mode']} "
            f"run of profile {cert['profile']['name']!r} is valid for at most {days} days"
        )
    if now >= until:
        return f"expired: valid until {cert['valid_until']}"
    return None


def _binding_problem(
    cert: dict[str, Any], node: str | None, gpu_uuids: Sequence[str]
) -> str | None:
    """The certificate must be for machine ``node`` (hostname or machine id; for a pod, one of
    its nodes) and have certified every GPU in ``gpu_uuids``."""
    if cert["kind"] == "pod":
        members = cert["nodes"]
    else:
        members = [{**cert["node"], "gpus": certified_gpus(cert)}]
    if node is not None:
        names = [m.get("hostname") for m in members]
        members = [m for m in members if node in (m.get("hostname"), m.get("machine_id"))]
        if not members:
            return f"the certificate is not for node {_shown(node)} (it is for {_names(names)})"
    have = {g.get("uuid") for m in members for g in m.get("gpus") or []} - {None}
    missing = [u for u in gpu_uuids if u not in have]
    if missing:
        return f"GPU(s) {_names(missing)} are not among the certified GPUs ({_names(sorted(have))})"
    return None


def _describe(cert: dict[str, Any], kid: str) -> str:
    """The line ``verify`` prints for an accepted certificate."""
    gpus = certified_gpus(cert)
    if cert["device_class"] == "gpu":
        names = Counter(g.get("name") or "GPU" for g in gpus)
        what = ", ".join(f"{n}x {name}" for name, n in names.items())
        total = len(cert["node"].get("gpus", []))
        if cert["kind"] == "node" and total > len(gpus):
            what += f" of the node's {total}"
    else:
        what = cert["node"].get("cpu_model") or "CPU"
    if cert["kind"] == "pod":
        what += f" on {len(cert['nodes'])} nodes"
    line = (
        f"valid: {cert['kind']} certificate, {cert['device_class']}, {what} "
        f"({cert['profile']['name']}, {cert['mode']}), verdict pass, "
        f"valid until {cert['valid_until']}, signed by key {kid}"
    )
    pci = cert["node"].get("pci_nvidia_gpus") or []
    if cert["device_class"] == "cpu" and pci:
        line += (
            f"; note: the PCI bus shows {len(pci)} NVIDIA GPU(s) ({', '.join(pci[:8])}) that "
            "this CPU certificate says nothing about"
        )
    return line


def _content_problem(
    cert: dict[str, Any],
    now: datetime,
    allow_cpu: bool,
    node: str | None,
    gpu_uuids: Sequence[str],
) -> str | None:
    """What is wrong with a signed, schema-valid certificate's content, or None."""
    wanted_class = cert["profile"]["targets"].get("device_class", "gpu")
    if cert["device_class"] != wanted_class:
        return f"device_class {cert['device_class']!r} but the profile is for {wanted_class!r}"
    if cert["device_class"] == "cpu" and not allow_cpu:
        return (
            "CPU certificate: it says nothing about any GPU (verify accepts GPU certificates "
            "only unless --allow-cpu is given)"
        )
    return (
        _time_problem(cert, now)
        or _verdict_problem(cert)
        or _binding_problem(cert, node, gpu_uuids)
    )


def verify(
    doc: Any,
    public_key_path: Path,
    *,
    now: datetime | None = None,
    allow_cpu: bool = False,
    node: str | None = None,
    gpu_uuids: Sequence[str] = (),
) -> tuple[bool, str]:
    """(ok, reason): OK only for a document with nothing but ``certificate``/``signature``; an
    Ed25519 signature by the pinned key ``public_key_path`` (the key the signature names must
    be that key) over the canonical certificate; a schema-valid certificate whose times are in
    order and not in the future, valid no longer than its profile allows for its mode and not
    expired at ``now`` (default: the current time); a verdict "pass" that its checks give, with
    every required check passed; a GPU certificate unless ``allow_cpu``; and, when given, for
    machine ``node`` (hostname or machine id) and covering every GPU in ``gpu_uuids``.
    The reason of an accepted certificate is the line ``verify`` prints."""
    try:
        return True, _accepted(doc, Path(public_key_path), now, allow_cpu, node, gpu_uuids)
    except Rejected as exc:
        return False, str(exc)


def _accepted(
    doc: Any,
    public_key_path: Path,
    now: datetime | None,
    allow_cpu: bool,
    node: str | None,
    gpu_uuids: Sequence[str],
) -> str:
    cert, sig = _envelope(doc)
    try:
        _crypto()
    except RuntimeError as exc:
        raise Rejected(f"cannot verify: {exc}") from None
    try:
        pinned = load_public(public_key_path)
    except ValueError as exc:
        raise Rejected(f"cannot read the public key: {exc}") from None
    try:
        claimed = signature_key(sig)
    except ValueError as exc:
        raise Rejected(str(exc)) from None
    if _raw_public(claimed) != _raw_public(pinned):
        raise Rejected(
            f"signed by key {sig['key_id']}, not by the pinned key {key_id(pinned)} "
            f"({public_key_path})"
        )
    if not signature_matches(cert, sig, pinned):
        raise Rejected(
            "signature does not match the certificate and the public key "
            "(edited, or signed by another key)"
        )
    errors = _schema_errors(cert)
    if errors:
        raise Rejected("certificate does not follow the schema: " + "; ".join(errors))
    now = now or datetime.now(timezone.utc)
    try:
        problem = _content_problem(cert, now, allow_cpu, node, gpu_uuids)
        line = problem or _describe(cert, sig["key_id"])
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as exc:
        raise Rejected(f"malformed certificate: {type(exc).__name__}: {exc}") from None
    if problem:
        raise Rejected(problem)
    return line


def verify_file(path: Path, public_key_path: Path, **policy: Any) -> tuple[bool, str]:
    """:func:`verify` of the file ``path`` read by :func:`read_document`. Never raises: any
    unexpected error rejects too (a verifier fails closed)."""
    try:
        return verify(read_document(path), public_key_path, **policy)
    except Rejected as exc:
        return False, str(exc)
    except Exception as exc:
        return False, f"cannot verify {path}: {type(exc).__name__}: {exc}"
