"""Model registry: build any architecture by name and remember how it was built.

Every builder registered here is wrapped so that the model it returns carries
``model.recu_spec = {"name", "num_classes", "kwargs", "config"}`` (docs/interfaces.md):
``config`` is ``dataclasses.asdict`` of the binary config, at the top level next to
``kwargs`` and present only for models with binary layers. A checkpoint or a 1-bit
export stores that dict and ``create(**spec)`` rebuilds the model (a ``config`` found
inside ``kwargs`` is accepted too).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, Callable, Mapping, Optional, TypeVar, Union

from torch import nn

from ..nn import BinaryConfig

__all__ = ["register", "create", "available", "is_binary", "from_spec", "takes_in_channels"]

Builder = Callable[..., nn.Module]
F = TypeVar("F", bound=Builder)

# name -> (wrapped builder, whether it has binary layers that take a BinaryConfig)
_REGISTRY: dict[str, tuple[Builder, bool]] = {}

ConfigLike = Union[BinaryConfig, Mapping[str, Any], None]


def _as_config(config: ConfigLike) -> Optional[BinaryConfig]:
    # A spec read back from a checkpoint holds the config as a plain dict.
    if config is None or isinstance(config, BinaryConfig):
        return config
    if isinstance(config, Mapping):
        return BinaryConfig(**dict(config))
    raise TypeError(f"config must be a BinaryConfig or a dict of its fields, got {type(config).__name__}")


def register(name: Optional[str] = None, *, binary: bool = True) -> Callable[[F], F]:
    """Decorator adding a builder ``fn(num_classes=..., config=..., **kwargs) -> nn.Module``.

    Args:
        name: registry name; the function's name when omitted.
        binary: the model has binary layers and uses ``config``. A full-precision model
            accepts ``config`` (so callers can pass one uniformly) but ignores it, and its
            spec has no ``config`` entry.

    The returned function builds the model and attaches ``recu_spec``, whether it is
    called directly or through :func:`create`; called directly, ``num_classes`` defaults
    to the builder's own default (1000 for the ImageNet models).
    """

    def decorate(fn: F) -> F:
        key = name or fn.__name__
        if key in _REGISTRY:
            raise ValueError(f"model name {key!r} is already registered")

        param = inspect.signature(fn).parameters.get("num_classes")
        if param is None:
            raise TypeError(f"model builder {key!r} must take a num_classes argument")
        default_classes = param.default if param.default is not inspect.Parameter.empty else 10

        @functools.wraps(fn)
        def build(num_classes: Optional[int] = None, config: ConfigLike = None, **kwargs: Any) -> nn.Module:
            if num_classes is None:
                num_classes = default_classes
            if not isinstance(num_classes, int) or num_classes < 1:
                raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
            cfg = _as_config(config)
            spec: dict[str, Any] = {"name": key, "num_classes": num_classes, "kwargs": dict(kwargs)}
            if binary:
                cfg = cfg or BinaryConfig()
                model = fn(num_classes=num_classes, config=cfg, **kwargs)
                spec["config"] = dataclasses.asdict(cfg)
            else:
                model = fn(num_classes=num_classes, **kwargs)
            model.recu_spec = spec
            return model

        _REGISTRY[key] = (build, binary)
        return build  # type: ignore[return-value]

    return decorate


def _ensure_loaded() -> None:
    # The families register themselves when imported; importing the package does that.
    from .. import models  # noqa: F401


def available() -> list[str]:
    """Sorted names accepted by :func:`create`."""
    _ensure_loaded()
    return sorted(_REGISTRY)


def is_binary(name: str) -> bool:
    """Whether the registered model ``name`` has binary layers."""
    _lookup(name)
    return _REGISTRY[name][1]


def _lookup(name: str) -> Builder:
    _ensure_loaded()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name][0]


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
        from ._weights import build_pretrained

        _lookup(name)
        return build_pretrained(name, num_classes, config, kwargs)
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


def takes_in_channels(name: str) -> bool:
    """Whether the model ``name`` (registry name or ``package.module:factory``) has an ``in_channels`` option."""
    if ":" in name:
        from .user import takes_in_channels as user_takes_in_channels

        return user_takes_in_channels(name)
    return "in_channels" in inspect.signature(_lookup(name)).parameters
