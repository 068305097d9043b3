"""A pytest-benchmark timer that reads the GPU's clock through CUDA events.

pytest-benchmark times a round as ``end = timer(); ...; duration = end - start`` around the
call. :func:`cuda_event_timer` returns a :class:`CudaStamp`: it records a CUDA event on the
current stream and does *not* wait for it, so the GPU is never left idle between the stamp and
the kernel; subtracting two stamps waits for the later one and gives the seconds between them
on the GPU's timeline. Used with ``benchmark.pedantic(fn, setup=flush_l2, ...)`` this is
``triton.testing.do_bench``'s measurement: L2 zeroed, start event, the call, end event.

Select it with ``--benchmark-timer millkernels.bench.gpu_timer.cuda_event_timer``; the
suite in ``benchmarks/pytest_suite`` does so by itself when a GPU is visible.
"""

from __future__ import annotations

from typing import Any

#: Bytes zeroed before each timed round to evict L2 (H100/H200: 50 MiB; B200: 126 MiB).
L2_FLUSH_BYTES = 256 << 20


class CudaStamp:
    """A CUDA event recorded on the current stream; ``later - earlier`` is seconds (float)."""

    __slots__ = ("event",)

    def __init__(self, event: Any = None) -> None:
        if event is None:
            import torch

            event = torch.cuda.Event(enable_timing=True)
            event.record()
        self.event = event

    def __sub__(self, other: object) -> float:
        if not isinstance(other, CudaStamp):
            return NotImplemented
        self.event.synchronize()
        return float(other.event.elapsed_time(self.event)) / 1e3

    def __repr__(self) -> str:
        return f"CudaStamp({self.event!r})"


def cuda_event_timer() -> CudaStamp:
    """A stamp of the GPU clock now (in stream order); see the module docstring."""
    return CudaStamp()


class L2Flush:
    """Zeroes a buffer larger than L2 on ``device``, so the next call starts with a cold L2."""

    def __init__(self, device: str = "cuda", nbytes: int = L2_FLUSH_BYTES) -> None:
        import torch

        self.buffer = torch.empty(nbytes // 4, dtype=torch.int32, device=device)

    def __call__(self) -> None:
        self.buffer.zero_()
