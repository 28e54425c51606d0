"""Load the checkpoints the ReCU authors' code writes (github.com/z-hXu/ReCU, ``main.py``) as recu models.

Their ``main.py`` saves ``{"epoch", "model", "state_dict", "best_prec1", "optimizer", "lr_scheduler"}``;
``state_dict`` holds their module names, with DataParallel's ``module.`` prefix when it was saved from
the wrapper, and each binary convolution's ``tau`` buffer as a shape-(1,) tensor (their schedule assigns
``torch.tensor([tau])``). :func:`load_authors_checkpoint` renames the keys to recu's, reshapes ``tau``,
and builds the recu model with the authors' binarisation at exactly 0 (``torch.sign``), so its outputs
are the authors' model's.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Mapping, Union

import torch
from torch import Tensor, nn

from .._errors import error_line
from ..functional import SIGN_AT_ZERO, SignAtZero
from ..nn import BinaryConfig
from .registry import create

__all__ = ["AUTHORS_MODELS", "load_authors_checkpoint", "convert_authors_state_dict", "authors_to_recu_key",
           "authors_epoch"]

# recu registry name -> (the authors' name for it, the file of their repository that defines it)
AUTHORS_MODELS: dict[str, tuple[str, str]] = {
    "resnet20_1w1a": ("resnet20_1w1a", "cifar/models_cifar/resnet.py"),
    "resnet18_1w1a": ("resnet18_1w1a", "cifar/models_cifar/resnet2.py"),
    "vgg_small_1w1a": ("vgg_small_1w1a", "cifar/models_cifar/vgg.py"),
    "resnet18_1w1a_imagenet": ("resnet18_1w1a", "imagenet/models_imagenet/resnet.py"),
    "resnet34_1w1a_imagenet": ("resnet34_1w1a", "imagenet/models_imagenet/resnet.py"),
    "reactnet_resnet18": ("resnet18_1w1a", "imagenet_two-stage/models_imagenet/resnet.py"),
}

_Rule = tuple[str, Union[str, Callable[[re.Match], str]]]

# Their stages are attributes layer1..layerN; recu keeps them in one Sequential, ``layers``.
_STAGES: _Rule = (r"^layer(\d+)\.", lambda m: f"layers.{int(m.group(1)) - 1}.")

# Per family, regex renames applied in order to each of the authors' keys (re.sub, first match only).
_RULES: dict[str, list[_Rule]] = {
    "cifar_resnet": [_STAGES, (r"^linear\.", "fc.")],
    # conv1..conv5 and bn1..bn5 are the binary stages; conv0/bn0 (the stem) and fc keep their names.
    "vgg_small": [(r"^conv([1-5])\.", lambda m: f"features.{int(m.group(1)) - 1}.0."),
                  (r"^bn([1-5])\.", lambda m: f"features.{int(m.group(1)) - 1}.2.")],
    "imagenet_resnet": [_STAGES],
    "two_stage": [_STAGES, (r"^conv\.", "conv1."), (r"^bn\.", "bn1."), (r"\.nonlinear\.", ".prelu.")],
}
_FAMILY = {
    "resnet20_1w1a": "cifar_resnet",
    "resnet18_1w1a": "cifar_resnet",
    "vgg_small_1w1a": "vgg_small",
    "resnet18_1w1a_imagenet": "imagenet_resnet",
    "resnet34_1w1a_imagenet": "imagenet_resnet",
    "reactnet_resnet18": "two_stage",
}
# The key of the classifier weight in the authors' layout (gives the number of classes).
_CLASSIFIER = {"cifar_resnet": "linear.weight", "vgg_small": "fc.weight", "imagenet_resnet": "fc.weight",
               "two_stage": "fc.weight"}


def _check_name(name: str) -> str:
    if name not in _FAMILY:
        raise ValueError(f"no authors' model maps to {name!r}; choose one of {sorted(_FAMILY)}")
    return _FAMILY[name]


def authors_to_recu_key(key: str, name: str) -> str:
    """recu's state-dict key for the authors' ``key`` of model ``name`` (DataParallel's ``module.`` dropped)."""
    if key.startswith("module."):
        key = key[len("module."):]
    for pattern, repl in _RULES[_check_name(name)]:
        key = re.sub(pattern, repl, key, count=1)
    return key


def convert_authors_state_dict(state_dict: Mapping[str, Tensor], name: str) -> dict[str, Tensor]:
    """The authors' state dict of model ``name`` with recu's keys and 0-dim ``tau`` buffers."""
    _check_name(name)
    converted: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if not isinstance(value, Tensor):
            raise ValueError(f"state_dict entry {key!r} is a {type(value).__name__}, not a tensor")
        new_key = authors_to_recu_key(key, name)
        if new_key.endswith(".tau"):
            if value.numel() != 1:
                raise ValueError(f"{key} should hold one tau value, got shape {tuple(value.shape)}")
            value = value.reshape(())  # their schedule stores torch.tensor([tau]), shape (1,)
        if new_key in converted:
            raise ValueError(f"keys {key!r} and another both map to {new_key!r} (mixed 'module.' prefixes?)")
        converted[new_key] = value
    return converted


def _read_state_dict(path: Union[str, os.PathLike]) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(the whole checkpoint, its state dict) read with ``weights_only=True``; a bare state dict is accepted."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"authors' checkpoint {os.fspath(path)} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - the weights-only unpickler raises many types on foreign bytes
        raise ValueError(f"{os.fspath(path)} is not a readable PyTorch checkpoint: {error_line(e)}") from None
    if isinstance(ckpt, Mapping) and isinstance(ckpt.get("state_dict"), Mapping):
        return dict(ckpt), dict(ckpt["state_dict"])
    if isinstance(ckpt, Mapping) and ckpt and all(isinstance(v, Tensor) for v in ckpt.values()):
        return {}, dict(ckpt)
    found = sorted(map(str, ckpt))[:6] if isinstance(ckpt, Mapping) else type(ckpt).__name__
    raise ValueError(f"{os.fspath(path)} is not an authors' checkpoint: need a dict with 'state_dict' "
                     f"(as their main.py saves), got {found}")


def _load_strict(model: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line error; BatchNorm counters a file lacks start at 0."""
    own = model.state_dict()
    state = {**{k: torch.zeros((), dtype=torch.long) for k in own if k.endswith(".num_batches_tracked")}, **state}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
                  if k in state and state[k].shape != v.shape]
    if missing or unexpected or mismatched:
        raise ValueError(f"{source} does not fit recu's {model.recu_spec['name']}: "  # type: ignore[index]
                         f"missing {missing[:3]}, unexpected {unexpected[:3]}, shape mismatches {mismatched[:3]}")
    model.load_state_dict(dict(state))


def load_authors_checkpoint(
    path: Union[str, os.PathLike], name: str, *, sign_at_zero: SignAtZero = "zero"
) -> nn.Module:
    """The recu model ``name`` holding the weights of an authors' checkpoint, in eval mode.

    Args:
        path: a file the authors' ``main.py`` saved (a dict with ``state_dict``; keys with or
            without ``module.``), or a bare state dict of theirs. Read with ``weights_only=True``.
        name: the recu model it is, one of :data:`AUTHORS_MODELS` (e.g. ``resnet20_1w1a``;
            ``reactnet_resnet18`` for their two-stage ResNet-18).
        sign_at_zero: ``"zero"`` (default) binarises as the authors' ``torch.sign`` does, so the
            outputs are theirs; ``"plus_one"`` is recu's convention, needed for a 1-bit export
            (it differs only where an activation is exactly 0).

    The number of classes comes from the classifier weight. The model carries ``recu_spec``,
    so it can be saved as a recu checkpoint (``recu convert-authors``).

    Raises:
        ValueError: the file is not such a checkpoint, or its keys do not fit ``name``.
    """
    family = _check_name(name)
    if sign_at_zero not in SIGN_AT_ZERO:
        raise ValueError(f"sign_at_zero must be one of {SIGN_AT_ZERO}, got {sign_at_zero!r}")
    _, authors_state = _read_state_dict(path)
    state = convert_authors_state_dict(authors_state, name)
    classifier = state.get(authors_to_recu_key(_CLASSIFIER[family], name))
    if classifier is None or classifier.dim() != 2:
        raise ValueError(f"{os.fspath(path)} has no {_CLASSIFIER[family]} (2-D) in its state_dict: "
                         f"not an authors' {name} checkpoint")
    model = create(name, num_classes=int(classifier.shape[0]), config=BinaryConfig(sign_at_zero=sign_at_zero))
    _load_strict(model, state, f"authors' checkpoint {os.fspath(path)}")
    return model.eval()


def authors_epoch(path: Union[str, os.PathLike]) -> int:
    """recu's ``epoch`` (index of the last finished epoch) for an authors' checkpoint, -1 if unknown.

    Their ``epoch`` entry counts finished epochs (``epoch + 1`` when saved).
    """
    ckpt, _ = _read_state_dict(path)
    value = ckpt.get("epoch")
    return int(value) - 1 if isinstance(value, int) and not isinstance(value, bool) else -1
