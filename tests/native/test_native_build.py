"""The extension loads, reports what it was built for, and fails clearly when it is missing."""

from __future__ import annotations

import sys

import pytest
import torch

from millkernels import _native, runtime


@pytest.mark.native
def test_build_info_matches_runtime() -> None:
    c = _native.require_native()
    info = c.build_info()
    archs = info["cuda_archs"].split(",")
    assert archs and all(a and a[0].isdigit() for a in archs), info
    assert "native" not in archs and "all" not in archs
    assert info["cuda_version"][0].isdigit()
    assert runtime.native().built
    assert runtime.native().cuda_archs == archs


@pytest.mark.native
def test_cuda_device_count_never_raises() -> None:
    n = _native.require_native().cuda_device_count()
    assert isinstance(n, int) and n >= 0


def test_require_native_without_extension(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "millkernels._C", None)  # makes the import fail
    with pytest.raises(RuntimeError, match=r"millkernels\._C is not built"):
        _native.require_native()
    with pytest.raises(RuntimeError, match=r"millkernels\._C is not built"):
        _native.view(torch.zeros(4))
    assert "not built" in (_native.cuda_unavailable_reason() or "")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible to torch")
def test_require_gpu_without_extension_uses_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "millkernels._C", None)
    with pytest.raises(RuntimeError, match="no CUDA GPU is visible: "):
        _native.require_gpu()
