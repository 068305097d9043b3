"""Test-suite wiring: skip marked tests on facts, run Triton on the CPU without a GPU, and
keep every temporary file of the run in one scratch folder that is removed at the end.

Triton decides whether a kernel is interpreted when the kernel is decorated, so the
interpreter switch must be set here, before any test imports millkernels' kernel modules.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zlib

import pytest
import torch

_HAS_GPU = torch.cuda.is_available()
if not _HAS_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from millkernels import runtime  # noqa: E402  (after the interpreter switch)

_SCRATCH: str | None = None


def pytest_configure(config: pytest.Config) -> None:
    """One scratch folder per run: ``TMPDIR`` of every process the tests start (a probe or a
    compile worker that is killed cannot clean up after itself) and the node key that
    `millkernels certify` without --key makes on first use (never in the user's home).

    Set here, before test modules are imported: some copy ``os.environ`` at import. This
    process keeps its own temporary folder (``tempfile.tempdir`` pinned first): its files are
    removed by the code that made them, and multiprocessing removes its own folder at exit,
    after this scratch is gone.
    """
    global _SCRATCH
    if _SCRATCH is not None:
        return
    tempfile.tempdir = tempfile.gettempdir()
    _SCRATCH = tempfile.mkdtemp(prefix="millkernels-tests-")
    os.environ["TMPDIR"] = _SCRATCH
    os.environ.setdefault("MILLKERNELS_KEY", os.path.join(_SCRATCH, "node-key.pem"))


def pytest_unconfigure(config: pytest.Config) -> None:
    """Remove the run's scratch folder: a test run leaves the temporary folder as it found it."""
    global _SCRATCH
    if _SCRATCH is not None:
        shutil.rmtree(_SCRATCH, ignore_errors=True)
        _SCRATCH = None


def _skip_reasons() -> dict[str, str | None]:
    """For each fact-based marker, why its tests cannot run here (None: they can)."""
    cap = runtime.capability() if _HAS_GPU else None
    native = runtime.native()
    return {
        "gpu": None if _HAS_GPU else "needs a CUDA GPU; none is visible",
        "sm90": None if cap and cap[0] == 9 else f"needs a Hopper GPU (sm_90); this has {cap}",
        "multi_gpu": (None if torch.cuda.device_count() >= 2 else "needs two or more CUDA GPUs"),
        "native": None if native.built else f"millkernels._C is not built ({native.error})",
    }


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reasons = _skip_reasons()
    for item in items:
        for marker, reason in reasons.items():
            if reason and item.get_closest_marker(marker):
                item.add_marker(pytest.mark.skip(reason=reason))
                break


@pytest.fixture
def triton_device() -> str:
    """Where Triton kernels run in this session: "cuda", or "cpu" under the interpreter."""
    if _HAS_GPU:
        return "cuda"
    assert runtime.triton_interpret(), "no GPU and TRITON_INTERPRET is off: Triton cannot run"
    return "cpu"


@pytest.fixture
def device() -> str:
    """The device plain tensors for a test live on: the GPU when there is one."""
    return "cuda" if _HAS_GPU else "cpu"


# Fresh random inputs on every run, reproducible: the session seed is in the report header,
# and MILLKERNELS_TEST_SEED=<seed> replays a run.
_SESSION_SEED = int(
    os.environ.get("MILLKERNELS_TEST_SEED") or int.from_bytes(os.urandom(4), "little")
)


def pytest_report_header(config: pytest.Config) -> list[str]:
    info = runtime.summary()
    return [
        f"millkernels test seed: MILLKERNELS_TEST_SEED={_SESSION_SEED}",
        f"gpus: {[g['name'] for g in info['gpus']] or 'none'}; native: {info['native']['built']}; "
        f"triton {info['triton']} (interpret={info['triton_interpret']})",
    ]


@pytest.fixture(autouse=True)
def _seed(request: pytest.FixtureRequest) -> None:
    """Seed torch per test from the session seed and the test's id."""
    digest = zlib.crc32(request.node.nodeid.encode())
    torch.manual_seed((_SESSION_SEED * 1_000_003 + digest) % 2**63)
