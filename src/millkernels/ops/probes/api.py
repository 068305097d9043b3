"""Memory probes: bandwidth (copy, read, write) and memory pattern tests.

Certification uses them to measure HBM bandwidth and to find bad memory. They accept torch
tensors and CuPy arrays (any dtype, contiguous, 16-byte aligned, whole 32-bit words) and work
on the buffer's 32-bit words. GPU backends launch on the caller's current stream.
"""

from __future__ import annotations

from typing import Any

import torch

from millkernels import runtime
from millkernels._native import cuda_unavailable_reason
from millkernels.dispatch import BackendSpec, CapabilityTable
from millkernels.ops.probes import reference
from millkernels.ops.probes.patterns import (
    BadWord,
    PatternReport,
    check_seed,
    pattern_id,
)

ALIGNMENT = 16  # bytes: the CUDA kernels use 16-byte vector accesses
_PATTERN_OPS = ("pattern_write", "pattern_check")


def _triton_serves(call: dict[str, Any]) -> str | None:
    if call["op"] in _PATTERN_OPS:
        return "the pattern test has no Triton kernel (use cuda or reference)"
    if call["device"] == "cpu" and not runtime.triton_interpret():
        return "CPU tensors need the Triton interpreter (TRITON_INTERPRET=1)"
    if call["device"] == "cuda" and runtime.triton_interpret():
        return "TRITON_INTERPRET=1 is set, so Triton cannot launch on the GPU"
    return None


TABLE = CapabilityTable(
    family="probes",
    ops=("mem_copy", "mem_read", "mem_write", "pattern_write", "pattern_check"),
    backends=(
        BackendSpec(
            "cuda",
            archs="sm_80, sm_90a (the archs _C was built for)",
            dtypes=("any (32-bit words)",),
            notes="16-byte vector accesses, grid-stride loops",
            available=cuda_unavailable_reason,
            serves=lambda call: None if call["device"] == "cuda" else "needs CUDA tensors",
        ),
        BackendSpec(
            "triton",
            archs="any CUDA GPU; CPU under TRITON_INTERPRET=1",
            dtypes=("any (32-bit words)",),
            notes="copy, read and write only",
            available=runtime.triton_unavailable_reason,
            serves=_triton_serves,
        ),
        BackendSpec("reference", archs="any (PyTorch)", dtypes=("any (32-bit words)",)),
    ),
    auto_rule=(
        "cuda when the extension is built and the buffer is on a GPU (the probes measure the "
        "hardware with hand-written 16-byte vector kernels), then triton, then reference. "
        "Not yet backed by a GPU measurement in benchmarks/results/."
    ),
)


def _as_torch(arg: str, x: Any) -> torch.Tensor:
    """A torch view of ``x`` (a tensor, or a CuPy/DLPack array; shares memory)."""
    if isinstance(x, torch.Tensor):
        return x
    if hasattr(x, "__dlpack__"):
        return torch.from_dlpack(x)
    raise TypeError(
        f"{arg}: expected a torch.Tensor or a CuPy/DLPack array, got {type(x).__name__}"
    )


def _words(arg: str, x: Any) -> torch.Tensor:
    """Validate a probe buffer and return it as a flat int32 word view."""
    t = _as_torch(arg, x)
    if not t.is_contiguous():
        raise ValueError(f"{arg}: expected a contiguous array (strides {tuple(t.stride())})")
    nbytes = t.numel() * t.element_size()
    if nbytes == 0 or nbytes % 4:
        raise ValueError(
            f"{arg}: expected a non-empty whole number of 32-bit words, got {nbytes} B"
        )
    if t.data_ptr() % ALIGNMENT:
        raise ValueError(
            f"{arg}: expected a {ALIGNMENT}-byte aligned data pointer, got address "
            f"0x{t.data_ptr():x} (a slice at an odd offset?)"
        )
    if t.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{arg}: expected a CPU or CUDA array, got device {t.device}")
    return t.reshape(-1).view(torch.uint8).view(torch.int32)


def _select(op: str, t: torch.Tensor, backend: str) -> str:
    return TABLE.select(backend, {"op": op, "device": t.device.type}, op)


def _same_framework(like: Any, result: torch.Tensor) -> Any:
    """Return ``result`` as the same kind of array as ``like`` (CuPy in, CuPy out)."""
    if isinstance(like, torch.Tensor):
        return result
    import cupy  # only reached for CuPy inputs

    return cupy.from_dlpack(result)


