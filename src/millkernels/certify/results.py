"""``results.jsonl``: one JSON object per line, appended and fsynced as each step finishes, so
a crash (even ``kill -9``) loses no finished measurement and ``--resume`` can continue.

Line types: ``run`` (the header, always line 1: profile, mode, GPUs, start time), ``preflight``
(the NVML inventory), ``probe`` (one probe on one GPU or the node; see ``probes.runner``),
``xid``. Every line carries the run's ``run_id`` and a ``mac``.

Integrity: ``mac`` is HMAC-SHA256 over the previous line's MAC followed by the line's canonical
JSON (without ``mac``), keyed by a secret derived (HKDF-SHA256, fixed label) from the raw bytes
of the Ed25519 key the run signs with. The chain means a line cannot be edited, reordered,
dropped from the middle or copied from another run without the resume noticing; dropping lines
from the end only makes ``--resume`` run those probes again. A run without a usable signing key
writes ``"mac": null``: its certificate is unsigned, which ``verify`` rejects anyway, so resuming
it is allowed and the operator is told its records were not checked.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from millkernels.certify import outdir

MAC_LABEL = b"millkernels certify results.jsonl record MAC v1"
PROBE_STATUSES = ("ok", "error", "crashed", "timeout", "not_applicable")

_NUM = (int, float)
_OPT_STR = (str, type(None))
_OPT_INT = (int, type(None))
# Required keys and their types, per line type.
_SCHEMA: dict[str, dict[str, tuple[type, ...]]] = {
    "run": {
        "run_id": (str,),
        "started_at": (str,),
        "profile": (str,),
        "profile_sha256": (str,),
        "mode": (str,),
        "device_class": (str,),
        "gpus": (list,),
    },
    "preflight": {"at": (str,), "inventory": (dict,)},
    "postflight": {"at": (str,), "inventory": (dict,)},
    "probe": {
        "probe": (str,),
        "gpu": _OPT_INT,
        "status": (str,),
        "reason": _OPT_STR,
        "message": (str,),
        "measurements": (list,),
        "unavailable": (list,),
        "info": (dict,),
        "series": (dict,),
        "started_at": (str,),
        "ended_at": (str,),
        "duration_s": _NUM,
    },
    "xid": {"events": (list,)},
}
_MEASUREMENT = {"metric": (str,), "gpu": _OPT_INT, "value": (*_NUM, type(None))}


class ResumeError(ValueError):
    """A line of ``results.jsonl`` that a resumed run cannot trust (a usage error)."""

    def __init__(self, path: Path, line: int, why: str) -> None:
        super().__init__(f"{path} line {line}: {why}")
        self.line = line


def mac_key(private_key: Path | None) -> bytes | None:
    """The records' MAC secret, derived from the signing key file, or None when there is no
    key or ``cryptography`` is missing (the certificate is then unsigned too).

    Raises OSError/ValueError for a key file that cannot be read or is not Ed25519."""
    if private_key is None:
        return None
    from millkernels.certify import certificate as C

    try:
        key = C.load_private(private_key)
    except RuntimeError:  # cryptography missing
        return None
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    raw = key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=MAC_LABEL).derive(raw)


def _canonical(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), default=str).encode()


def _mac(key: bytes, prev: str, record: dict[str, Any]) -> str:
    return hmac.new(key, prev.encode() + _canonical(record), hashlib.sha256).hexdigest()


@dataclass
class Line:
    """One line of the log as read back: its 1-based number and its record."""

    number: int
    record: dict[str, Any]


class ResultsLog:
    """Append-only, fsynced, MAC-chained JSON-lines file; safe to append from several threads.

    ``start`` writes a fresh file with its header; ``resume`` reads and checks an existing one
    and continues its chain; ``append`` adds a line."""

    def __init__(self, path: Path, key: bytes | None = None) -> None:
        self.path = Path(path)
        self.key = key
        self.run_id: str | None = None
        self._prev = ""
        self._cut_at: int | None = None  # where a resumed log's cut last line starts
        self._lock = threading.Lock()

    def _line(self, record: dict[str, Any]) -> bytes:
        rec = json.loads(json.dumps({**record, "run_id": self.run_id}, default=str))
        mac = _mac(self.key, self._prev, rec) if self.key is not None else None
        self._prev = mac or ""
        return (json.dumps({**rec, "mac": mac}, sort_keys=True) + "\n").encode()

    def start(self, header: dict[str, Any]) -> None:
        """Replace any earlier file with one holding just ``header`` (a ``run`` record)."""
        with self._lock:
            self.run_id, self._prev = header["run_id"], ""
            outdir.write_atomic(self.path, self._line(header))

    def append(self, record: dict[str, Any]) -> None:
        """Add one line, fsynced before this returns."""
        with self._lock:
            if self._cut_at is not None:  # the cut line goes; its probe runs again
                try:
                    os.truncate(self.path, self._cut_at)
                except OSError as exc:
                    raise outdir.error_for(self.path, exc) from None
                self._cut_at = None
            outdir.append_durably(self.path, self._line(record))

    def read(self) -> list[dict[str, Any]]:
        """Every complete line's record (a last line cut short by a crash is dropped)."""
        return [ln.record for ln in self._lines()[0]]

    def _lines(self) -> tuple[list[Line], int]:
        """The parsed lines and the byte length of the part made of complete lines. Raises
        :class:`ResumeError` for a line that is not a JSON object (except a last line cut
        short by a crash, which is left out)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return [], 0
        except OSError as exc:
            raise outdir.error_for(self.path, exc, "cannot read") from None
        lines, good = [], 0
        chunks = data.split(b"\n")
        for i, chunk in enumerate(chunks):
            last = i == len(chunks) - 1
            if last and not chunk:
                break
            try:
                rec = json.loads(chunk)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                if last:  # no newline: a write cut short by a crash
                    break
                raise ResumeError(self.path, i + 1, f"not JSON ({exc})") from None
            if not isinstance(rec, dict):
                raise ResumeError(self.path, i + 1, "not a JSON object")
            if last:
                break  # complete JSON but no newline: also a cut write; run it again
            lines.append(Line(i + 1, rec))
            good += len(chunk) + 1
        return lines, good

    def resume(self) -> list[Line]:
        """Read the log for ``--resume``: every line well formed, of this run, and (with a
        key) with a MAC that verifies in chain order; the next ``append`` continues the chain
        (and first drops a last line cut short by a crash). Raises :class:`ResumeError`
        naming the line."""
        lines, good = self._lines()
        if not lines:
            raise ResumeError(self.path, 1, "no run header: nothing to resume")
        header = lines[0].record
        if header.get("type") != "run":
            raise ResumeError(self.path, 1, "the first line is not the run header")
        run_id = header.get("run_id")
        prev = ""
        for ln in lines:
            check_record(self.path, ln, run_id)
            got = ln.record.get("mac")
            if self.key is None:
                continue
            if not isinstance(got, str):
                raise ResumeError(
                    self.path, ln.number, "no integrity check (written without a signing key)"
                )
            body = {k: v for k, v in ln.record.items() if k != "mac"}
            want = _mac(self.key, prev, body)
            if not hmac.compare_digest(got, want):
                raise ResumeError(
                    self.path,
                    ln.number,
                    "integrity check failed: the line was edited, moved or removed, or the "
                    "log was written with another signing key",
                )
            prev = got
        with self._lock:
            self.run_id, self._prev = run_id, prev
            self._cut_at = good if good < self.path.stat().st_size else None
        return lines


def check_record(path: Path, ln: Line, run_id: Any) -> None:
    """Types and required keys of one line, and that it belongs to run ``run_id``."""
    rec = ln.record

    def bad(why: str) -> ResumeError:
        return ResumeError(path, ln.number, why)

    kind = rec.get("type")
    if kind not in _SCHEMA:
        raise bad(f"unknown line type {kind!r}")
    if kind == "run" and ln.number != 1:
        raise bad("a second run header: lines of two runs are mixed")
    _check_fields(rec, _SCHEMA[kind], bad)
    if rec.get("run_id") != run_id:
        raise bad(f"run id {rec.get('run_id')!r}, not this run's {run_id!r}")
    if kind == "run" and not all(isinstance(g, int) for g in rec["gpus"]):
        raise bad("'gpus' must be a list of GPU indices")
    if kind == "probe":
        if rec["status"] not in PROBE_STATUSES:
            raise bad(f"status {rec['status']!r} is not one of {', '.join(PROBE_STATUSES)}")
        for m in rec["measurements"]:
            if not isinstance(m, dict):
                raise bad("a measurement is not an object")
            _check_fields(m, _MEASUREMENT, lambda why: bad(f"measurement: {why}"))


def _check_fields(rec: dict[str, Any], schema: dict[str, tuple[type, ...]], bad: Any) -> None:
    for key, types in schema.items():
        if key not in rec:
            raise bad(f"missing {key!r}")
        v = rec[key]
        if isinstance(v, bool) or not isinstance(v, types):
            want = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise bad(f"{key!r} is {type(v).__name__}, expected {want}")


def check_resumable(
    path: Path, lines: list[Line], *, profile: Any, mode: str, gpus: list[int], tasks: set[Any]
) -> None:
    """The interrupted run must be this run: same profile (name and content), mode and GPUs,
    and every probe line one of this run's planned (probe, GPU) tasks."""
    h = lines[0].record
    if h["profile"] != profile.name or h["mode"] != mode:
        raise ResumeError(
            path,
            1,
            f"the interrupted run used profile {h['profile']!r} ({h['mode']}); this one "
            f"{profile.name!r} ({mode})",
        )
    if h["profile_sha256"] != profile.sha256:
        raise ResumeError(path, 1, f"the targets of profile {profile.name!r} changed since")
    if h["gpus"] != gpus:
        raise ResumeError(
            path, 1, f"the interrupted run had GPUs {h['gpus']}, now {gpus}: the node changed"
        )
    for ln in lines[1:]:
        r = ln.record
        if r["type"] == "probe" and (r["probe"], r["gpu"]) not in tasks:
            where = "the node" if r["gpu"] is None else f"GPU {r['gpu']}"
            raise ResumeError(path, ln.number, f"probe {r['probe']!r} on {where} is not planned")


def latest_probes(records: list[dict[str, Any]]) -> dict[tuple[str, int | None], dict[str, Any]]:
    """The last record of each (probe, gpu)."""
    out: dict[tuple[str, int | None], dict[str, Any]] = {}
    for r in records:
        if r.get("type") == "probe":
            out[(r["probe"], r.get("gpu"))] = r
    return out
