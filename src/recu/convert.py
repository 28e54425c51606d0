"""Swap the convolutions and linear layers of any model for their ReCU counterparts."""

from __future__ import annotations

import copy
from typing import Callable, Iterable, Optional, Union

import torch
from torch import nn

from .nn import DEFAULT_TAU, BinaryConfig, BinaryLayer, ReCUConv1d, ReCUConv2d, ReCULinear

__all__ = ["binarize", "binary_layers", "is_downsample_conv"]

# Names that ResNet code gives the shortcut branch that changes the shape (torchvision, timm:
# "downsample"; most CIFAR ResNets: "shortcut").
DOWNSAMPLE_NAMES = ("downsample", "shortcut")

_TARGETS: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Linear)

Skip = Union[Iterable[str], Callable[[str, nn.Module], bool], None]


def binary_layers(model: nn.Module) -> list[tuple[str, BinaryLayer]]:
    """(name, layer) for every ReCU layer of ``model``, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, BinaryLayer)]


def is_downsample_conv(name: str, module: nn.Module) -> bool:
    """A 1x1 convolution on a shortcut: strided (torchvision's ``downsample.0``), or inside a module
    named ``downsample`` or ``shortcut`` (Bi-Real's and ReActNet's AvgPool + 1x1 conv).

    BNNs keep these full precision (Bi-Real, ReActNet and the ReCU authors' ImageNet ResNets):
    they carry the real-valued shortcut where the shape changes and cost little.
    """
    if not isinstance(module, (nn.Conv1d, nn.Conv2d)) or any(k != 1 for k in module.kernel_size):
        return False
    strided = any(s > 1 for s in module.stride)
    return strided or any(part in DOWNSAMPLE_NAMES for part in name.split("."))


def _to_binary(layer: nn.Module, config: BinaryConfig, tau: float) -> BinaryLayer:
    w = layer.weight
    if not bool(torch.isfinite(w).all()):
        raise ValueError(f"cannot binarise a {type(layer).__name__} whose weight has non-finite values")
    kw = dict(bias=layer.bias is not None, device=w.device, dtype=w.dtype, config=config, tau=tau)
    new: BinaryLayer
    if isinstance(layer, nn.Conv2d):
        if layer.padding_mode != "zeros":
            raise ValueError(f"cannot binarise a Conv2d with padding_mode={layer.padding_mode!r}; only 'zeros'")
        new = ReCUConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                         layer.padding, layer.dilation, layer.groups, **kw)
    elif isinstance(layer, nn.Conv1d):
        if layer.padding_mode != "zeros":
            raise ValueError(f"cannot binarise a Conv1d with padding_mode={layer.padding_mode!r}; only 'zeros'")
        new = ReCUConv1d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                         layer.padding, layer.dilation, layer.groups, **kw)
    else:
        new = ReCULinear(layer.in_features, layer.out_features, **kw)
    with torch.no_grad():
        new.weight.copy_(w)
        if layer.bias is not None:
            new.bias.copy_(layer.bias)
    new.train(layer.training)
    return new


def binarize(
    model: nn.Module,
    config: Optional[BinaryConfig] = None,
    keep_first_last: bool = True,
    skip: Skip = None,
    inplace: bool = False,
    *,
    keep_downsample: bool = True,
    tau: float = DEFAULT_TAU,
) -> nn.Module:
    """Replace every ``Conv1d``/``Conv2d``/``Linear`` of ``model`` by its ReCU layer.

    Weights and biases are copied; each new layer gets a fresh ``alpha`` and ``tau``
    (0.85, the start of the paper's schedule, by default). Layers already binary are left alone.

    Args:
        model: any ``nn.Module`` (a torchvision-style ResNet, a user's own network ...).
        config: the :class:`BinaryConfig` of the new layers (ReCU by default).
        keep_first_last: keep the first and the last convertible layer, in module order,
            in full precision, as BNNs conventionally do.
        skip: more layers to keep in full precision: qualified names (``"layer2.0.conv1"``)
            or a predicate ``skip(name, module) -> bool``.
        inplace: modify ``model`` itself instead of a deep copy.
        keep_downsample: keep the 1x1 shortcut convolutions in full precision (see
            :func:`is_downsample_conv`), as Bi-Real, ReActNet and the ReCU authors' ImageNet
            ResNets do; ``False`` binarises them too.
        tau: the initial tau of the new layers (a schedule's ``apply`` or :func:`recu.set_tau`
            changes it; 1.0 disables the clamp).

    Returns:
        The binarised model.
    """
    if not inplace:
        model = copy.deepcopy(model)
    config = config or BinaryConfig()
    candidates = [(n, m) for n, m in model.named_modules()
                  if isinstance(m, _TARGETS) and not isinstance(m, BinaryLayer)]
    keep: set[str] = set()
    if keep_first_last and candidates:
        keep |= {candidates[0][0], candidates[-1][0]}
    if keep_downsample:
        keep |= {n for n, m in candidates if is_downsample_conv(n, m)}
    if callable(skip):
        keep |= {n for n, m in candidates if skip(n, m)}
    elif skip is not None:
        names = {skip} if isinstance(skip, str) else set(skip)
        unknown = names - {n for n, _ in candidates}
        if unknown:
            raise ValueError(f"skip names layers that are not Conv1d/Conv2d/Linear in the model: {sorted(unknown)}")
        keep |= names
    # Build every new layer first, so that an error (non-finite weights, padding mode)
    # leaves an ``inplace`` model untouched rather than half converted.
    replacements = [(name, _to_binary(module, config, tau)) for name, module in candidates if name not in keep]
    for name, new in replacements:
        if not name:  # the model itself is a Conv/Linear: return its replacement (even with inplace)
            return new
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
    return model
