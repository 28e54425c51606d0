"""The authors' CIFAR ResNets: ResNet-20 and their ResNet-18 variant (method document, section 4).

First convolution and classifier stay full precision; every other convolution is a
:class:`~recu.nn.ReCUConv2d` (or ``nn.Conv2d`` in the ``_fp`` twins).
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from ..nn import BinaryConfig
from ._common import ConvFactory, PadShortcut, conv_factory, kaiming_init_convs
from ._registration import register

__all__ = ["CifarResNet20", "CifarResNet18", "resnet20_1w1a", "resnet20_fp", "resnet18_1w1a", "resnet18_fp"]


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    return PadShortcut(cin, cout, stride) if stride != 1 or cin != cout else nn.Identity()


class DoubleSkipBlock(nn.Module):
    """ResNet-20 block with a skip around each binary convolution (Bi-Real style)."""

    def __init__(self, conv: ConvFactory, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = conv(cin, cout, 3, stride, 1)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = conv(cout, cout, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = _shortcut(cin, cout, stride)
        self.act1 = nn.Hardtanh()
        self.act2 = nn.Hardtanh()

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.bn1(self.conv1(x)) + self.shortcut(x))
        return self.act2(self.bn2(self.conv2(out)) + out)


class SingleSkipBlock(nn.Module):
    """The authors' CIFAR ResNet-18 block: hardtanh(BN(bconv)), BN(bconv) + shortcut, hardtanh."""

    def __init__(self, conv: ConvFactory, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = conv(cin, cout, 3, stride, 1)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = nn.Hardtanh()
        self.conv2 = conv(cout, cout, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = _shortcut(cin, cout, stride)
        self.act2 = nn.Hardtanh()

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        return self.act2(self.bn2(self.conv2(out)) + self.shortcut(x))


def _stages(block: type, conv: ConvFactory, widths: list[int], depths: list[int], cin: int) -> nn.Sequential:
    layers = []
    for i, (width, depth) in enumerate(zip(widths, depths)):
        blocks = []
        for j in range(depth):
            stride = 2 if i > 0 and j == 0 else 1
            blocks.append(block(conv, cin, width, stride))
            cin = width
        layers.append(nn.Sequential(*blocks))
    return nn.Sequential(*layers)


class _CifarResNet(nn.Module):
    stem_act: nn.Module

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem_act(self.bn1(self.conv1(x)))
        x = self.layers(x)
        x = self.pool(x).flatten(1)
        return self.fc(self.bn2(x))


class CifarResNet20(_CifarResNet):
    """ResNet-20: FP conv3x3 3->16, BN, hardtanh; 3 stages x 3 blocks (16/32/64); avgpool, BN1d, FP linear.

    Args:
        num_classes: classifier outputs.
        config: binary layer config; ``None`` builds the full-precision twin.
    """

    def __init__(self, num_classes: int = 10, config: Optional[BinaryConfig] = None, in_channels: int = 3) -> None:
        super().__init__()
        conv = conv_factory(config)
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.stem_act = nn.Hardtanh()
        self.layers = _stages(DoubleSkipBlock, conv, [16, 32, 64], [3, 3, 3], 16)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.bn2 = nn.BatchNorm1d(64)
        self.fc = nn.Linear(64, num_classes)
        kaiming_init_convs(self)


class CifarResNet18(_CifarResNet):
    """The authors' CIFAR ResNet-18: FP conv3x3 3->64 + BN (no activation), stages [2,2,2,2]
    (64/128/256/512), avg-pool + zero-pad shortcuts, avgpool, BN1d(512), FP linear.

    Convolutions get Kaiming-normal init as in ResNet-20 (the document fixes no init here).
    """

    def __init__(self, num_classes: int = 10, config: Optional[BinaryConfig] = None, in_channels: int = 3) -> None:
        super().__init__()
        conv = conv_factory(config)
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.stem_act = nn.Identity()
        self.layers = _stages(SingleSkipBlock, conv, [64, 128, 256, 512], [2, 2, 2, 2], 64)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.bn2 = nn.BatchNorm1d(512)
        self.fc = nn.Linear(512, num_classes)
        kaiming_init_convs(self)


@register()
def resnet20_1w1a(num_classes: int = 10, config: Optional[BinaryConfig] = None, in_channels: int = 3) -> nn.Module:
    """ResNet-20 with 18 binary convolutions (about 0.27M parameters)."""
    return CifarResNet20(num_classes, config or BinaryConfig(), in_channels)


@register(binary=False)
def resnet20_fp(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """Full-precision ResNet-20 (same architecture, ``nn.Conv2d``, hardtanh kept)."""
    return CifarResNet20(num_classes, None, in_channels)


@register()
def resnet18_1w1a(num_classes: int = 10, config: Optional[BinaryConfig] = None, in_channels: int = 3) -> nn.Module:
    """The authors' CIFAR ResNet-18 with 16 binary convolutions."""
    return CifarResNet18(num_classes, config or BinaryConfig(), in_channels)


@register(binary=False)
def resnet18_fp(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """Full-precision twin of :func:`resnet18_1w1a`."""
    return CifarResNet18(num_classes, None, in_channels)
