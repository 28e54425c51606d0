"""A user's own model, named ``package.module:factory``: imported, built, binarised, and rebuildable.

``create_user_model`` calls ``factory(num_classes=..., **kwargs)`` and converts the result with
:func:`recu.binarize` (the ``binarize:`` section of a training config). The model records how it was
made in ``recu_spec`` - the factory path, ``num_classes``, ``kwargs``, the binarize arguments and the
binary config, all plain JSON - so a checkpoint (read with ``weights_only=True``) or a deployment file
rebuilds it by importing the factory's module again: no code is stored in the file.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import sys
from typing import Any, Callable, Mapping, Optional

from torch import nn

from ..convert import binarize as binarize_model
from ..convert import binary_layers
from ..nn import DEFAULT_TAU, BinaryConfig

__all__ = ["is_factory_path", "import_factory", "binarize_arguments", "create_user_model", "takes_in_channels",
           "BINARIZE_DEFAULTS"]

# recu.binarize's arguments, as a config's binarize: section gives them; "enabled: false" trains the
# factory's model as it is (one that already holds ReCU layers, or a full-precision baseline)
BINARIZE_DEFAULTS: dict[str, Any] = {"enabled": True, "keep_first_last": True, "keep_downsample": True,
                                     "skip": [], "tau": DEFAULT_TAU}


def is_factory_path(name: str) -> bool:
    """``package.module:factory`` (a user's model) rather than a registry name."""
    return isinstance(name, str) and ":" in name


def import_factory(path: str) -> Callable[..., nn.Module]:
    """The callable ``path`` names (``package.module:factory``, ``factory`` may be ``Class.method``).

    Raises:
        ValueError: malformed path, module not importable, or no such callable (one line each).
    """
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"model {path!r} must look like package.module:factory")
    top = module_name.split(".")[0]
    # A checkpoint or deployment file names the factory it is rebuilt with: no standard-library callable
    # (os:system, subprocess:run, ...) may be reached that way.
    if top in sys.stdlib_module_names:
        raise ValueError(f"model {path!r}: {top!r} is a standard-library module, not a model's package")
    try:
        obj: Any = _import_module(module_name)
    except ImportError as e:
        raise ValueError(f"model {path!r}: cannot import module {module_name!r} ({e}); is it on the Python "
                         f"path (PYTHONPATH, or the current folder)?") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"model {path!r}: module {module_name!r} has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"model {path!r}: {attr!r} is not callable")
    defined_in = str(getattr(obj, "__module__", None) or "")
    if defined_in.split(".")[0] != top:  # e.g. a builtin re-exported by the package
        raise ValueError(f"model {path!r}: {attr!r} is defined in {defined_in or 'no module'!r}, not in "
                         f"package {top!r}")
    return obj


def _import_module(name: str) -> Any:
    """``importlib.import_module``, then once more with the current folder on the path: the ``recu``
    console script, unlike ``python -m``, does not put it there, and a user's module often lives in it."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        cwd = os.getcwd()
        top = name.split(".")[0]
        if e.name != top or cwd in sys.path or "" in sys.path:
            raise
        sys.path.append(cwd)
        return importlib.import_module(name)


def binarize_arguments(section: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    """The binarize section with its defaults filled in (``preset`` excluded: it selects the config)."""
    section = dict(section or {})
    section.pop("preset", None)
    unknown = sorted(set(section) - set(BINARIZE_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown binarize keys {unknown}; known: {sorted(BINARIZE_DEFAULTS) + ['preset']}")
    args = {**BINARIZE_DEFAULTS, **section}
    skip = args["skip"]
    if isinstance(skip, str):
        skip = [skip]
    if not isinstance(skip, (list, tuple)) or not all(isinstance(s, str) for s in skip):
        raise ValueError(f"binarize skip must be a list of layer names, got {skip!r}")
    for key in ("enabled", "keep_first_last", "keep_downsample"):
        if not isinstance(args[key], bool):
            raise ValueError(f"binarize {key} must be true or false, got {args[key]!r}")
    return {**args, "skip": list(skip), "tau": float(args["tau"])}


def _config(config: Any) -> BinaryConfig:
    if config is None:
        return BinaryConfig()
    return config if isinstance(config, BinaryConfig) else BinaryConfig(**dict(config))


def create_user_model(path: str, num_classes: Optional[int] = None, config: Any = None, *,
                      binarize: Optional[Mapping[str, Any]] = None, **kwargs: Any) -> nn.Module:
    """Build ``path``'s model for ``num_classes`` classes and binarise it (see the module docstring).

    ``kwargs`` go to the factory; a ``kwargs=`` dict, as ``recu_spec`` stores it, is unpacked.
    """
    nested = kwargs.pop("kwargs", None)
    kwargs = {**dict(nested or {}), **kwargs}
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"model {path!r} needs num_classes, a positive int; got {num_classes!r}")
    factory = import_factory(path)
    try:
        model = factory(num_classes=num_classes, **kwargs)
    except TypeError as e:  # the factory's signature does not fit
        raise ValueError(f"model {path!r} could not be built with num_classes={num_classes}"
                         f"{''.join(f', {k}={v!r}' for k, v in kwargs.items())}: {e}") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"model {path!r}: the factory returned a {type(model).__name__}, not an nn.Module")
    args = binarize_arguments(binarize)
    binary_config = _config(config)
    if args["enabled"]:
        model = _binarize(model, binary_config, args)
    spec: dict[str, Any] = {"name": path, "num_classes": num_classes, "kwargs": dict(kwargs), "binarize": args}
    if args["enabled"] and binary_layers(model):
        spec["config"] = dataclasses.asdict(binary_config)
    model.recu_spec = spec
    return model


def _binarize(model: nn.Module, config: BinaryConfig, args: Mapping[str, Any]) -> nn.Module:
    return binarize_model(model, config, keep_first_last=args["keep_first_last"], skip=args["skip"] or None,
                    inplace=True, keep_downsample=args["keep_downsample"], tau=args["tau"])


def takes_in_channels(path: str) -> bool:
    """Whether the factory names an ``in_channels`` parameter (then the data's channel count is passed)."""
    return "in_channels" in inspect.signature(import_factory(path)).parameters
