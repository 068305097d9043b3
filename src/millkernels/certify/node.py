"""Certify one node: preflight -> probes (own process each, timeout) -> verdict -> reports ->
certificate. Every step is appended to ``results.jsonl`` as it finishes.

Output order: ``results.jsonl`` as the run goes, then ``report.html``, ``metrics.prom``,
``signer.pub``, and ``certificate.json`` last, each written whole (temp file + rename, see
``certify.outdir``): a ``certificate.json`` exists only when everything before it was written.

:func:`certify_node` is what ``millkernels certify`` runs; tests drive it with a simulated
device layer and probe runner (``certify.sim``).
"""

from __future__ import annotations

import os
import platform
import socket
import time
import uuid as uuidlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from millkernels.certify import outdir
from millkernels.certify import targets as T
from millkernels.certify import verdict as V
from millkernels.certify.evaluate import evaluate
from millkernels.certify.preflight import DeviceLayer, NvmlLayer, inventory
from millkernels.certify.probes.registry import ProbeSpec, probes_for
from millkernels.certify.probes.runner import ProbeRunner, SubprocessRunner, base_record, now_iso
from millkernels.certify.results import (
    ResultsLog,
    ResumeError,
    check_resumable,
    latest_probes,
)
from millkernels.certify.results import mac_key as results_mac_key

Progress = Callable[[str, dict[str, Any]], None]


class UsageError(ValueError):
    """Bad arguments (exit code 2)."""


class CouldNotRun(RuntimeError):
    """The run could not start (exit code 3)."""


@dataclass
class NodeConfig:
    """What a node run needs. ``layer`` / ``runner`` default to NVML and real processes."""

    out: Path
    profile: str = "auto"
    quick: bool = False
    targets: Path | None = None
    key: Path | None = None
    resume: bool = False
    force: bool = False  # replace a certificate already in ``out``
    layer: DeviceLayer | None = None
    runner: ProbeRunner | None = None
    timeout_scale: float = 1.0
    probes: list[str] | None = None  # a subset of probe names (tests, debugging)
    params: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-probe overrides
    progress: Progress | None = None
    write_reports: bool = True


@dataclass
class NodeResult:
    """What a node run produced."""

    certificate: dict[str, Any]
    checks: list[V.Check]
    verdict: V.Verdict
    records: list[dict[str, Any]]
    paths: dict[str, Path]
    signed: bool
    notes: list[str]

    @property
    def exit_code(self) -> int:
        return self.verdict.exit_code


def _emit(cfg: NodeConfig, event: str, **data: Any) -> None:
    if cfg.progress:
        cfg.progress(event, data)


def choose_profile(cfg: NodeConfig, inv: dict[str, Any]) -> T.Profile:
    """``--targets`` file, else ``--profile NAME``, else detected from the first GPU (NVML,
    then torch), else ``cpu`` when no GPU is visible."""
    if cfg.targets is not None:
        return T.load_file(cfg.targets)
    if cfg.profile != "auto":
        return T.load(cfg.profile)
    if inv.get("available") and inv["gpus"]:
        g = inv["gpus"][0]
        name = T.detect(g.get("name"), g.get("pci_device_id"))
        if name is None:
            raise UsageError(
                f"profile: no built-in profile matches GPU {g.get('name')!r} "
                f"(PCI id {g.get('pci_device_id')}); pass --profile NAME or --targets FILE"
            )
        return T.load(name)
    n, torch_name = _torch_gpus()
    if n:
        name = T.detect(torch_name, None)
        if name is None:
            raise UsageError(f"profile: no built-in profile matches GPU {torch_name!r}")
        return T.load(name)
    return T.load("cpu")


def _torch_gpus() -> tuple[int, str | None]:
    try:
        import torch

        n = torch.cuda.device_count()
        return n, (torch.cuda.get_device_name(0) if n else None)
    except Exception:
        return 0, None


def host_identity() -> dict[str, Any]:
    """Hostname, OS, kernel, CPU model, machine id (where readable)."""
    cpu = platform.processor() or None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        machine_id = Path("/etc/machine-id").read_text().strip() or None
    except OSError:
        machine_id = None
    return {
        "hostname": socket.gethostname(),
        "machine_id": machine_id,
        "os": platform.platform(),
        "kernel": platform.release(),
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
    }


def plan(
    profile: T.Profile, gpus: list[int], only: list[str] | None
) -> list[tuple[ProbeSpec, int | None]]:
    """The probe tasks of a run, in order."""
    specs = probes_for(profile.device_class)
    if only is not None:
        unknown = set(only) - {s.name for s in specs}
        if unknown:
            raise UsageError(f"probes: unknown for {profile.device_class}: {sorted(unknown)}")
        specs = [s for s in specs if s.name in only]
    skip = set(profile.data.get("skip_probes", []))
    tasks: list[tuple[ProbeSpec, int | None]] = []
    for s in specs:
        if s.name in skip:
            continue
        if profile.device_class == "cpu" or s.scope == "node":
            tasks.append((s, None))
        else:
            tasks.extend((s, g) for g in gpus)
    return tasks


