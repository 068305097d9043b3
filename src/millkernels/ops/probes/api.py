"""Memory probes: bandwidth (copy, read, write) and memory pattern tests.

Certification uses them to measure HBM bandwidth and to find bad memory. They accept torch
tensors and CuPy arrays (any dtype, contiguous, 16-byte aligned, whole 32-bit words) and work
on the buffer's 32-bit words. GPU backends launch on the caller's current stream.

Each function validates its buffers, resolves the backend once (``capabilities.TABLE``) and
calls the probe's custom op (``custom_ops``) with that backend's name.
"""

from __future__ import annotations

from typing import Any

import torch

from millkernels.ops.probes import custom_ops
from millkernels.ops.probes.capabilities import TABLE, call_facts
from millkernels.ops.probes.patterns import PatternReport, check_seed, pattern_id

ALIGNMENT = 16  # bytes: the CUDA kernels use 16-byte vector accesses


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
    return custom_ops.words(t)


def _select(op: str, words: torch.Tensor, backend: str) -> str:
    """The backend for this probe, resolved once, before the custom op."""
    return TABLE.select(backend, call_facts(op, words), op)


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
    custom_ops.op_for(custom_ops.mem_copy, dst, src)(dst, src, name)


def mem_read(src: Any, *, backend: str = "auto") -> Any:
    """Read every word of ``src``: returns the 0-d int64 sum of its words taken as unsigned,
    mod 2**64 (a reduction, so the loads cannot be optimised away), on ``src``'s device."""
    name = _select("mem_read", _words("src", src), backend)
    return custom_ops.op_for(custom_ops.mem_read, src)(src, name)


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
    custom_ops.op_for(custom_ops.mem_write, dst)(dst, value, name)


def pattern_write(buf: Any, pattern: str, *, seed: int = 0, backend: str = "auto") -> None:
    """Fill ``buf``'s words with ``pattern`` (see :mod:`millkernels.ops.probes.patterns`)."""
    b = _words("buf", buf)
    pattern_id(pattern)  # validates the name
    seed = check_seed(seed)
    name = _select("pattern_write", b, backend)
    custom_ops.op_for(custom_ops.pattern_write, buf)(buf, pattern, seed, name)


def pattern_check(
    buf: Any, pattern: str, *, seed: int = 0, max_report: int = 16, backend: str = "auto"
) -> PatternReport:
    """Compare ``buf`` with ``pattern``: count the wrong words, find the first one, and
    report up to ``max_report`` of them (index, expected, actual), sorted by index."""
    b = _words("buf", buf)
    pattern_id(pattern)  # validates the name
    seed = check_seed(seed)
    if isinstance(max_report, bool) or not isinstance(max_report, int) or max_report < 0:
        raise ValueError(f"max_report: expected an int >= 0, got {max_report!r}")
    name = _select("pattern_check", b, backend)
    mismatches, first, bad = custom_ops.pattern_check(buf, pattern, seed, max_report, name)
    return PatternReport(pattern, seed, b.numel(), mismatches, first, bad)


def pattern_test(
    buf: Any, pattern: str, *, seed: int = 0, max_report: int = 16, backend: str = "auto"
) -> PatternReport:
    """Write ``pattern`` into ``buf``, read it back and report what differs."""
    pattern_write(buf, pattern, seed=seed, backend=backend)
    return pattern_check(buf, pattern, seed=seed, max_report=max_report, backend=backend)
