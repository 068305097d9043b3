"""The memory probes as PyTorch custom ops (via ``family_op``), each dispatching the backend
name :mod:`millkernels.ops.probes.api` resolved to its launcher (``cuda``, ``triton_membw``,
``reference``).

Ops (``torch.ops.millkernels.*``), the buffers already validated:

- ``probes_mem_copy(dst, src, backend)``: writes ``dst``;
- ``probes_mem_read(src, backend) -> total`` (0-d int64);
- ``probes_mem_write(dst, value, backend)``: writes ``dst``;
- ``probes_pattern_write(buf, pattern, seed, backend)``: writes ``buf``.

The public functions also take CuPy / DLPack arrays. Those are not tensors, so they cannot be
custom-op arguments: :func:`op_for` hands them to the implementation directly, which passes
them to the ``cuda`` launcher as given (the kernels then launch on CuPy's current stream) and
gives the Triton and reference launchers a torch view of the same memory. ``pattern_check``
returns a host-side report and waits for its result, so it is a plain function, not an op.
"""

from __future__ import annotations

from typing import Any

import torch

from millkernels.ops.custom_op import FamilyOp, family_op
from millkernels.ops.probes import reference
from millkernels.ops.probes.patterns import BadWord, pattern_id


def words(x: Any) -> torch.Tensor:
    """The flat int32 word view of a contiguous whole-word buffer (shares memory)."""
    t = x if isinstance(x, torch.Tensor) else torch.from_dlpack(x)
    return t.reshape(-1).view(torch.uint8).view(torch.int32)


def op_for(fop: FamilyOp, *arrays: Any) -> Any:
    """``fop`` for torch tensors; its implementation for CuPy / DLPack arrays (not tensors)."""
    return fop if all(isinstance(a, torch.Tensor) for a in arrays) else fop.impl


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


@family_op("millkernels::probes_mem_copy", mutates_args=("dst",))
def mem_copy(dst: torch.Tensor, src: torch.Tensor, backend: str) -> None:
    """Copy ``src``'s words into ``dst``."""
    if backend == "cuda":
        from millkernels.ops.probes import cuda

        cuda.copy(dst, src)
    elif backend == "triton":
        from millkernels.ops.probes import triton_membw

        triton_membw.copy(words(dst), words(src))
    else:
        reference.copy(words(dst), words(src))


@mem_copy.register_fake
def _(dst, src, backend):
    return None


@family_op("millkernels::probes_mem_read")
def mem_read(src: torch.Tensor, backend: str) -> torch.Tensor:
    """The 0-d int64 sum of ``src``'s words taken as unsigned, mod 2**64."""
    s = words(src)
    if backend == "cuda":
        from millkernels.ops.probes import cuda

        out = _empty_like_framework(src, s.device)
        cuda.read(src, out)
        return out[0]
    if backend == "triton":
        from millkernels.ops.probes import triton_membw

        return _same_framework(src, triton_membw.read(s))
    return _same_framework(src, reference.read(s))


@mem_read.register_fake
def _(src, backend):
    return src.new_empty((), dtype=torch.int64)


@family_op("millkernels::probes_mem_write", mutates_args=("dst",))
def mem_write(dst: torch.Tensor, value: int, backend: str) -> None:
    """Set every word of ``dst`` to ``value`` (0 <= value < 2**32)."""
    if backend == "cuda":
        from millkernels.ops.probes import cuda

        cuda.write(dst, value)
    elif backend == "triton":
        from millkernels.ops.probes import triton_membw

        triton_membw.write(words(dst), value)
    else:
        reference.write(words(dst), value)


@mem_write.register_fake
def _(dst, value, backend):
    return None


@family_op("millkernels::probes_pattern_write", mutates_args=("buf",))
def pattern_write(buf: torch.Tensor, pattern: str, seed: int, backend: str) -> None:
    """Fill ``buf``'s words with ``pattern`` (backend "cuda" or "reference")."""
    if backend == "cuda":
        from millkernels.ops.probes import cuda

        cuda.pattern_write(buf, pattern_id(pattern), seed)
    else:
        reference.pattern_write(words(buf), pattern, seed)


@pattern_write.register_fake
def _(buf, pattern, seed, backend):
    return None


def pattern_check(
    buf: Any, pattern: str, seed: int, max_report: int, backend: str
) -> tuple[int, int | None, list[BadWord]]:
    """(mismatch count, first bad index, up to ``max_report`` bad words sorted by index)."""
    if backend == "cuda":
        from millkernels.ops.probes import cuda

        _, mismatches, first, triples = cuda.pattern_check(
            buf, pattern_id(pattern), seed, max_report
        )
        return mismatches, first, [BadWord(*t) for t in triples]
    return reference.pattern_check(words(buf), pattern, seed, max_report)
