"""The distillation teacher of a recipe's ``teacher:`` file: a recu checkpoint or torchvision's ResNet weights."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import torch
from torch import Tensor, nn

from .._errors import error_line

__all__ = ["load_teacher"]


def load_teacher(path: Union[str, os.PathLike]) -> nn.Module:
    """The model in ``path``, read with ``weights_only=True``.

    Two kinds of file are teachers:
      - a recu checkpoint (``model`` and ``model_spec``, as ``recu train`` writes), rebuilt from its spec;
      - a bare torchvision-format ResNet-18/34 state dict (``conv1.weight``, ``layer1.0.conv1.weight``,
        ``fc.weight``, ...), the file ``torchvision.models.resnet34``'s ImageNet weights come as; it loads
        into :func:`recu.models.resnet34_torchvision` (or ``resnet18_torchvision``), no torchvision needed.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is neither (one line saying what it holds).
    """
    from ..models import from_torchvision_state_dict
    from .checkpoint import model_from_checkpoint

    source = f"teacher {os.fspath(path)}"
    if not Path(path).is_file():
        raise FileNotFoundError(f"{source} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - the weights-only unpickler raises many types on foreign bytes
        raise ValueError(f"{source} is not a readable PyTorch file: {error_line(e)}") from None
    if isinstance(state, dict) and "model" in state and "model_spec" in state:
        return model_from_checkpoint(state, source)
    if isinstance(state, dict) and "fc.weight" in state and all(isinstance(v, Tensor) for v in state.values()):
        try:
            return from_torchvision_state_dict(state)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None
    found = sorted(map(str, state))[:5] if isinstance(state, dict) else type(state).__name__
    raise ValueError(f"{source} is neither a recu checkpoint (model + model_spec) nor a torchvision ResNet "
                     f"state dict (conv1.weight ... fc.weight); it holds {found}")