def certify_node(cfg: NodeConfig) -> NodeResult:
    """Run the whole pipeline for this node and write its files into ``cfg.out``.

    Nothing is created before the arguments, the key, the profile, the GPU set and (with
    ``resume``) every line of the interrupted run's ``results.jsonl`` have been checked.
    Files are written reports first and ``certificate.json`` last (see ``certify.outdir``), so
    a certificate exists only when everything before it was written.

    Raises UsageError (bad arguments, an ``--out`` that holds a certificate without ``force``,
    a line of ``results.jsonl`` that cannot be resumed), CouldNotRun, and
    ``outdir.OutputError`` (a file could not be written)."""
    from millkernels.certify import certificate as C

    out = Path(cfg.out)
    _check_out(cfg, out)
    try:  # a bad key must fail now, not after a 15-minute run
        mac_key = results_mac_key(cfg.key)
    except (OSError, ValueError) as exc:
        raise UsageError(f"--key: cannot use {cfg.key}: {exc}") from exc
    log = ResultsLog(out / "results.jsonl", mac_key)
    lines = []
    if cfg.resume:
        try:
            lines = log.resume()
        except ResumeError as exc:
            raise _cannot_resume(exc) from None
    previous = [ln.record for ln in lines]
    header = previous[0] if previous else None
    layer = cfg.layer if cfg.layer is not None else NvmlLayer()
    runner = cfg.runner if cfg.runner is not None else SubprocessRunner()

    inv = inventory(layer)
    profile = choose_profile(cfg, inv)
    gpu_class = profile.device_class == "gpu"
    if gpu_class:
        if inv["available"]:
            chosen = visible_gpus(inv["gpus"], os.environ.get("CUDA_VISIBLE_DEVICES"))
            gpus = [g["index"] for g in chosen]
            uuids = {g["index"]: g.get("uuid") for g in chosen}
        else:
            n, _ = _torch_gpus()
            if n == 0 and getattr(layer, "fallback_gpus", None):
                n = layer.fallback_gpus  # the simulated layer's GPUs without NVML
            gpus, uuids = list(range(n)), {}
        if not gpus:
            raise CouldNotRun("no GPU is visible (NVML and torch see none) for a GPU profile")
    else:
        gpus, uuids = [], {}

    mode = "quick" if cfg.quick else "standard"
    tasks = plan(profile, gpus, cfg.probes)
    if header is not None:
        try:
            check_resumable(
                log.path,
                lines,
                profile=profile,
                mode=mode,
                gpus=gpus,
                tasks={(s.name, g) for s, g in tasks},
            )
        except ResumeError as exc:
            raise _cannot_resume(exc) from None
    created = outdir.make_out(out)
    try:
        outdir.remove_stale(out)
        if header is not None:
            started_at, run_id = header["started_at"], header["run_id"]
        else:
            started_at, run_id = now_iso(), str(uuidlib.uuid4())
            log.start(
                {
                    "type": "run",
                    "run_id": run_id,
                    "started_at": started_at,
                    "profile": profile.name,
                    "profile_sha256": profile.sha256,
                    "mode": mode,
                    "device_class": profile.device_class,
                    "gpus": gpus,
                }
            )
    except BaseException:
        outdir.remove_if_empty(created, out)
        raise
    log.append({"type": "preflight", "at": now_iso(), "inventory": inv})
    _emit(cfg, "preflight", inventory=inv, profile=profile.name, mode=mode)

    done = latest_probes(previous)
    todo = [(s, g) for s, g in tasks if (s.name, g) not in done]
    _emit(cfg, "plan", total=len(tasks), todo=len(todo), resumed=len(tasks) - len(todo))

    xid_reason = layer.xid_watch_start() if gpu_class and inv["available"] else "NVML unavailable"
    device = "cuda" if gpu_class else "cpu"
    all_uuids = [uuids.get(g) or "" for g in gpus]

    def run_task(spec: ProbeSpec, gpu: int | None) -> dict[str, Any]:
        if spec.scope == "node" and len(gpus) < spec.min_gpus:
            rec = base_record(spec.name, gpu)
            rec.update(
                status="not_applicable",
                message=f"needs {spec.min_gpus} or more GPUs",
                started_at=now_iso(),
                ended_at=now_iso(),
                duration_s=0.0,
            )
            log.append(rec)
            return rec
        timeout = spec.timeout_s[0 if cfg.quick else 1] * cfg.timeout_scale
        env = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
        if gpu_class:
            if spec.scope == "gpu":
                env["CUDA_VISIBLE_DEVICES"] = uuids.get(gpu) or _visible_entry(gpu)
            else:
                env["CUDA_VISIBLE_DEVICES"] = ",".join(
                    uuids.get(g) or _visible_entry(g) for g in gpus
                )
        _emit(cfg, "start", probe=spec.name, gpu=gpu)
        rec = runner.run(
            spec,
            gpu=gpu,
            gpus=gpus if spec.scope == "node" else ([gpu] if gpu is not None else []),
            uuids=[uuids.get(gpu) or ""] if spec.scope == "gpu" and gpu is not None else all_uuids,
            device=device,
            quick=cfg.quick,
            timeout=timeout,
            env=env,
            params=cfg.params.get(spec.name),
        )
        log.append(rec)  # fsynced before the next probe starts
        _emit(cfg, "done", probe=spec.name, gpu=gpu, record=rec)
        return rec

    # Per-GPU probes of one kind run side by side (one worker per GPU) unless the probe says
    # otherwise; node probes run alone.
    i = 0
    while i < len(todo):
        spec = todo[i][0]
        group = [t for t in todo[i:] if t[0] is spec]
        i += len(group)
        width = len(group) if spec.parallel and spec.scope == "gpu" else 1
        if width > 1:
            with ThreadPoolExecutor(max_workers=width) as ex:
                list(ex.map(lambda t: run_task(*t), group))
        else:
            for t in group:
                run_task(*t)

    xids = layer.xid_watch_stop() if gpu_class and inv["available"] and xid_reason is None else None
    if xids is not None:
        log.append({"type": "xid", "events": xids})
    else:  # a resumed run keeps the XID events of its earlier part
        earlier = [r for r in previous if r.get("type") == "xid"]
        if earlier and xid_reason is None:
            xids = [e for r in earlier for e in r.get("events", [])]
    ended_at = now_iso()
    records = log.read()
    latest = latest_probes(records)
    checks = evaluate(profile, inv, latest, tasks, gpus, xids, xid_reason)
    verdict = V.node_verdict(checks, gpus)
    cert = C.build_certificate(
        kind="node",
        device_class=profile.device_class,
        host=host_identity(),
        inventory=inv,
        profile=profile,
        mode=mode,
        checks=checks,
        verdict=verdict,
        started_at=started_at,
        ended_at=ended_at,
        run_id=run_id,
    )
    doc, notes = C.sign_document(cert, cfg.key)
    if mac_key is None:
        notes.append(
            "results.jsonl lines carry no integrity check (no usable signing key): a resume of "
            "this run cannot tell edited measurements; its certificate is unsigned"
        )
    # Reports first, certificate last: a certificate.json exists only when all else was written.
    paths = {"results": log.path}
    if cfg.write_reports:
        from millkernels.certify import report

        paths["report"] = out / "report.html"
        paths["metrics"] = out / "metrics.prom"
        report.write_html(paths["report"], doc, latest, notes)
        report.write_prometheus(paths["metrics"], doc)
    if doc.get("signature") is not None and cfg.key is not None:
        paths["public key"] = out / "signer.pub"  # for `millkernels verify`
        C.write_public(cfg.key, paths["public key"])
    paths["certificate"] = out / "certificate.json"
    C.write_json(paths["certificate"], doc)
    _emit(cfg, "finished", verdict=verdict.verdict)
    return NodeResult(
        cert, checks, verdict, records, paths, doc.get("signature") is not None, notes
    )


