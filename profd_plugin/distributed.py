"""The few ``torch.distributed`` helpers the plugin needs (no-ops without an initialised process group)."""
from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["is_distributed", "get_rank", "get_world_size", "is_main_process", "all_gather_cat"]


def is_distributed() -> bool:
    """Whether a process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Rank 0, or the only process."""
    return get_rank() == 0


def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0 (identity without DDP). Same shape on every rank."""
    if get_world_size() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, 0)
