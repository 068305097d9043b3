"""The ``cuda`` backend of the memory probes: thin wrappers over ``millkernels._C``.

``api.py`` validates and dispatches; these take torch tensors or CuPy arrays as given (any
dtype: the kernels see 32-bit words). The C++ side checks everything its kernels rely on, in
this order: contiguous, sizes (equal bytes for a copy, a whole number of 32-bit words),
16-byte aligned data pointers, CUDA device memory, one device for all arguments (each a
``ValueError`` naming the argument); then that a GPU is visible (``RuntimeError``).

Every kernel launches on the current stream of the first argument's framework
(``torch.cuda.current_stream`` / ``cupy.cuda.get_current_stream``). ``copy``, ``read``,
``write`` and ``pattern_write`` are asynchronous; ``pattern_check`` waits for its result.
"""

from __future__ import annotations

from typing import Any

from millkernels._native import require_native, view
from millkernels.ops.analysis_spec import CudaHot

# The HBM probes must not spill: certification's bandwidth floors assume they run at speed.
_HOT = (
    "copy_kernel",
    "read_kernel",
    "write_kernel",
    "pattern_write_kernel",
    "pattern_check_kernel",
)
ANALYSIS = (CudaHot(_HOT),)

#: (index, expected, actual) of one word that read back wrong.
BadTriple = tuple[int, int, int]


def copy(dst: Any, src: Any) -> None:
    """Copy ``src``'s bytes into ``dst`` (equal sizes in bytes, same GPU)."""
    require_native().mem_copy(view(dst, "dst"), view(src, "src"))


def read(src: Any, out: Any) -> None:
    """``out[0] :=`` the sum of ``src``'s 32-bit words as unsigned, mod 2**64 (wrapping int64).

    ``out`` is a 1-element int64 array on ``src``'s GPU; the launch is on ``src``'s stream.
    """
    require_native().mem_read(view(src, "src"), view(out, "out"))


def write(dst: Any, value: int) -> None:
    """Set every 32-bit word of ``dst`` to ``value`` (0 <= value < 2**32)."""
    require_native().mem_write(view(dst, "dst"), value)


def pattern_write(buf: Any, pattern_id: int, seed: int) -> None:
    """Fill ``buf``'s words with pattern ``pattern_id`` (0 walking ones, 1 address, 2 random)."""
    require_native().pattern_write(view(buf, "buf"), pattern_id, seed)


def pattern_check(
    buf: Any, pattern_id: int, seed: int, max_report: int
) -> tuple[int, int, int | None, list[BadTriple]]:
    """Compare ``buf``'s words with the pattern; blocks until the check is done.

    Returns ``(words, mismatches, first_bad_index, bad)``: ``first_bad_index`` is exact (None
    when nothing differs); ``bad`` holds up to ``max_report`` (0..65536) triples
    ``(index, expected, actual)`` sorted by index. With more bad words than ``max_report``,
    which are sampled is unspecified.
    """
    words, mismatches, first, bad = require_native().pattern_check(
        view(buf, "buf"), pattern_id, seed, max_report
    )
    return words, mismatches, first, [tuple(t) for t in bad]
