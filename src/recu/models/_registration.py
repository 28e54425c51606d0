"""The table of model builders and the :func:`register` decorator that fills it.

Every builder registered here is wrapped so that the model it returns carries
``model.recu_spec = {"name", "num_classes", "kwargs", "config"}`` (docs/interfaces.md):
``config`` is ``dataclasses.asdict`` of the binary config, at the top level next to
``kwargs`` and present only for models with binary layers. A checkpoint or a 1-bit
export stores that dict and ``recu.models.create(**spec)`` rebuilds the model.

This module imports no model family, so every family can import it to register itself;
:mod:`recu.models.registry` imports the families and looks names up in :data:`REGISTRY`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, Callable, Mapping, Optional, TypeVar, Union

from torch import nn

from ..nn import BinaryConfig

__all__ = ["REGISTRY", "Builder", "ConfigLike", "register"]

Builder = Callable[..., nn.Module]
F = TypeVar("F", bound=Builder)

# name -> (wrapped builder, whether it has binary layers that take a BinaryConfig)
REGISTRY: dict[str, tuple[Builder, bool]] = {}

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
    called directly or through :func:`recu.models.create`; called directly, ``num_classes``
    defaults to the builder's own default (1000 for the ImageNet models).
    """

    def decorate(fn: F) -> F:
        key = name or fn.__name__
        if key in REGISTRY:
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

        REGISTRY[key] = (build, binary)
        return build  # type: ignore[return-value]

    return decorate
