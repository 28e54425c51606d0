"""Multi-GPU and multi-machine training through torchrun and DistributedDataParallel."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "resolve_device", "all_reduce_sum", "all_reduce_min", "barrier",
           "cleanup", "file_seen_by_all"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks this process's GPU when there is one, else the CPU."""
    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    device = torch.device(preference)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {preference!r} requested but CUDA is not available")
    return device


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group that torchrun describes in the environment (WORLD_SIZE, RANK, ...).

    Without torchrun (WORLD_SIZE unset or 1) this is a no-op. The backend is NCCL on GPUs
    and gloo on the CPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return DistInfo(rank, world_size, local_rank)


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_reduce_min(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.MIN)
    return values


def file_seen_by_all(path: Path, info: DistInfo, device: torch.device) -> bool:
    """Whether ``path`` is a file, asked of every process at once (a collective call: all must make it).

    Raises ``RuntimeError`` on every process when only some see it: a run directory on a disk
    that one machine does not share would otherwise resume on some processes and silently
    restart on the others, which then train another model than they believe.
    """
    found = Path(path).is_file()
    if not info.enabled:
        return found
    flag = torch.tensor([1.0 if found else 0.0], dtype=torch.float64, device=device)
    count = int(all_reduce_sum(flag, info).item())
    if 0 < count < info.world_size:
        raise RuntimeError(f"{path} is seen by {count} of {info.world_size} processes (this one, rank "
                           f"{info.rank}, {'sees' if found else 'does not see'} it): put the run directory "
                           f"on a file system every process shares")
    return found


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
