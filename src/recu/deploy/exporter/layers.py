"""Load a deployment file into a CPU inference model that runs the binary convolutions packed.

The float parts (stem, BatchNorms that could not be folded, hardtanh, pooling, shortcuts, the
classifier) run in PyTorch; every exported binary convolution is replaced by a
:class:`PackedConv2d` that binarises its float input by sign (+1 at 0) straight from the float
tensor and runs the layer's kernel path (:func:`recu.deploy.kernels.layer_kernel`: Intel AMX
int8 tiles or XNOR-popcount, the same integers either way). Its output is an NHWC buffer handed to PyTorch as a
channels_last NCHW tensor, and :class:`PackedModel` feeds the network channels_last input, so no
layout conversion happens between layers.

Loading reads tensors with safetensors and metadata with ``json``: nothing from the file is
executed. The model skeleton comes from ``recu.models.create`` (the file's model spec) or from
the caller.
"""

from __future__ import annotations

import copy
import os
from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor, nn

from ..runtime.fileio import read_metadata  # re-exported: it lived here before recu.deploy.fileio
from ..runtime.kernels.conv import binary_conv2d_float
from ..runtime.kernels.cpu import layer_kernel, numba_available, resolve_kernel
from ..runtime.kernels.reference import epilogue_table
from ..runtime.kernels.weights import PackedConvWeights
from ..runtime.pack import unpackbits_bytes
from ..runtime.validate import DeployFileError, check_file

__all__ = ["PackedConv2d", "PackedLinear", "PackedModel", "load_layers", "load", "read_metadata", "build_model"]