def _cannot_resume(exc: ResumeError) -> UsageError:
    return UsageError(f"--resume: {exc}; start a fresh run without --resume")


def _check_out(cfg: NodeConfig, out: Path) -> None:
    """Refuse an ``--out`` that cannot be written safely, or whose certificate would be
    overwritten without ``--force``, before anything runs."""
    if cfg.force and cfg.resume:
        raise UsageError("--force starts a new run and --resume continues one: give one of them")
    try:
        outdir.check_out(out)
    except outdir.UnsafeOutput as exc:
        raise UsageError(f"--out: {exc}") from None
    if (out / "certificate.json").exists() and not (cfg.force or cfg.resume):
        raise UsageError(
            f"--out: {out} already holds a certificate.json; pass --force to replace it, "
            "choose another --out folder, or --resume to continue its run"
        )


def visible_gpus(gpus: list[dict[str, Any]], visible: str | None) -> list[dict[str, Any]]:
    """The NVML GPUs an operator's ``CUDA_VISIBLE_DEVICES`` selects (UUIDs or NVML indices,
    which are PCI order); all of them when it is unset."""
    if visible is None or not visible.strip():
        return gpus
    out = []
    for entry in (e.strip() for e in visible.split(",")):
        for g in gpus:
            uuid = g.get("uuid") or ""
            by_index = entry.isdigit() and g["index"] == int(entry)
            by_uuid = entry.startswith(("GPU-", "MIG-")) and uuid.startswith(entry)
            if (by_index or by_uuid) and g not in out:
                out.append(g)
    return out


def _visible_entry(i: int) -> str:
    """The parent's ``CUDA_VISIBLE_DEVICES`` entry for ordinal ``i`` (or ``i`` itself)."""
    vis = [v for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    return vis[i] if i < len(vis) else str(i)


def elapsed(t0: float) -> float:
    return time.monotonic() - t0