def _empty_like_framework(like: Any, device: torch.device) -> Any:
    """A 1-element int64 device array of ``like``'s framework (CuPy in, CuPy out)."""
    if isinstance(like, torch.Tensor):
        return torch.empty(1, dtype=torch.int64, device=device)
    import cupy  # only reached for CuPy inputs

    with cupy.cuda.Device(device.index):
        return cupy.empty(1, dtype=cupy.int64)


def mem_copy(dst: Any, src: Any, *, backend: str = "auto") -> None:
    """Copy ``src`` into ``dst`` (equal byte sizes, same device).

    Raises ValueError/TypeError for bad buffers, BackendUnavailable when ``backend`` cannot
    serve, RuntimeError when a GPU backend is asked for without a GPU.
    """
    d, s = _words("dst", dst), _words("src", src)
    if d.numel() != s.numel():
        raise ValueError(f"dst: expected {4 * s.numel()} bytes like src, got {4 * d.numel()}")
    if d.device != s.device:
        raise ValueError(f"dst: expected the device of src ({s.device}), got {d.device}")
    name = _select("mem_copy", s, backend)
    if name == "cuda":
        from millkernels.ops.probes import cuda

        cuda.copy(dst, src)
    elif name == "triton":
        from millkernels.ops.probes import triton_membw

        triton_membw.copy(d, s)
    else:
        reference.copy(d, s)


def mem_read(src: Any, *, backend: str = "auto") -> Any:
    """Read every word of ``src``: returns the 0-d int64 sum of its words taken as unsigned,
    mod 2**64 (a reduction, so the loads cannot be optimised away), on ``src``'s device."""
    s = _words("src", src)
    name = _select("mem_read", s, backend)
    if name == "cuda":
        from millkernels.ops.probes import cuda

        out = _empty_like_framework(src, s.device)
        cuda.read(src, out)
        return out[0]
    elif name == "triton":
        from millkernels.ops.probes import triton_membw

        result = triton_membw.read(s)
    else:
        result = reference.read(s)
    return _same_framework(src, result)


def _check_word_value(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"value: expected an int, got {type(value).__name__}")
    if not 0 <= value < 2**32:
        raise ValueError(f"value: expected 0 <= value < 2**32, got {value}")
    return value


def mem_write(dst: Any, value: int = 0, *, backend: str = "auto") -> None:
    """Set every 32-bit word of ``dst`` to ``value`` (0 <= value < 2**32)."""
    d = _words("dst", dst)
    _check_word_value(value)
    name = _select("mem_write", d, backend)
    if name == "cuda":
        from millkernels.ops.probes import cuda

        cuda.write(dst, value)
    elif name == "triton":
        from millkernels.ops.probes import triton_membw

        triton_membw.write(d, value)
    else:
        reference.write(d, value)


def pattern_write(buf: Any, pattern: str, *, seed: int = 0, backend: str = "auto") -> None:
    """Fill ``buf``'s words with ``pattern`` (see :mod:`millkernels.ops.probes.patterns`)."""
    b = _words("buf", buf)
    pid, seed = pattern_id(pattern), check_seed(seed)
    if _select("pattern_write", b, backend) == "cuda":
        from millkernels.ops.probes import cuda

        cuda.pattern_write(buf, pid, seed)
    else:
        reference.pattern_write(b, pattern, seed)


def pattern_check(
    buf: Any, pattern: str, *, seed: int = 0, max_report: int = 16, backend: str = "auto"
) -> PatternReport:
    """Compare ``buf`` with ``pattern``: count the wrong words, find the first one, and
    report up to ``max_report`` of them (index, expected, actual), sorted by index."""
    b = _words("buf", buf)
    pid, seed = pattern_id(pattern), check_seed(seed)
    if isinstance(max_report, bool) or not isinstance(max_report, int) or max_report < 0:
        raise ValueError(f"max_report: expected an int >= 0, got {max_report!r}")
    if _select("pattern_check", b, backend) == "cuda":
        from millkernels.ops.probes import cuda

        _, mismatches, first, triples = cuda.pattern_check(buf, pid, seed, max_report)
        bad = [BadWord(*t) for t in triples]
    else:
        mismatches, first, bad = reference.pattern_check(b, pattern, seed, max_report)
    return PatternReport(pattern, seed, b.numel(), mismatches, first, bad)


def pattern_test(
    buf: Any, pattern: str, *, seed: int = 0, max_report: int = 16, backend: str = "auto"
) -> PatternReport:
    """Write ``pattern`` into ``buf``, read it back and report what differs."""
    pattern_write(buf, pattern, seed=seed, backend=backend)
    return pattern_check(buf, pattern, seed=seed, max_report=max_report, backend=backend)
