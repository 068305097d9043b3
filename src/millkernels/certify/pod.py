"""Pod scale: under ``torchrun`` (one process per GPU on every node), local rank 0 of each node
certifies its node while the other local ranks wait; then every rank joins one process group,
the pod's all-reduce bus bandwidth is measured across all GPUs (NCCL; gloo on CPUs, recorded
without a floor), and rank 0 writes a pod certificate that aggregates the node certificates:
each node's verdict and signature, pod-level spread (each GPU against the pod median), and the
cross-node all-reduce busbw. Standard rank variables only (RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), so any launcher works (deploy/ has Slurm and
Kubernetes templates).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import statistics
import uuid as uuidlib
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from millkernels.certify import certificate as C
from millkernels.certify import verdict as V
from millkernels.certify.probes.runner import now_iso


@dataclass(frozen=True)
class PodEnv:
    rank: int
    world: int
    local_rank: int
    local_world: int


def pod_env(environ: dict[str, str] | None = None) -> PodEnv | None:
    """The torchrun-style rank variables, or None when not in a multi-process launch."""
    e = os.environ if environ is None else environ
    world = int(e.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    return PodEnv(
        rank=int(e.get("RANK", "0")),
        world=world,
        local_rank=int(e.get("LOCAL_RANK", "0")),
        local_world=int(e.get("LOCAL_WORLD_SIZE", "1")),
    )


def _doc_sha(doc: dict[str, Any]) -> str:
    return hashlib.sha256(C.canonical(doc["certificate"])).hexdigest()


def _node_signature(doc: dict[str, Any], host: str, require: bool) -> V.Check:
    """The ``pod.node_signature`` check of one node document: its signature must verify with
    the node key it carries (``signature.public_key``, which must match ``key_id``). Each node
    signs with its own key; the pod certificate lists those keys, and whoever trusts the pod
    certificate's signer trusts that each listed key signed its node's certificate."""

    def check(value: Any, status: str, reason: str, why: str = "") -> V.Check:
        return V.Check("pod.node_signature", None, value, "", status, reason, why, node=host)

    sig = doc.get("signature")
    if not sig and not require:
        return check(None, V.SKIPPED, "MK_UNSIGNED", "no key for this run: nothing is signed")
    if not sig:
        return check(None, V.ERROR, "MK_UNSIGNED", doc.get("unsigned_reason", "unsigned"))
    try:
        ok = C.signature_matches(doc["certificate"], sig, C.signature_key(sig))
        why = "" if ok else "node signature does not verify with the node's key"
    except (ValueError, TypeError, KeyError) as exc:
        ok, why = False, f"node signature block unusable: {exc}"
    if ok:
        return check(sig["key_id"], V.PASS, V.OK)
    return check(sig.get("key_id"), V.FAIL, "MK_BAD_SIGNATURE", why)


def aggregate(
    node_docs: list[dict[str, Any]],
    *,
    profile: Any,
    mode: str,
    allreduce_busbw: float | None,
    allreduce_ranks: int,
    require_signatures: bool = True,
    started_at: str,
) -> tuple[dict[str, Any], list[V.Check], V.Verdict]:
    """The pod certificate (unsigned part) from the nodes' certificate documents.

    Every node's signature is checked against the node key in its document, and the pod
    certificate's ``nodes`` list each node's key (id and public key) and certified GPUs. With
    ``require_signatures`` (the run has a key) an unsigned node is an error; without a key
    nothing is signed and the signature checks are skipped (the pod certificate is unsigned
    too, and says so)."""
    checks: list[V.Check] = []
    nodes = []
    values: dict[str, list[tuple[str, int, float]]] = {}
    spread_metrics = profile.spread.get("metrics", [])
    for doc in node_docs:
        cert = doc["certificate"]
        host = cert["node"].get("hostname", "?")
        sig = doc.get("signature")
        nodes.append(
            {
                "hostname": host,
                "machine_id": cert["node"].get("machine_id"),
                "id": cert.get("id"),
                "verdict": cert["verdict"],
                "certificate_sha256": _doc_sha(doc),
                "key_id": sig.get("key_id") if sig else None,
                "public_key": sig.get("public_key") if sig else None,
                "gpus": C.certified_gpus(cert),
            }
        )
        st, rs = (V.PASS, V.OK) if cert["verdict"] == V.PASS else (V.FAIL, "MK_NODE_FAILED")
        msg = ", ".join(cert["summary"].get("reasons", []))
        checks.append(
            V.Check("pod.node_verdict", None, cert["verdict"], "", st, rs, msg, node=host)
        )
        checks.append(_node_signature(doc, host, require_signatures))
        for c in cert["checks"]:
            if (
                c["name"] in spread_metrics
                and c["gpu"] is not None
                and isinstance(c["value"], (int, float))
            ):
                values.setdefault(c["name"], []).append((host, c["gpu"], float(c["value"])))
    limit = profile.spread.get("limit")
    if limit:
        for metric, vals in values.items():
            if len(vals) < 2:
                continue
            med = statistics.median(v for _, _, v in vals)
            for host, g, v in vals:
                rel = v / med - 1 if med > 0 else 0.0
                lim = {"min": -limit, "basis": f"pod median {med:.4g}"}
                if rel < -limit:
                    checks.append(
                        V.Check(
                            f"pod_spread.{metric}",
                            g,
                            rel,
                            "fraction",
                            V.FAIL,
                            V.MK_SPREAD,
                            f"{v:.4g} is {-rel:.1%} below the pod median {med:.4g}",
                            lim,
                            node=host,
                        )
                    )
                else:
                    checks.append(
                        V.Check(
                            f"pod_spread.{metric}",
                            g,
                            rel,
                            "fraction",
                            V.PASS,
                            V.OK,
                            "",
                            lim,
                            node=host,
                        )
                    )
    if allreduce_busbw is not None:
        lim = profile.floors.get("pod_allreduce_busbw_gbps")
        c = V.limit_check("pod_allreduce_busbw_gbps", None, allreduce_busbw, "GB/s", lim)
        c.message = (c.message + f" ({allreduce_ranks} ranks)").strip()
        checks.append(c)
    else:
        checks.append(
            V.Check(
                "pod_allreduce_busbw_gbps",
                None,
                None,
                "GB/s",
                V.ERROR,
                V.MK_NO_MEASUREMENT,
                "the cross-node all-reduce did not run",
            )
        )
    verdict = V.node_verdict(checks, [])
    device_class = node_docs[0]["certificate"]["device_class"] if node_docs else "gpu"
    host = {"hostname": socket.gethostname(), "pod_nodes": len(node_docs), "gpus": []}
    cert = C.build_certificate(
        kind="pod",
        device_class=device_class,
        host=host,
        inventory={"gpus": [], "available": None},
        profile=profile,
        mode=mode,
        checks=checks,
        verdict=verdict,
        started_at=started_at,
        ended_at=now_iso(),
        run_id=str(uuidlib.uuid4()),
        extra={"nodes": nodes},
    )
    return cert, checks, verdict


def _allreduce(dist: Any, gpu: bool, quick: bool, world: int, group: Any) -> float:
    """Bus bandwidth of an all-reduce over every rank of the pod (NCCL on GPUs)."""
    import time

    import torch

    nbytes = ((256 << 20) if quick else (1 << 30)) if gpu else (16 << 20)
    dev = torch.device("cuda", torch.cuda.current_device()) if gpu else torch.device("cpu")
    x = torch.zeros(nbytes // 4, device=dev)
    for _ in range(3):
        dist.all_reduce(x, group=group)
    iters = 10 if gpu else 3
    if gpu:
        torch.cuda.synchronize()
    dist.barrier()
    t = time.perf_counter()
    for _ in range(iters):
        dist.all_reduce(x, group=group)
    if gpu:
        torch.cuda.synchronize()
    secs = (time.perf_counter() - t) / iters
    out: list[Any] = [0.0] * world
    dist.all_gather_object(out, secs)
    algbw = nbytes / max(out) / 1e9
    return algbw * 2 * (world - 1) / world


def run_pod(cfg: Any, env: PodEnv) -> int:
    """The pod flow described in the module docstring; returns the exit code for this rank.

    Ranks other than each node's local rank 0 touch no GPU until the node certifications are
    done: they wait in a CPU-only (gloo) exchange, then the NCCL group is created."""
    import torch
    import torch.distributed as dist

    from millkernels.certify import report, targets
    from millkernels.certify.node import certify_node

    started = now_iso()
    host = socket.gethostname()
    doc, code = None, 0
    if env.local_rank == 0:
        node_dir = Path(cfg.out) / "nodes" / host
        res = certify_node(replace(cfg, out=node_dir))
        doc = json.loads(res.paths["certificate"].read_text())
        if doc.get("signature") and cfg.key is not None:  # this node's key, to pin
            C.write_public(cfg.key, node_dir / "signer.pub")
        code = res.exit_code
    dist.init_process_group("gloo", timeout=timedelta(hours=1))
    try:
        docs: list[Any] = [None] * env.world
        dist.all_gather_object(docs, doc)  # waits for every node's certification
        gpu = torch.cuda.is_available()
        group = None
        if gpu:
            torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
            group = dist.new_group(backend="nccl", timeout=timedelta(minutes=30))
        try:
            busbw = _allreduce(dist, gpu, cfg.quick, env.world, group)
        except Exception:
            busbw = None
        if env.rank == 0:
            node_docs = [d for d in docs if d is not None]
            prof_name = node_docs[0]["certificate"]["profile"]["name"] if node_docs else "cpu"
            profile = targets.load_file(cfg.targets) if cfg.targets else targets.load(prof_name)
            cert, _, verdict = aggregate(
                node_docs,
                profile=profile,
                mode="quick" if cfg.quick else "standard",
                allreduce_busbw=busbw,
                allreduce_ranks=env.world,
                require_signatures=cfg.key is not None,
                started_at=started,
            )
            pod_doc, notes = C.sign_document(cert, cfg.key)
            pod_dir = Path(cfg.out) / "pod"
            pod_dir.mkdir(parents=True, exist_ok=True)
            C.write_json(pod_dir / "certificate.json", pod_doc)
            if pod_doc.get("signature") and cfg.key is not None:
                C.write_public(cfg.key, pod_dir / "signer.pub")
            report.write_prometheus(pod_dir / "metrics.prom", pod_doc)
            report.write_html(pod_dir / "report.html", pod_doc, {}, notes)
            code = verdict.exit_code
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return code
