"""What the exporters read off a PyTorch model: which layers pack, their padding, their float32 epilogue.

Below :mod:`.export`, :mod:`.graph` and :mod:`.onnx_export`, which all need it (and import nothing of
each other through it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import Tensor, nn

from ...nn import BinaryLayer, ReCUConv2d, ReCULinear

__all__ = ["conv_padding", "packable_reason", "EpilogueVectors", "epilogue_vectors", "bn_scale_shift", "unwrap"]


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
    if not isinstance(layer, (ReCUConv2d, ReCULinear)):
        return f"{type(layer).__name__} is not a ReCUConv2d or ReCULinear"
    cfg = layer.config
    if not cfg.fully_binary:
        return "weights or activations are not binary"
    if isinstance(layer, ReCULinear):
        return None
    if layer.groups != 1:
        return "groups != 1"
    if tuple(layer.dilation) != (1, 1):
        return "dilation != 1"
    if conv_padding(layer) is None:
        return f"padding {layer.padding!r} is not symmetric"
    return None


@dataclass
class EpilogueVectors:
    """Per-output-channel float32 vectors: y = fma(float32(dot) * alpha + bias, bn_scale, bn_shift)."""

    alpha: np.ndarray
    bias: np.ndarray
    bn_scale: np.ndarray
    bn_shift: np.ndarray


@torch.no_grad()
def epilogue_vectors(layer: BinaryLayer, bn: Optional[nn.BatchNorm2d]) -> EpilogueVectors:
    """The layer's scale and bias and its BatchNorm as PyTorch's CPU kernel evaluates it.

    The eval forward rounds ``conv * alpha`` and ``+ bias`` in float32, and PyTorch's CPU BatchNorm
    computes ``fma(x, a, b)`` with ``a = gamma * rsqrt(var + eps)`` and ``b = fma(-mean, a, beta)``
    (measured: bit-identical on this PyTorch, NCHW and channels_last). Keeping these steps instead of
    one folded multiplier makes the packed layer's float output bit-identical too, so no sign of the
    next binary layer's input can flip on a rounding difference.
    """
    o = layer.weight.shape[0]
    s = layer.output_scale(layer.clamped_weight())
    alpha = torch.ones(o) if s is None else s.detach().reshape(o).float().cpu()
    bias = torch.zeros(o) if layer.bias is None else layer.bias.detach().float().cpu()
    a, b = (torch.ones(o), torch.zeros(o)) if bn is None else bn_scale_shift(bn)
    return EpilogueVectors(*(t.contiguous().numpy() for t in (alpha, bias, a, b)))


@torch.no_grad()
def bn_scale_shift(bn: nn.modules.batchnorm._BatchNorm) -> tuple[Tensor, Tensor]:
    """An eval BatchNorm (1d or 2d, running statistics) as float32 ``(a, b)``, ``y = fma(x, a, b)``.

    ``a = gamma * rsqrt(var + eps)`` and ``b = fma(-mean, a, beta)``: the values PyTorch's CPU
    BatchNorm kernel computes (see :func:`epilogue_vectors`). Used for folded BatchNorms and the graph's
    ``batch_norm`` nodes alike.
    """
    o = bn.num_features
    gamma = bn.weight.detach().float().cpu() if bn.weight is not None else torch.ones(o)
    beta = bn.bias.detach().float().cpu() if bn.bias is not None else torch.zeros(o)
    mean, var = bn.running_mean.float().cpu(), bn.running_var.float().cpu()
    a = gamma * torch.rsqrt(var + bn.eps)
    # float32 fma(-mean, a, beta): the float64 product is exact, one rounding to float64, one to float32.
    b = (beta.double() - mean.double() * a.double()).float()
    return a.contiguous(), b.contiguous()


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside ``torch.compile`` / DataParallel / DDP wrappers (their keys carry prefixes)."""
    while True:
        inner = getattr(model, "_orig_mod", None)  # torch.compile's OptimizedModule
        if inner is None and isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            inner = model.module
        if not isinstance(inner, nn.Module):
            return model
        model = inner
