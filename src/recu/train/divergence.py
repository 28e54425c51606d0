"""A run whose loss or weights stop being finite: the exception, and the device-side checks behind it.

The checks keep the engine's rule of no host read per step (docs/gpu.md): the default mode records
each step's loss, and whether its gradients were finite, in device buffers and reads the verdict once
per epoch, before the checkpoint. The gradients matter on their own in a binary network: sign()
turns a nan activation into +1, so nan weights early in the network can leave the loss finite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Optional

import torch
from torch import Tensor, nn

from .distributed import DistInfo, all_reduce_min, all_reduce_sum

__all__ = ["TrainingDiverged", "EpochSteps", "all_finite", "max_abs_is_finite", "state_is_finite",
           "grads_are_finite", "first_nonfinite_step"]


class TrainingDiverged(RuntimeError):
    """Training stopped because it was no longer finite; nothing of the diverged epoch was saved.

    Raised for a non-finite training loss, gradient or weight (``on_nonfinite: stop``), or an epoch
    whose every step was skipped (``on_nonfinite: skip``). ``last.pt`` and ``best.pt`` keep the last
    finite epoch and ``resume=True`` continues from it. ``epoch`` and ``step`` count from 1, as the
    message does; ``checkpoint_epoch`` is the epoch ``last.pt`` holds (from 1), None when no epoch finished.
    """

    def __init__(self, message: str, epoch: int, step: Optional[int], checkpoint_epoch: Optional[int]) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.step = step
        self.checkpoint_epoch = checkpoint_epoch


@dataclass
class EpochSteps:
    """What the steps of one epoch leave on the device and the host.

    On the device: ``sums`` (summed loss, correct), ``losses[i]`` step i's loss and ``update_finite[i]``
    whether the rest of it was finite (0 and True for a skipped step): its gradients, or with float16's
    GradScaler, which skips non-finite gradients itself, the buffers its forward pass updated. On the
    host: ``seen``, the samples of the steps taken, ``count`` the steps run and ``skipped`` those
    ``on_nonfinite: skip`` skipped.
    """

    sums: Tensor
    seen: int
    losses: Tensor
    update_finite: Tensor
    count: int
    skipped: int

    @property
    def all_skipped(self) -> bool:
        return self.count > 0 and self.skipped == self.count

    def finite(self) -> Tensor:
        """A device bool: every step of the epoch was finite."""
        return torch.isfinite(self.losses).all() & self.update_finite.all()


def all_finite(tensors: Iterable[Tensor], device: torch.device) -> Tensor:
    """A bool on ``device``: every floating-point tensor of ``tensors`` is finite (no host read)."""
    # .to: Adam keeps its step counts on the CPU
    flags = [torch.isfinite(t).all().to(device) for t in tensors if t.is_floating_point()]
    if not flags:
        return torch.ones((), dtype=torch.bool, device=device)
    return torch.stack(flags).all()


def state_is_finite(model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device) -> Tensor:
    """A bool on ``device``: the weights, buffers (BatchNorm statistics) and optimizer state are finite."""
    opt_state = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, Tensor)]
    return all_finite(list(model.state_dict().values()) + opt_state, device)


def max_abs_is_finite(tensors: list[Tensor], device: torch.device) -> Tensor:
    """A bool on ``device``: every element of the floating-point ``tensors`` is finite (no host read).

    The largest |x| of each tensor, nan when one is nan, is one fused pass over all of them on a GPU
    (``torch._foreach_norm`` with ord inf, as ``clip_grad_norm_`` computes it); unlike the 2-norm it
    cannot overflow on finite values. For every step, where one kernel per tensor would cost.
    """
    tensors = [t for t in tensors if t.is_floating_point()]
    if not tensors:
        return torch.ones((), dtype=torch.bool, device=device)
    return torch.isfinite(torch.stack(torch._foreach_norm(tensors, math.inf))).all()


def grads_are_finite(optimizer: torch.optim.Optimizer, device: torch.device) -> Tensor:
    """A bool on ``device``: every gradient the optimizer would apply is finite (no host read)."""
    grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    return max_abs_is_finite(grads, device)


def first_nonfinite_step(steps: EpochSteps, info: DistInfo) -> tuple[int, float]:
    """(step from 0, its loss) of the epoch's first step with a non-finite loss or update, over every
    process; a finite loss means that only the update (``EpochSteps.update_finite``) was not.

    Called only once such a step is known to exist, so its host reads cost nothing in a healthy
    run. A collective call: every process must make it.
    """
    bad = (~torch.isfinite(steps.losses) | ~steps.update_finite).nonzero()
    local = float(bad[0, 0]) if len(bad) else math.inf
    step = int(all_reduce_min(torch.tensor([local], dtype=torch.float64, device=steps.losses.device), info).item())
    # the mean loss at that step over the processes that failed there: non-finite if any one's was
    mine = steps.losses.new_zeros(2, dtype=torch.float64)
    if local == step:
        mine[0], mine[1] = steps.losses[step], 1.0
    loss_sum, count = all_reduce_sum(mine, info).tolist()
    return step, loss_sum / count
