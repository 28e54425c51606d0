"""``create(name, pretrained=True)``: the registry model with the weights shipped in ``recu.pretrained``."""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
from torch import nn

from .. import pretrained


def build_pretrained(name: str, num_classes: Optional[int] = None, config: Any = None,
                     kwargs: Optional[Mapping[str, Any]] = None) -> nn.Module:
    """Rebuild ``name`` exactly as it was trained (its stored ``recu_spec``) and load the shipped weights.

    The architecture comes from the shipped checkpoint, so arguments that would change it are
    refused: ``num_classes`` other than the trained one, any ``config``, any model option.
    """
    from .registry import from_spec

    entry = pretrained.info(name)
    file = pretrained.path(name, "checkpoint")
    state = torch.load(file, map_location="cpu", weights_only=True)
    spec = state["model_spec"]
    if num_classes is not None and num_classes != spec["num_classes"]:
        raise ValueError(f"the pretrained {name!r} has {spec['num_classes']} classes ({entry.dataset}), "
                         f"not {num_classes}: build it with pretrained=True, then replace its classifier")
    if config is not None or kwargs:
        raise ValueError(f"the pretrained {name!r} is built as it was trained; config= and model options "
                         f"cannot be combined with pretrained=True")
    model = from_spec(spec)
    model.load_state_dict(state["model"], strict=True)
    return model
