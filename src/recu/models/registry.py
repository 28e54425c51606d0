"""Model registry: build any architecture by name and rebuild a model from its ``recu_spec``.

The families register their builders with :func:`register` (:mod:`._registration`, which imports no
family); this module imports every family, so all names are registered before the first lookup. A
checkpoint or a 1-bit export stores a model's ``recu_spec`` and ``create(**spec)`` rebuilds the model
(a ``config`` found inside ``kwargs`` is accepted too).
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping, Optional

from torch import nn

# imported for their side effect: each family registers its models
from . import cifar_resnet, imagenet_resnet, reactnet, tiny, torchvision_resnet, vgg  # noqa: F401
from ._registration import REGISTRY, Builder, ConfigLike, register
from ._weights import pretrained_checkpoint

__all__ = ["register", "create", "available", "is_binary", "from_spec", "takes_in_channels"]


def available() -> list[str]:
    """Sorted names accepted by :func:`create`."""
    return sorted(REGISTRY)


def is_binary(name: str) -> bool:
    """Whether the registered model ``name`` has binary layers."""
    _lookup(name)
    return REGISTRY[name][1]


def _lookup(name: str) -> Builder:
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name][0]


def create(name: str, num_classes: Optional[int] = None, config: ConfigLike = None, *, pretrained: bool = False,
           **kwargs: Any) -> nn.Module:
    """Build the registered model ``name``.

    Args:
        name: one of :func:`available` (``resnet20_1w1a``, ``resnet20_fp``, ...).
        num_classes: size of the classifier output; ``None`` (the default) takes the model's own:
            1000 for the ImageNet models (``*_imagenet``, ``reactnet_*``), 10 for the CIFAR ones.
        config: :class:`~recu.nn.BinaryConfig` of the binary layers (ReCU when ``None``),
            or the dict ``dataclasses.asdict`` made of one. Ignored by full-precision models.
        **kwargs: model-specific options (e.g. ``stage=1`` for ``reactnet_resnet18``).
            A ``kwargs=`` dict, as stored in ``recu_spec``, is unpacked, so
            ``create(**model.recu_spec)`` rebuilds a model.
        pretrained: load the trained weights shipped with the package (``recu.pretrained``;
            ``recu models`` marks the names that have them). The model is built as it was
            trained, so ``config`` and model options cannot be combined with it.

    A ``package.module:factory`` name builds a user's model instead (:mod:`recu.models.user`: the
    factory is imported and called with ``num_classes`` and ``kwargs``, then binarised as ``binarize=``
    says).

    Raises:
        ValueError: the name is unknown (the message lists the available names), or
            ``pretrained=True`` for a model without shipped weights (the message lists those with).
    """
    if ":" in name:  # package.module:factory
        if pretrained:
            raise ValueError(f"pretrained weights ship only for registry models, not {name!r}")
        from .user import create_user_model

        return create_user_model(name, num_classes, config, **kwargs)
    if pretrained:
        _lookup(name)
        return _build_pretrained(name, num_classes, config, kwargs)
    nested = kwargs.pop("kwargs", None)
    if nested is not None:
        if not isinstance(nested, Mapping):
            raise TypeError(f"kwargs must be a dict of model options, got {type(nested).__name__}")
        nested = dict(nested)
        if "config" in nested:
            if config is not None:
                raise ValueError("config given both directly and inside kwargs")
            config = nested.pop("config")
        kwargs = {**nested, **kwargs}
    return _lookup(name)(num_classes=num_classes, config=config, **kwargs)


def from_spec(spec: Mapping[str, Any]) -> nn.Module:
    """Rebuild a model (fresh weights) from its ``recu_spec``."""
    missing = {"name", "num_classes"} - set(spec)
    if missing:
        raise ValueError(f"model spec lacks {sorted(missing)}; got keys {sorted(spec)}")
    extra = {"binarize": spec["binarize"]} if "binarize" in spec else {}  # a user model's (recu.models.user)
    return create(spec["name"], spec["num_classes"], spec.get("config"), kwargs=dict(spec.get("kwargs") or {}), **extra)


def _build_pretrained(name: str, num_classes: Optional[int], config: ConfigLike,
                      kwargs: Mapping[str, Any]) -> nn.Module:
    # the shipped checkpoint's own spec gives the architecture; its weights then load exactly
    state = pretrained_checkpoint(name, num_classes, config, kwargs)
    model = from_spec(state["model_spec"])
    model.load_state_dict(state["model"], strict=True)
    return model


def takes_in_channels(name: str) -> bool:
    """Whether the model ``name`` (registry name or ``package.module:factory``) has an ``in_channels`` option."""
    if ":" in name:
        from .user import takes_in_channels as user_takes_in_channels

        return user_takes_in_channels(name)
    return "in_channels" in inspect.signature(_lookup(name)).parameters
