"""``CustomAllReduce``: the one-shot / two-shot all-reduce over CUDA IPC peer pointers.

Every rank of a group on one node allocates one device buffer once (flags, two staging slots
and two result slots of ``max_bytes`` each), exports a ``cudaIpcMemHandle``, and the handles
are exchanged over a CPU (gloo) group; each rank then maps its peers' buffers. A call copies
the input into this rank's staging slot inside the kernel, meets its peers at a per-block
barrier (full-word flags, ``st.release.sys`` / ``ld.acquire.sys``), and sums the peers'
slots in rank order 0, 1, ... with float32 accumulation, so every rank gets identical bits.
Calls alternate between two sets of flags and slots (the parity of a call counter kept on
the device), so a rank that races ahead into the next call never overwrites what a slower
rank still reads, and no closing barrier is needed. Nothing on the host changes between
calls: the kernels are usable inside CUDA graph capture (pointers and sizes are baked into
the graph; the call counter lives in device memory).

Rules: call ``all_reduce`` on every rank in the same order and on one stream per instance
(the alternation relies on stream order); ``close()`` is collective too. Messages over
``max_bytes`` go to NCCL (``torch.distributed.all_reduce``) under ``algo="auto"``; naming
``one_shot`` / ``two_shot`` for them raises. The kernels spin on their flags; a rank that
never arrives makes them trap (a CUDA error) after ``kSpinTimeoutNs`` (60 s), not hang.
"""

from __future__ import annotations

import socket
from typing import Any

import torch
import torch.distributed as dist

from millkernels._native import require_gpu, require_native, view
from millkernels.ops.analysis_spec import CudaHot
from millkernels.ops.comm import capabilities as caps
from millkernels.ops.comm.groups import group_devices, resolve_group

ANALYSIS = (CudaHot(("one_shot_kernel", "two_shot_kernel")),)  # csrc/comm/custom_allreduce.cu

DEFAULT_MAX_BYTES = 8 * 2**20  # vLLM's default; two-shot beyond ~0.2-0.8 MB (capabilities)
MAX_MAX_BYTES = 2**30
# 36 blocks x 512 threads: 72 KB in flight per rank per pass, enough to saturate NVLink reads
# in vLLM's measurements; fixed per instance so every call uses the same per-block flags.
DEFAULT_BLOCKS = 36
_DTYPES = {torch.float16, torch.bfloat16, torch.float32}

_REGISTRY: dict[int, CustomAllReduce] = {}


def registered(group: Any) -> CustomAllReduce | None:
    """The live CustomAllReduce of ``group`` (what ``all_reduce(algo=...)`` uses), or None."""
    return _REGISTRY.get(id(group))


def check_max_bytes(max_bytes: Any) -> int:
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int):
        raise TypeError(f"max_bytes: expected an int, got {type(max_bytes).__name__}")
    if not 16 <= max_bytes <= MAX_MAX_BYTES:
        raise ValueError(f"max_bytes: expected 16..{MAX_MAX_BYTES}, got {max_bytes}")
    return max_bytes


