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
from millkernels.certify.preflight import (
    CUDA_CENSUS_TIMEOUT_S,
    CouldNotRun,
    DeviceLayer,
    NvmlLayer,
    cuda_reachable,
    guarded,
    inventory,
    pci_bus_ids,
)
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
    preflight_timeout_s: float = 120.0  # NVML inventory, XID watch: a hung call is exit 3


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
    """``--targets`` file, else ``--profile NAME``, else detected: from NVML's first reachable
    GPU; else from the PCI bus (GPUs that NVML cannot reach still make this a GPU node, and the
    run says why they cannot be reached); else from CUDA's first GPU (``inv["cuda"]``) when the
    bus cannot be read; else ``cpu``, only when the PCI bus shows no NVIDIA GPU.

    Raises UsageError when no built-in profile matches the GPU, or when the machine cannot be
    told apart from a GPU node (PCI bus unreadable, NVML and CUDA see nothing)."""
    if cfg.targets is not None:
        return T.load_file(cfg.targets)
    if cfg.profile != "auto":
        return T.load(cfg.profile)
    g = next((g for g in inv.get("gpus", []) if not g.get("lost")), None)
    if inv.get("available") and g is not None:
        return _detected(g.get("name"), g.get("pci_device_id"), f"GPU {g.get('name')!r}")
    pci = (inv.get("pci") or {}).get("gpus")
    if pci:
        why = inv.get("error") or "NVML lists no GPU"
        where = f"the NVIDIA GPU at {pci[0].get('bus_id')}, which NVML cannot identify ({why})"
        return _detected(None, pci[0].get("device_id"), where)
    cuda = (inv.get("cuda") or {}).get("devices") or []
    if cuda:
        return _detected(cuda[0].get("name"), None, f"GPU {cuda[0].get('name')!r}")
    if pci is None:
        how = (inv.get("pci") or {}).get("how", "not scanned")
        raise UsageError(
            "profile: auto cannot tell whether this machine has an NVIDIA GPU: the PCI bus is "
            f"not readable ({how}) and NVML and CUDA see none; pass --profile cpu on a "
            "machine without GPUs, or --profile NAME"
        )
    return T.load("cpu")


def _detected(name: str | None, pci_device_id: Any, what: str) -> T.Profile:
    found = T.detect(name, pci_device_id)
    if found is None:
        raise UsageError(
            f"profile: no built-in profile matches {what} (PCI id {pci_device_id}); "
            "pass --profile NAME or --targets FILE"
        )
    return T.load(found)


def gpu_set(inv: dict[str, Any]) -> tuple[list[int], list[int], dict[int, str | None]]:
    """For a GPU profile: the GPUs certified (NVML indices an operator's
    ``CUDA_VISIBLE_DEVICES`` selects), the ones probes run on (not fallen off the bus and open
    to CUDA) and their UUIDs. Without NVML: CUDA's GPUs by ordinal, no UUIDs."""
    if inv.get("available"):
        chosen = visible_gpus(inv["gpus"], os.environ.get("CUDA_VISIBLE_DEVICES"))
        reach = cuda_reachable(inv, chosen)
        gpus = [g["index"] for g in chosen]
        probe = [g["index"] for g in chosen if not g.get("lost") and g["index"] in reach]
        return gpus, probe, {g["index"]: g.get("uuid") for g in chosen}
    cuda = inv.get("cuda") or {}
    n = 0 if cuda.get("error") else len(cuda.get("devices") or [])
    return list(range(n)), list(range(n)), {}


def _census(layer: DeviceLayer) -> dict[str, Any]:
    """CUDA's view, with a deadline beyond the census' own child-process timeout."""
    return guarded(layer.cuda_devices, CUDA_CENSUS_TIMEOUT_S + 30, "the CUDA device check")


def _xid_start(layer: DeviceLayer, cfg: NodeConfig) -> str | None:
    try:
        return guarded(layer.xid_watch_start, cfg.preflight_timeout_s, "the XID watch")
    except CouldNotRun as exc:
        return f"XID events could not be watched: {exc}"


