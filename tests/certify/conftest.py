"""Shared fixtures for the certification tests: a simulated H100 node and a key pair."""

from __future__ import annotations

from pathlib import Path

import pytest

from millkernels.certify.sim import SimNode


@pytest.fixture
def sim_node() -> SimNode:
    return SimNode.healthy("h100-sxm", gpus=8)


@pytest.fixture(scope="session")
def keypair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    pytest.importorskip("cryptography")
    from millkernels.certify.certificate import keygen

    d = tmp_path_factory.mktemp("keys")
    keygen(d / "signer.pem", d / "signer.pub")
    return d / "signer.pem", d / "signer.pub"