def check_custom_call(x: Any, algo: str, max_bytes: int, device: int | None) -> str:
    """Validate one ``CustomAllReduce.all_reduce`` call; returns "custom" or "nccl".

    Checks, in order: algo, type, dtype, contiguity, size against ``max_bytes`` (so a CPU
    machine can test them), then the device.
    """
    if algo not in ("auto", "nccl", "one_shot", "two_shot"):
        raise ValueError(f"algo: expected 'auto', 'nccl', 'one_shot' or 'two_shot', got {algo!r}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _DTYPES:
        raise TypeError(f"x: expected float16, bfloat16 or float32, got {x.dtype}")
    if not x.is_contiguous():
        raise ValueError(f"x: expected a contiguous tensor (strides {tuple(x.stride())})")
    nbytes = x.numel() * x.element_size()
    path = "custom"
    if algo == "nccl":
        path = "nccl"
    elif nbytes > max_bytes:
        if algo != "auto":
            raise ValueError(
                f"x: {nbytes} B is over this CustomAllReduce's max_bytes={max_bytes}; use "
                "algo='auto' (NCCL beyond max_bytes) or a larger max_bytes"
            )
        path = "nccl"
    if x.device.type != "cuda" or (device is not None and x.device.index != device):
        raise ValueError(f"x: expected a tensor on cuda:{device}, got {x.device}")
    return path


class CustomAllReduce:
    """IPC all-reduce for the ranks of ``group`` on one node (2..8 ranks, one GPU each, or
    several ranks sharing a GPU).

    Parameters
    ----------
    group
        The process group (None: the default group). Its backend serves the NCCL path.
    max_bytes
        Largest message for the IPC kernels (16 B .. 1 GiB); each rank allocates about
        4 x max_bytes of device memory.
    cpu_group
        A gloo group with the same ranks, to exchange the IPC handles. Default: ``group`` if
        it takes CPU tensors, else a new gloo group (``torch.distributed.new_group`` is
        collective over the default group: every process must construct the instance).

    Raises RuntimeError without the native extension or a GPU, ValueError for ranks on
    different hosts, more than 8 ranks, or bad sizes.
    """

    def __init__(
        self,
        group: Any = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        *,
        cpu_group: Any = None,
        blocks: int = DEFAULT_BLOCKS,
    ) -> None:
        self._closed = True
        g = resolve_group(group)
        self.max_bytes = check_max_bytes(max_bytes)
        self.world = dist.get_world_size(g)
        self.rank = dist.get_rank(g)
        if not 1 <= self.world <= caps.MAX_RANKS:
            raise ValueError(
                f"group: the IPC kernels take 1..{caps.MAX_RANKS} ranks, got {self.world}"
            )
        native = require_native()
        require_gpu()
        if not 1 <= blocks <= int(native.comm_ipc_layout(16)["max_blocks"]):
            raise ValueError(f"blocks: expected 1..{native.comm_ipc_layout(16)['max_blocks']}")
        self.group = g
        self.blocks = blocks
        self.device = torch.cuda.current_device()
        if cpu_group is None:
            devices = group_devices(g)
            cpu_group = g if devices and "cpu" in devices else None
        if cpu_group is None:
            cpu_group = dist.new_group(dist.get_process_group_ranks(g), backend="gloo")
        self.cpu_group = cpu_group
        facts = (socket.gethostname(), self.blocks, self.max_bytes)
        everyone: list[Any] = [None] * self.world
        dist.all_gather_object(everyone, facts, group=cpu_group)
        if len({f[0] for f in everyone}) != 1:
            raise ValueError(
                f"group: CUDA IPC needs every rank on one host; got {[f[0] for f in everyone]}"
            )
        if len({f[1:] for f in everyone}) != 1:
            raise ValueError(f"max_bytes/blocks: every rank must pass the same; got {everyone}")
        layout = native.comm_ipc_layout(self.max_bytes)
        self._native = native
        self._slot = int(layout["slot_bytes"])
        self._own, handle = native.comm_ipc_alloc(int(layout["total_bytes"]), self.device)
        handles: list[Any] = [None] * self.world
        dist.all_gather_object(handles, bytes(handle), group=cpu_group)
        self._bases = []
        try:
            for r, h in enumerate(handles):
                if r == self.rank:
                    self._bases.append(self._own)
                else:
                    self._bases.append(native.comm_ipc_open(h, self.device))
        except Exception:
            for r, ptr in enumerate(self._bases):
                if r != self.rank:
                    native.comm_ipc_close(ptr, self.device)
            native.comm_ipc_free(self._own, self.device)
            raise
        dist.barrier(group=cpu_group)  # every peer mapped before anyone launches
        self._closed = False
        _REGISTRY[id(g)] = self

    def all_reduce(
        self, x: torch.Tensor, *, out: torch.Tensor | None = None, algo: str = "auto"
    ) -> torch.Tensor:
        """Sum ``x`` (CUDA, fp16/bf16/fp32, contiguous) over the ranks; ``out`` (default: new;
        may be ``x``). ``algo``: "auto" (one-shot / two-shot by size, NCCL beyond
        max_bytes), "one_shot", "two_shot" or "nccl". Launches on the current stream."""
        if self._closed:
            raise RuntimeError("CustomAllReduce: already closed")
        path = check_custom_call(x, algo, self.max_bytes, self.device)
        if out is None:
            out = torch.empty_like(x)
        elif (
            not isinstance(out, torch.Tensor)
            or out.shape != x.shape
            or out.dtype != x.dtype
            or out.device != x.device
            or not out.is_contiguous()
        ):
            raise ValueError("out: expected a contiguous tensor of x's shape, dtype and device")
        if x.numel() == 0:
            return out
        if path == "nccl" or self.world == 1:
            if out.data_ptr() != x.data_ptr():
                out.copy_(x)
            if self.world > 1:
                dist.all_reduce(out, group=self.group)
            return out
        if algo == "auto":
            limit = caps.one_shot_limit(self.world)
            nbytes = x.numel() * x.element_size()
            algo = "one_shot" if limit is None or nbytes <= limit else "two_shot"
        self._native.comm_custom_allreduce(
            view(out, "out"),
            view(x, "x"),
            self._bases,
            self.rank,
            self.max_bytes,
            self._slot,
            self.blocks,
            algo == "two_shot",
        )
        return out

    def close(self) -> None:
        """Unmap the peers' buffers and free this rank's (collective; idempotent)."""
        if self._closed:
            return
        self._closed = True
        _REGISTRY.pop(id(self.group), None)
        torch.cuda.synchronize(self.device)
        dist.barrier(group=self.cpu_group)  # nobody still reads a buffer about to go
        for r, ptr in enumerate(self._bases):
            if r != self.rank:
                self._native.comm_ipc_close(ptr, self.device)
        self._native.comm_ipc_free(self._own, self.device)
        self._bases = []

    def __enter__(self) -> CustomAllReduce:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed
