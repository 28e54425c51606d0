"""``create(name, pretrained=True)``'s input: the shipped checkpoint of a registry model (``recu.pretrained``).

Only reads and checks the file; :mod:`.registry` builds the model from the checkpoint's spec, so this
module needs no model family and the registry can import it.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch

from .. import pretrained


def pretrained_checkpoint(name: str, num_classes: Optional[int] = None, config: Any = None,
                          kwargs: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """The shipped checkpoint of ``name`` (``model`` state dict, ``model_spec`` it was trained as).

    The architecture comes from the shipped checkpoint, so arguments that would change it are
    refused: ``num_classes`` other than the trained one, any ``config``, any model option.
    """
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
    return state
