"""VGG-Small for CIFAR (method document, section 4): five binary convolutions, pool before BN."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from ..nn import BinaryConfig
from ._common import conv_factory
from ._registration import register

__all__ = ["VGGSmall", "vgg_small_1w1a", "vgg_small_fp"]


class VGGSmall(nn.Module):
    """FP conv 3->128, BN, hardtanh; binary 128->128 (maxpool), 128->256, 256->256 (maxpool),
    256->512, 512->512 (maxpool), each followed by BN and hardtanh; FP linear 8192 -> classes.

    Init: conv weights N(0, sqrt(2 / (k*k*C_out))), linear N(0, 0.01) with zero bias, BN gamma 1.

    Args:
        num_classes: classifier outputs.
        config: binary layer config; ``None`` builds the full-precision twin.
    """

    def __init__(self, num_classes: int = 10, config: Optional[BinaryConfig] = None, in_channels: int = 3) -> None:
        super().__init__()
        conv = conv_factory(config)
        self.conv0 = nn.Conv2d(in_channels, 128, 3, 1, 1, bias=False)
        self.bn0 = nn.BatchNorm2d(128)
        self.act0 = nn.Hardtanh()
        plan = [(128, 128, True), (128, 256, False), (256, 256, True), (256, 512, False), (512, 512, True)]
        blocks = []
        for cin, cout, pool in plan:
            # The pool sits between the convolution and its BN, as in the authors' model.
            blocks.append(nn.Sequential(
                conv(cin, cout, 3, 1, 1),
                nn.MaxPool2d(2, 2) if pool else nn.Identity(),
                nn.BatchNorm2d(cout),
                nn.Hardtanh(),
            ))
        self.features = nn.Sequential(*blocks)
        self.fc = nn.Linear(512 * 4 * 4, num_classes)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.normal_(0.0, math.sqrt(2.0 / n))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1.0)
                m.bias.zero_()
            elif isinstance(m, nn.Linear):
                m.weight.normal_(0.0, 0.01)
                m.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        x = self.act0(self.bn0(self.conv0(x)))
        x = self.features(x)
        return self.fc(x.flatten(1))


@register()
def vgg_small_1w1a(num_classes: int = 10, config: Optional[BinaryConfig] = None, in_channels: int = 3) -> nn.Module:
    """VGG-Small with 5 binary convolutions."""
    return VGGSmall(num_classes, config or BinaryConfig(), in_channels)


@register(binary=False)
def vgg_small_fp(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """Full-precision VGG-Small (hardtanh kept)."""
    return VGGSmall(num_classes, None, in_channels)
