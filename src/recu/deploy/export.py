"""Export a trained model to a 1-bit deployment file (safetensors tensors + JSON metadata).

See ``docs/file-format.md`` for the format. In short: every packable binary convolution is stored
as the 1-bit signs of its forward-pass weights, sign(W - mean_c W) (exactly the layer's
``sign(clamped_weight())``), plus one float32 multiplier and bias per output channel into which
the layer's scale alpha and, where the graph allows it exactly, the following BatchNorm are
folded: ``y = scale * dot + bias``. Everything else is stored in float32 under its state_dict key.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import Tensor, nn

from .. import functional as RF
from ..nn import BinaryLayer, ReCUConv2d
from .fold import find_conv_bn_pairs
from .pack import packbits_bytes

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "METADATA_KEY", "export", "packable_reason", "conv_padding"]

FORMAT_NAME = "recu-deploy"
FORMAT_VERSION = 1
METADATA_KEY = "recu_deploy"


def conv_padding(layer: nn.Conv2d) -> Optional[tuple[int, int]]:
    """Numeric (ph, pw) of a conv's padding, or None when it cannot be expressed symmetrically."""
    pad = layer.padding
    if isinstance(pad, str):
        if pad == "valid":
            return (0, 0)
        kh, kw = layer.kernel_size
        if tuple(layer.stride) == (1, 1) and kh % 2 == 1 and kw % 2 == 1:  # 'same'
            return (kh // 2, kw // 2)
        return None
    return (int(pad[0]), int(pad[1]))


def packable_reason(layer: nn.Module) -> Optional[str]:
    """None when ``layer`` can run on the packed kernels, else why not (it then stays float)."""
    if not isinstance(layer, ReCUConv2d):
        return f"{type(layer).__name__} is not a ReCUConv2d"
    cfg = layer.config
    if not (cfg.binary_weights and cfg.binary_activations):
        return "weights or activations are not binary"
    if layer.groups != 1:
        return "groups != 1"
    if tuple(layer.dilation) != (1, 1):
        return "dilation != 1"
    if conv_padding(layer) is None:
        return f"padding {layer.padding!r} is not symmetric"
    return None


@dataclass
class _Folded:
    scale: np.ndarray
    bias: np.ndarray


@torch.no_grad()
def _affine(layer: ReCUConv2d, bn: Optional[nn.BatchNorm2d]) -> _Folded:
    """Per-channel (scale, bias) with y = scale * dot + bias, computed in float64."""
    o = layer.out_channels
    w2 = layer.clamped_weight()
    s = layer.output_scale(w2)
    scale = torch.ones(o, dtype=torch.float64) if s is None else s.detach().reshape(o).double().cpu()
    bias = torch.zeros(o, dtype=torch.float64) if layer.bias is None else layer.bias.detach().double().cpu()
    if bn is not None:
        inv = 1.0 / torch.sqrt(bn.running_var.double().cpu() + bn.eps)
        gamma = bn.weight.double().cpu() if bn.weight is not None else torch.ones(o, dtype=torch.float64)
        beta = bn.bias.double().cpu() if bn.bias is not None else torch.zeros(o, dtype=torch.float64)
        g = gamma * inv
        scale = scale * g
        bias = (bias - bn.running_mean.double().cpu()) * g + beta
    return _Folded(scale.float().numpy(), bias.float().numpy())


def _json_safe(obj: Any) -> Any:
    """The model spec as plain JSON (tuples -> lists); refuses anything JSON cannot hold."""
    try:
        return json.loads(json.dumps(obj))
    except (TypeError, ValueError) as e:
        raise ValueError(f"model spec is not JSON-serialisable: {e}") from None


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside ``torch.compile`` / DataParallel / DDP wrappers (their keys carry prefixes)."""
    while True:
        inner = getattr(model, "_orig_mod", None)  # torch.compile's OptimizedModule
        if inner is None and isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            inner = model.module
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def export(
    model: nn.Module,
    path: Union[str, os.PathLike],
    *,
    spec: Optional[dict] = None,
    fold_bn: bool = True,
) -> dict:
    """Write ``model`` as a 1-bit deployment file at ``path``; return the file's metadata.

    Args:
        model: any model; its packable :class:`~recu.nn.ReCUConv2d` layers (binary weights and
            activations, groups 1, dilation 1) are stored 1 bit per weight, the rest in float32.
            The model is not modified (BatchNorm statistics are read, not updated).
        path: output file (conventionally ``*.recu``; it is a valid safetensors file).
        spec: how to rebuild the model (``recu.models.create`` arguments); defaults to
            ``model.recu_spec``. Without one, :func:`recu.deploy.load` needs the model skeleton.
        fold_bn: fold a BatchNorm2d that directly and solely consumes a binary conv into it.
    """
    from safetensors.torch import save_file

    model = _unwrap(model)
    spec = spec if spec is not None else getattr(model, "recu_spec", None)
    modules = dict(model.named_modules())
    binary = {n: m for n, m in modules.items() if isinstance(m, BinaryLayer)}
    packed = {n: m for n, m in binary.items() if packable_reason(m) is None}
    unpacked = {n: packable_reason(m) for n, m in binary.items() if n not in packed}
    was_training = model.training
    model.eval()
    try:
        pairs = find_conv_bn_pairs(model, set(packed)) if fold_bn else {}
        tensors: dict[str, Tensor] = {}
        layers = []
        for name, layer in packed.items():
            bn_name = pairs.get(name)
            bn = modules[bn_name] if bn_name else None
            with torch.no_grad():
                w_sign = RF.sign(layer.clamped_weight())  # the forward pass's sign, +1 at 0
            bits = packbits_bytes(w_sign.permute(0, 2, 3, 1).cpu())  # (O, KH, KW, ceil(C/8))
            aff = _affine(layer, bn)  # type: ignore[arg-type]
            tensors[f"binary.{name}.bits"] = torch.from_numpy(np.ascontiguousarray(bits))
            tensors[f"binary.{name}.scale"] = torch.from_numpy(aff.scale)
            tensors[f"binary.{name}.bias"] = torch.from_numpy(aff.bias)
            layers.append({
                "name": name,
                "in_channels": layer.in_channels,
                "out_channels": layer.out_channels,
                "kernel_size": list(layer.kernel_size),
                "stride": list(layer.stride),
                "padding": list(conv_padding(layer)),  # type: ignore[arg-type]
                "folded_bn": bn_name,
            })
        skip_prefixes = tuple(f"{n}." for n in packed) + tuple(f"{b}." for b in pairs.values())
        float_keys = []
        for key, value in model.state_dict().items():
            if key.startswith(skip_prefixes):
                continue
            t = value.detach().cpu()
            tensors[f"float.{key}"] = (t.float() if t.is_floating_point() else t).contiguous().clone()
            float_keys.append(key)
    finally:
        model.train(was_training)

    from .. import __version__

    meta = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "recu_version": __version__,
        "model_spec": _json_safe(spec) if spec is not None else None,
        "binary_layers": layers,
        "folded_bn": {v: k for k, v in pairs.items()},
        "float_layers": {n: r for n, r in unpacked.items()},
        "float_keys": float_keys,
        "bit_order": "little",
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(meta)})
    return meta
