"""Pods where every node signs with its own node key (no shared --key): rank 0 checks each node
certificate against the key that node sent with it, and the pod certificate lists those keys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from millkernels.certify import certificate as C
from millkernels.certify import targets
from millkernels.certify.pod import aggregate
from millkernels.certify.sim import SimNode
from millkernels.certify.sim import certify_sim as run_sim

pytest.importorskip("cryptography")


@pytest.fixture(scope="module")
def node_keys(tmp_path_factory) -> list[Path]:
    """Three node keys and the pod signer's (rank 0's node key is the last one's role)."""
    d = tmp_path_factory.mktemp("node-keys")
    for i in range(4):
        C.keygen(d / f"k{i}.pem", d / f"k{i}.pub")
    return [d / f"k{i}.pem" for i in range(4)]


@pytest.fixture(scope="module")
def node_docs(tmp_path_factory, node_keys) -> list[dict[str, Any]]:
    """Three passing 2-GPU node certificates, each signed by its own node key."""
    docs = []
    for i in range(3):
        out = tmp_path_factory.mktemp(f"node{i}")
        run_sim(SimNode.healthy(gpus=2), out, key=node_keys[i])
        doc = json.loads((out / "certificate.json").read_text())
        doc["certificate"]["node"]["hostname"] = f"node{i}"  # as if from three hosts
        for g in doc["certificate"]["node"]["gpus"]:
            g["uuid"] = f"GPU-node{i}-{g['index']}"
        docs.append(C.sign(doc["certificate"], C.load_private(node_keys[i])))
    return docs


def _aggregate(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], list[Any], Any]:
    return aggregate(
        docs,
        profile=targets.load("h100-sxm"),
        mode="standard",
        allreduce_busbw=300.0,
        allreduce_ranks=6,
        started_at=docs[0]["certificate"]["started_at"],
    )


def test_each_node_is_checked_against_its_own_key(node_docs):
    cert, checks, verdict = _aggregate(node_docs)
    sig_checks = {c.node: c for c in checks if c.name == "pod.node_signature"}
    assert set(sig_checks) == {"node0", "node1", "node2"}
    for doc, entry in zip(node_docs, cert["nodes"], strict=True):
        c = sig_checks[entry["hostname"]]
        assert (c.status, c.value) == ("pass", doc["signature"]["key_id"])
        assert entry["key_id"] == doc["signature"]["key_id"]
        assert entry["public_key"] == doc["signature"]["public_key"]
        assert [g["uuid"] for g in entry["gpus"]] == [
            f"GPU-{entry['hostname']}-0",
            f"GPU-{entry['hostname']}-1",
        ]
    assert len({e["key_id"] for e in cert["nodes"]}) == 3
    assert verdict.verdict == "pass"


def test_an_altered_node_certificate_or_key_claim_fails_the_pod(node_docs):
    docs = json.loads(json.dumps(node_docs))
    docs[1]["certificate"]["checks"][0]["message"] = "edited after signing"
    other = docs[0]["signature"]
    docs[2]["signature"].update(key_id=other["key_id"])  # names node0's key, keeps its own
    _, checks, verdict = _aggregate(docs)
    bad = {c.node: c for c in checks if c.name == "pod.node_signature" and c.status != "pass"}
    assert set(bad) == {"node1", "node2"} and verdict.verdict == "fail"
    assert all(c.reason == "MK_BAD_SIGNATURE" for c in bad.values())
    assert "does not verify" in bad["node1"].message and "key_id" in bad["node2"].message


def test_the_signed_pod_certificate_verifies_and_binds_to_its_nodes(node_docs, node_keys):
    cert, _, _ = _aggregate(node_docs)
    pod = C.sign(cert, C.load_private(node_keys[3]))
    pub = node_keys[3].with_suffix(".pub")
    ok, line = C.verify(pod, pub)
    assert ok, line
    assert line.startswith(
        "valid: pod certificate, gpu, 6x NVIDIA H100 80GB HBM3 on 3 nodes (h100-sxm, standard)"
    )
    assert C.verify(pod, pub, node="node1", gpu_uuids=["GPU-node1-0", "GPU-node1-1"])[0]
    ok, why = C.verify(pod, pub, node="node1", gpu_uuids=["GPU-node2-0"])
    assert not ok and "not among the certified GPUs" in why
    assert not C.verify(pod, pub, node="node9")[0]
    ok, why = C.verify(pod, node_keys[0].with_suffix(".pub"))  # a node key is not the pod's
    assert not ok and "not by the pinned key" in why
