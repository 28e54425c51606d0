"""Shared set-up of the deploy tests."""

from __future__ import annotations

import torch
from torch import nn

from recu import ReCUConv1d, ReCUConv2d, ReCULinear

_BINARY = (ReCUConv2d, ReCUConv1d, ReCULinear)


def randomize(model: nn.Module, seed: int = 1) -> nn.Module:
    """Non-trivial BatchNorm statistics and affines, random alphas and binary-layer biases (the init's
    are 0/1, which would let a wrong fold or scale pass), eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.randn(c, generator=g) * 0.5 + 1.0)
                m.bias.copy_(torch.randn(c, generator=g) * 0.3)
            if isinstance(m, _BINARY) and m.alpha is not None:
                m.alpha.copy_(torch.rand(m.alpha.shape, generator=g) + 0.1)
            if isinstance(m, _BINARY) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g))
    return model.eval()
