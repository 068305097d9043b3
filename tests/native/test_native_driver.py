"""Why the CUDA backend cannot run: "no NVIDIA driver" when there is none, the CUDA runtime's
own "driver version is insufficient" when a driver is there but too old. The facts (the
driver's /proc file, libcuda) and the runtime's answer are stand-ins: no GPU needed."""

from __future__ import annotations

import sys
import types

import pytest

from millkernels import _native

RUNTIME_SAYS = (
    "millkernels._C: no CUDA GPU is visible: CUDA driver version is insufficient for CUDA "
    "runtime version"
)


@pytest.fixture
def runtime_says_insufficient_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in extension whose require_gpu raises what cudaGetDeviceCount's
    cudaErrorInsufficientDriver becomes."""

    def require_gpu() -> None:
        raise RuntimeError(RUNTIME_SAYS)

    fake = types.SimpleNamespace(require_gpu=require_gpu)
    monkeypatch.setitem(sys.modules, "millkernels._C", fake)


def _no_driver(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setattr(_native, "_DRIVER_VERSION_FILE", str(tmp_path / "no-such-file"))
    monkeypatch.setattr(_native, "_LIBCUDA", "libmk-no-such-library.so.1")


def test_no_driver_says_so(runtime_says_insufficient_driver, monkeypatch, tmp_path) -> None:
    _no_driver(monkeypatch, tmp_path)
    assert not _native.nvidia_driver_present()
    why = _native.cuda_unavailable_reason()
    assert why is not None and "no NVIDIA driver / no CUDA GPU" in why
    assert "insufficient" not in why
    assert why.startswith("millkernels._C: no CUDA GPU is visible: ")
    with pytest.raises(RuntimeError, match="no NVIDIA driver / no CUDA GPU"):
        _native.require_gpu()


def test_driver_too_old_keeps_the_version_message(
    runtime_says_insufficient_driver, monkeypatch, tmp_path
) -> None:
    _no_driver(monkeypatch, tmp_path)
    version = tmp_path / "version"
    version.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  470.00\n")
    monkeypatch.setattr(_native, "_DRIVER_VERSION_FILE", str(version))
    assert _native.nvidia_driver_present()
    assert _native.cuda_unavailable_reason() == RUNTIME_SAYS


def test_libcuda_alone_counts_as_a_driver(monkeypatch, tmp_path) -> None:
    """No /proc file (e.g. WSL) but a loadable libcuda: a driver is there."""
    _no_driver(monkeypatch, tmp_path)
    monkeypatch.setattr(_native, "_LIBCUDA", "libc.so.6")  # any library that loads
    assert _native.nvidia_driver_present()
