"""Several processes under torchrun: joining the process group, and the DDP wrapper."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn


def world_size() -> int:
    """The number of processes torchrun started (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def join(device: torch.device) -> tuple[int, int, torch.device, bool]:
    """(rank, world size, device of this process, whether this call joined the process group):
    under torchrun (WORLD_SIZE > 1) each process takes the GPU of its LOCAL_RANK."""
    size = world_size()
    if size <= 1:
        return 0, 1, device, False
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    joined = not dist.is_initialized()
    if joined:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device, joined


def leave(joined: bool) -> None:
    """Leaves the process group if ``join`` joined it."""
    if joined:
        dist.destroy_process_group()


def wrap(model: nn.Module, size: int, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel when there are several processes, else itself."""
    if size == 1:
        return model
    ids = [device] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)