class PackedConv2d(nn.Module):
    """A binary conv2d on packed weights with exact zero padding and the eval forward's float steps.

    ``forward(x)`` = ``fma(conv2d(sign(x), w_sign) * alpha + bias, bn_scale, bn_shift)`` in float32
    (``bn_*`` a folded BatchNorm, or 1 and 0); :meth:`dot` returns the integer dot products.
    """

    EPILOGUE = ("alpha", "bias", "bn_scale", "bn_shift")

    def __init__(self, weights: PackedConvWeights, epilogue: dict[str, np.ndarray],
                 stride: tuple[int, int], padding: tuple[int, int], impl: Optional[str] = None) -> None:
        super().__init__()
        self.weights = weights
        self.epilogue = {k: np.ascontiguousarray(epilogue[k], dtype=np.float32) for k in self.EPILOGUE}
        for k, v in self.epilogue.items():
            if v.shape != (weights.out_channels,):
                raise ValueError(f"{k} must have shape ({weights.out_channels},), got {v.shape}")
        self.stride = tuple(stride)
        self.padding = tuple(padding)
        self.impl = impl
        self._table = epilogue_table(weights.out_channels, *(self.epilogue[k] for k in self.EPILOGUE))

    @property
    def in_channels(self) -> int:
        return self.weights.in_channels

    @property
    def out_channels(self) -> int:
        return self.weights.out_channels

    def _check_input(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"PackedConv2d expects input (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if x.device.type != "cpu":
            raise ValueError(f"PackedConv2d runs on the CPU; got an input on {x.device}")
        return x.detach()

    def dot(self, x: Tensor) -> Tensor:
        """Integer dot products ``conv2d(sign(x), w_sign)`` with zero padding, int32 NCHW (channels_last)."""
        out = binary_conv2d_float(self._check_input(x), self.weights, self.stride, self.padding, impl=self.impl)
        return torch.from_numpy(out).permute(0, 3, 1, 2)

    def forward(self, x: Tensor) -> Tensor:
        out = binary_conv2d_float(self._check_input(x), self.weights, self.stride, self.padding, impl=self.impl,
                                  epilogue=self._table)
        return torch.from_numpy(out).permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        kh, kw = self.weights.kernel_size
        return (f"{self.in_channels}, {self.out_channels}, kernel_size=({kh}, {kw}), stride={self.stride}, "
                f"padding={self.padding}, impl={layer_kernel(self.impl, self.in_channels)!r}")


class PackedLinear(PackedConv2d):
    """A binary linear layer, run as a 1x1 :class:`PackedConv2d` on a 1x1 image: (N, C) -> (N, C_out)."""

    def _as_image(self, x: Tensor) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.in_channels:
            raise ValueError(f"PackedLinear expects input (N, {self.in_channels}), got {tuple(x.shape)}")
        return x.reshape(x.shape[0], x.shape[1], 1, 1)

    def dot(self, x: Tensor) -> Tensor:
        return super().dot(self._as_image(x)).reshape(x.shape[0], self.out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(self._as_image(x)).reshape(x.shape[0], self.out_channels)


class PackedModel(nn.Module):
    """The loaded inference model: ``model(x)`` on a float NCHW CPU tensor returns the logits.

    The kernels use as many threads as PyTorch (``torch.get_num_threads()`` at call time) unless
    ``num_threads`` is set: one thread count for the whole model keeps numba's and PyTorch's
    OpenMP workers from spinning against each other, which on a busy 2-core machine cost ~30 ms
    per layer when numba kept its default of one thread per core next to a 1-thread PyTorch.
    """

    def __init__(self, model: nn.Module, metadata: dict, num_threads: Optional[int] = None) -> None:
        super().__init__()
        self.model = model
        self.metadata = metadata
        self.num_threads = num_threads

    @property
    def class_names(self) -> Optional[list[str]]:
        """The name of each output class (logit column), when the file has them (a folder data set's)."""
        return self.metadata.get("class_names")

    def packed_layers(self) -> list[tuple[str, PackedConv2d]]:
        """(name, layer) of every packed binary layer (convolutions and linear layers), in module order."""
        return [(n, m) for n, m in self.model.named_modules() if isinstance(m, PackedConv2d)]

    def set_kernel(self, impl: Optional[str]) -> None:
        """Select the kernel path of every packed layer (None: ``RECU_DEPLOY_KERNEL`` / auto)."""
        resolve_kernel(impl)
        for _, m in self.packed_layers():
            m.impl = impl

    def forward(self, x: Tensor) -> Tensor:
        if numba_available():  # else every layer runs the numpy path, which has no threads to set
            from ..runtime.kernels.threads import set_num_threads

            set_num_threads(self.num_threads or torch.get_num_threads())
        with torch.inference_mode():
            return self.model(x.float().contiguous(memory_format=torch.channels_last))


def build_model(spec: dict) -> nn.Module:
    """A fresh model from a ``recu_spec`` dict via ``recu.models.create``."""
    if not isinstance(spec, dict) or "name" not in spec:
        raise ValueError(f"a model spec must be a dict with at least 'name', got {spec!r}")
    try:
        from ... import models
    except ImportError as e:
        raise RuntimeError(f"recu.models is needed to rebuild {spec.get('name')!r}: {e}") from None
    # The binary config may sit at the top level (docs/interfaces.md) or inside "kwargs"
    # (what recu.models records); models.create takes either, but not both.
    kwargs = dict(spec.get("kwargs") or {})
    config = spec.get("config")
    if config is not None and "config" in kwargs:
        config = None
    # a user's model (package.module:factory, recu.models.user) also records how it was binarised
    extra = {"binarize": spec["binarize"]} if "binarize" in spec else {}
    return models.create(spec["name"], num_classes=spec.get("num_classes"), config=config, kwargs=kwargs, **extra)


def _skeleton(meta: dict, model: Optional[nn.Module]) -> nn.Module:
    if model is not None:
        return copy.deepcopy(model)
    spec = meta.get("model_spec")
    if not spec:
        raise ValueError("the file has no model spec; pass the model skeleton: load(path, model=...)")
    return build_model(spec)


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    if not hasattr(parent, child):
        raise ValueError(f"the model skeleton has no layer {name!r} that the file names; wrong skeleton?")
    setattr(parent, child, new)


def _fuse_float_conv_bn(net: nn.Module) -> int:
    """Fold eval BatchNorms into the full-precision convs that solely feed them (the stem, downsample convs).

    Standard inference folding: it changes float results by rounding only, and saves a full pass
    over the largest activations (the stem's). Returns how many were folded.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    from .fold import find_conv_bn_pairs

    convs = {n for n, m in net.named_modules() if type(m) is nn.Conv2d}
    pairs = find_conv_bn_pairs(net, convs, leaves=(PackedConv2d,), warn=False)
    for conv_name, bn_name in pairs.items():
        _replace(net, conv_name, fuse_conv_bn_eval(net.get_submodule(conv_name), net.get_submodule(bn_name)))
        _replace(net, bn_name, nn.Identity())
    return len(pairs)


def _check_geometry(old: nn.Module, layer: dict, path: Union[str, os.PathLike]) -> None:
    """A conv's kernel, stride and padding in the file are the skeleton's: the skeleton's forward joins
    its output with other values, whose shapes follow from its own geometry."""
    if not isinstance(old, nn.Conv2d):
        return
    from .packable import conv_padding

    own = [list(old.kernel_size), list(old.stride), list(conv_padding(old) or old.padding)]
    if own != [layer["kernel_size"], layer["stride"], layer["padding"]]:
        raise DeployFileError(f"{path}: binary layer {layer['name']!r} has kernel, stride, padding "
                              f"{[layer['kernel_size'], layer['stride'], layer['padding']]}, the model's {own}")


def _check_against_skeleton(net: nn.Module, state: dict[str, Tensor], path: Union[str, os.PathLike]) -> None:
    """The file's float tensors have the skeleton's shapes and kinds: ``load_state_dict`` would raise a
    many-line RuntimeError on a shape, and silently cast an integer tensor into a float buffer."""
    own = net.state_dict()
    for key, value in state.items():
        if key not in own:
            continue  # reported by load_state_dict's unexpected keys
        want = own[key]
        if tuple(value.shape) != tuple(want.shape) or value.is_floating_point() != want.is_floating_point():
            raise DeployFileError(f"{path}: tensor {'float.' + key!r} is {str(value.dtype)[6:]} "
                                  f"{tuple(value.shape)}, the model's {str(want.dtype)[6:]} {tuple(want.shape)}")


def load_layers(path: Union[str, os.PathLike], model: Optional[nn.Module] = None, *, impl: Optional[str] = None,
                num_threads: Optional[int] = None, fuse_float: bool = False) -> PackedModel:
    """Load a deployment file as a packed CPU inference model (PyTorch, one packed layer at a time).

    ``recu.deploy.load(path, engine="layers")`` calls this; :func:`recu.deploy.loader.load` chooses the engine.

    Args:
        path: a file written by :func:`recu.deploy.export`.
        model: the model skeleton (architecture only; its weights are replaced) for models
            without a ``recu.models`` spec. It is copied, not modified.
        impl: kernel path (``auto``, ``amx``, ``avx512``, ``avx2``, ``portable``, ``numpy``); None reads ``RECU_DEPLOY_KERNEL``.
        num_threads: kernel threads; None follows ``torch.get_num_threads()`` at each call.
        fuse_float: also fold BatchNorms into the full-precision convs that feed them (the stem,
            downsample convs). Faster (15% at batch 8 on ResNet-18 ImageNet), but the float results
            then differ from PyTorch's by rounding, which can flip the sign of an activation that lies
            within an ulp of 0. Off, the packed model's logits are bit-identical to the PyTorch
            model's on channels_last input (measured on CIFAR-10 test images).
    """
    from safetensors import safe_open

    meta = read_metadata(path)
    if impl is not None:
        resolve_kernel(impl)
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    check_file(meta, tensors, str(path))
    if model is None and not meta.get("model_spec"):
        raise DeployFileError(f"{path}: the file has no model spec; pass the model skeleton: load(path, model=...)")
    try:
        net = _skeleton(meta, model)
    except (TypeError, KeyError, ValueError) as e:  # a model_spec that builds no model
        why = (str(e).strip().splitlines() or [""])[0]
        raise DeployFileError(f"{path}: model_spec builds no model: {type(e).__name__}: {why}") from None
    for layer in meta["binary_layers"]:
        name = layer["name"]
        c_in = int(layer["in_channels"])
        bits = unpackbits_bytes(tensors[f"binary.{name}.bits"].numpy(), c_in)
        weights = PackedConvWeights(bits, c_in)
        if weights.out_channels != int(layer["out_channels"]):
            raise ValueError(f"layer {name}: {weights.out_channels} output channels stored, metadata says "
                             f"{layer['out_channels']}")
        missing = [k for k in PackedConv2d.EPILOGUE if f"binary.{name}.{k}" not in tensors]
        if missing:
            raise ValueError(f"layer {name}: the file lacks the tensors {missing}")
        epilogue = {k: tensors[f"binary.{name}.{k}"].numpy() for k in PackedConv2d.EPILOGUE}
        cls = {"conv2d": PackedConv2d, "linear": PackedLinear}.get(layer.get("kind", "conv2d"))
        if cls is None:
            raise ValueError(f"layer {name}: unknown kind {layer.get('kind')!r} (a newer recu wrote this file?)")
        packed = cls(weights, epilogue, tuple(layer["stride"]), tuple(layer["padding"]), impl)
        try:
            old = net.get_submodule(name)
        except AttributeError:
            raise DeployFileError(f"{path}: the model skeleton has no layer {name!r} that the file names; "
                                  "wrong skeleton?") from None
        c_old = getattr(old, "in_channels", getattr(old, "in_features", c_in))
        o_old = getattr(old, "out_channels", getattr(old, "out_features", packed.out_channels))
        if (c_old, o_old) != (c_in, packed.out_channels):
            raise ValueError(f"layer {name}: the skeleton's {type(old).__name__} has other channel counts than the file")
        _check_geometry(old, layer, path)
        _replace(net, name, packed)
        if layer.get("folded_bn"):
            _replace(net, layer["folded_bn"], nn.Identity())
    state = {k[len("float."):]: v for k, v in tensors.items() if k.startswith("float.")}
    _check_against_skeleton(net, state, path)
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise DeployFileError(f"{path}: the file does not match the model skeleton: missing {sorted(missing)[:8]}, "
                              f"unexpected {sorted(unexpected)[:8]}")
    net.eval()
    if fuse_float:
        _fuse_float_conv_bn(net)
    return PackedModel(net, meta, num_threads)


load = load_layers  # the name before recu.deploy.loader chose between engines
