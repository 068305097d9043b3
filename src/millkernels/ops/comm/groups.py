"""Process groups for the collectives: which group a call uses, which devices its backend
takes, where its small control tensors live. Shared by the public functions (api.py) and the
IPC all-reduce (custom_allreduce.py), below both."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def resolve_group(group: Any) -> Any:
    """The process group to use (``None``: the default group).

    Raises RuntimeError when torch.distributed has no initialised process group, TypeError
    when ``group`` is not a ProcessGroup, ValueError when this process is not a member.
    """
    if not dist.is_available():
        raise RuntimeError("group: torch.distributed is not available in this torch build")
    if not dist.is_initialized():
        raise RuntimeError(
            "group: no process group is initialised; call "
            "torch.distributed.init_process_group(...) first (under torchrun: "
            "init_process_group('nccl' or 'gloo'))"
        )
    if group is None:
        return dist.group.WORLD
    if not isinstance(group, dist.ProcessGroup):
        raise TypeError(f"group: expected a torch.distributed ProcessGroup, got {type(group)!r}")
    if dist.get_rank(group) < 0:
        raise ValueError("group: this process is not a member of the group")
    return group


def group_devices(group: Any) -> set[str] | None:
    """Device types the group's backend takes ({"cpu"}, {"cuda"}, both), None: unknown."""
    name = str(dist.get_backend(group)).lower()
    found: set[str] = set()
    for part in name.split(","):
        dev, sep, be = part.partition(":")
        be = be if sep else dev
        if be == "gloo":
            found.add(dev if sep else "cpu")
        elif be == "nccl":
            found.add(dev if sep else "cuda")
        else:
            return None
    return found or None


def comm_device(group: Any) -> torch.device:
    """Where small control tensors of ``group`` live (debug checks, bench timings)."""
    devices = group_devices(group)
    if devices is not None and "cpu" not in devices:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