def _xid_stop(layer: DeviceLayer, cfg: NodeConfig) -> list[dict[str, Any]] | None:
    try:
        return guarded(layer.xid_watch_stop, cfg.preflight_timeout_s, "the XID watch")
    except CouldNotRun:
        return None


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

    # A bad --targets file or --profile name is a usage error before NVML is touched.
    explicit = cfg.targets is not None or cfg.profile != "auto"
    profile = choose_profile(cfg, {}) if explicit else None
    inv = guarded(lambda: inventory(layer), cfg.preflight_timeout_s, "the NVML inventory")
    if profile is None:
        if not (inv["available"] and inv["gpus"]) and pci_bus_ids(inv) is None:
            inv["cuda"] = _census(layer)  # no bus to read: CUDA decides gpu or cpu
        profile = choose_profile(cfg, inv)
    gpu_class = profile.device_class == "gpu"
    run_notes: list[str] = []
    if gpu_class:
        if "cuda" not in inv:
            inv["cuda"] = _census(layer)
        gpus, probe_gpus, uuids = gpu_set(inv)
        if not gpus and not pci_bus_ids(inv):
            raise CouldNotRun(
                f"no GPU for the GPU profile {profile.name}: the PCI bus, NVML and CUDA show none",
                V.MK_NO_GPU,
            )
    else:
        gpus, probe_gpus, uuids = [], [], {}
        pci = pci_bus_ids(inv)
        if pci:
            run_notes.append(
                f"cpu profile on a machine with {len(pci)} NVIDIA GPU(s) on the PCI bus "
                f"({', '.join(pci[:8])}): they are NOT tested, and this certificate says "
                "nothing about them"
            )
            _emit(cfg, "note", message=run_notes[-1])

    mode = "quick" if cfg.quick else "standard"
    # No probe without a reachable GPU: the preflight checks say why none could be reached.
    tasks = plan(profile, probe_gpus, cfg.probes) if probe_gpus or not gpu_class else []
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

    xid_reason = _xid_start(layer, cfg) if gpu_class and inv["available"] else "NVML unavailable"
    device = "cuda" if gpu_class else "cpu"
    all_uuids = [uuids.get(g) or "" for g in probe_gpus]

    def run_task(spec: ProbeSpec, gpu: int | None) -> dict[str, Any]:
        if spec.scope == "node" and len(probe_gpus) < spec.min_gpus:
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
            if gpu is not None:  # a "gpu"-scope probe (see plan)
                env["CUDA_VISIBLE_DEVICES"] = uuids.get(gpu) or _visible_entry(gpu)
            else:
                env["CUDA_VISIBLE_DEVICES"] = ",".join(
                    uuids.get(g) or _visible_entry(g) for g in probe_gpus
                )
        _emit(cfg, "start", probe=spec.name, gpu=gpu)
        rec = runner.run(
            spec,
            gpu=gpu,
            gpus=probe_gpus if spec.scope == "node" else ([gpu] if gpu is not None else []),
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

    watching = gpu_class and inv["available"] and xid_reason is None
    xids = _xid_stop(layer, cfg) if watching else None
    if xids is not None:
        log.append({"type": "xid", "events": xids})
    else:  # a resumed run keeps the XID events of its earlier part
        earlier = [r for r in previous if r.get("type") == "xid"]
        if earlier and xid_reason is None:
            xids = [e for r in earlier for e in r.get("events", [])]
    post = None
    if gpu_class and inv["available"]:  # did every GPU survive the probes?
        try:
            what = "the NVML inventory after the probes"
            post = guarded(lambda: inventory(layer), cfg.preflight_timeout_s, what)
        except CouldNotRun as exc:
            post = {"available": False, "error": str(exc), "gpus": []}
        log.append({"type": "postflight", "at": now_iso(), "inventory": post})
    ended_at = now_iso()
    records = log.read()
    latest = latest_probes(records)
    checks = evaluate(
        profile, inv, latest, tasks, gpus, xids, xid_reason, probe_gpus=probe_gpus, postflight=post
    )
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
    doc, sign_notes = C.sign_document(cert, cfg.key)
    notes = run_notes + sign_notes
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
