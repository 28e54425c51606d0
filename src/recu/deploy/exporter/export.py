"""Export a trained model to a 1-bit deployment file (safetensors tensors + JSON metadata).

See ``docs/file-format.md`` for the format. In short: every packable binary convolution is stored
as the 1-bit signs of its forward-pass weights, sign(W - mean_c W) (exactly the layer's
``sign(clamped_weight())``), plus four float32 vectors per output channel: its scale alpha, its
bias and, where the graph shows the conv feeding a BatchNorm2d and nothing else, that BatchNorm as
a scale and shift: ``y = fma(dot * alpha + bias, bn_scale, bn_shift)``, the eval forward's own
float32 steps. Everything else is stored in float32 under its state_dict key. When the network can
be written in the ops of :mod:`recu.deploy.exporter.graph`, the metadata also holds it as that graph
(``meta["graph"]``), which a runtime can execute without PyTorch.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from ... import functional as RF
from ...nn import BinaryLayer, ReCULinear
from ..runtime.fileio import FORMAT_NAME, FORMAT_VERSION, METADATA_KEY  # re-exported (they lived here)
from ..runtime.pack import packbits_bytes
from .fold import find_conv_bn_pairs
from .graph import extract_graph
from .packable import conv_padding, epilogue_vectors, packable_reason, unwrap

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "METADATA_KEY", "export"]


def _json_safe(obj: Any, what: str = "model spec") -> Any:
    """``obj`` as plain JSON (tuples -> lists); refuses anything JSON cannot hold."""
    try:
        return json.loads(json.dumps(obj))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} is not JSON-serialisable: {e}") from None


def export(
    model: nn.Module,
    path: Union[str, os.PathLike],
    *,
    spec: Optional[dict] = None,
    fold_bn: bool = True,
    class_names: Optional[Sequence[str]] = None,
    preprocessing: Optional[dict] = None,
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
        class_names: the name of each output class, in order (``meta["class_names"]``; the loaded
            model's ``class_names``).
        preprocessing: what the input images went through (``meta["preprocessing"]``, JSON: e.g.
            ``image_size``, ``mean``, ``std``; see docs/file-format.md).

    Raises:
        ValueError: a binary layer uses ``sign_at_zero="zero"`` (a bit has no code for 0).
    """
    from safetensors.torch import save_file

    if class_names is not None and (isinstance(class_names, str) or not all(isinstance(c, str) for c in class_names)):
        raise ValueError(f"class_names must be a list of strings, got {class_names!r}")
    model = unwrap(model)
    spec = spec if spec is not None else getattr(model, "recu_spec", None)
    modules = dict(model.named_modules())
    binary = {n: m for n, m in modules.items() if isinstance(m, BinaryLayer)}
    zero_sign = [n for n, m in binary.items() if getattr(m.config, "sign_at_zero", "plus_one") == "zero"]
    if zero_sign:  # a packed bit is +1 or -1: torch.sign's 0 at exactly 0 has no code
        more = f" (and {len(zero_sign) - 1} more)" if len(zero_sign) > 1 else ""
        raise ValueError(f"cannot export: binary layer {zero_sign[0]!r}{more} uses "
                         "sign_at_zero='zero', which 1 bit cannot hold; rebuild it with sign_at_zero='plus_one' "
                         "(recu convert-authors --sign-at-zero plus_one)")
    packed = {n: m for n, m in binary.items() if packable_reason(m) is None}
    unpacked = {n: packable_reason(m) for n, m in binary.items() if n not in packed}
    rounded = [n for n, m in packed.items() if getattr(m.config, "compute_dtype", "float32") != "float32"]
    if rounded:
        warnings.warn(f"recu.deploy: {len(rounded)} binary layers (e.g. {rounded[0]}) compute in "
                      f"{packed[rounded[0]].config.compute_dtype} in PyTorch, which rounds large dot products; "
                      "the packed layers use the exact integer dot products, so outputs can differ slightly",
                      RuntimeWarning, stacklevel=2)
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
            linear = isinstance(layer, ReCULinear)
            if linear:  # a linear layer is a 1x1 convolution of a 1x1 image
                w_sign = w_sign[:, :, None, None]
            bits = packbits_bytes(w_sign.permute(0, 2, 3, 1).cpu())  # (O, KH, KW, ceil(C/8))
            epi = epilogue_vectors(layer, bn)  # type: ignore[arg-type]
            tensors[f"binary.{name}.bits"] = torch.from_numpy(np.ascontiguousarray(bits))
            for key in ("alpha", "bias", "bn_scale", "bn_shift"):
                tensors[f"binary.{name}.{key}"] = torch.from_numpy(getattr(epi, key))
            layers.append({
                "name": name,
                "kind": "linear" if linear else "conv2d",
                "in_channels": layer.in_features if linear else layer.in_channels,
                "out_channels": layer.out_features if linear else layer.out_channels,
                "kernel_size": [1, 1] if linear else list(layer.kernel_size),
                "stride": [1, 1] if linear else list(layer.stride),
                "padding": [0, 0] if linear else list(conv_padding(layer)),  # type: ignore[arg-type]
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
        graph, graph_tensors, graph_unsupported = extract_graph(model, set(packed), {b: c for c, b in pairs.items()})
        tensors.update(graph_tensors)
    finally:
        model.train(was_training)

    from ... import __version__

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
        "graph": graph,  # the whole network as simple ops, or None (docs/file-format.md, "The graph")
        "graph_unsupported": graph_unsupported,
        "class_names": list(class_names) if class_names is not None else None,
        "preprocessing": _json_safe(preprocessing, "preprocessing") if preprocessing is not None else None,
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(meta)})
    return meta
