"""ImageNet ResNet-18/34 with a skip around every binary convolution (method document, section 4)."""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from ..nn import BinaryConfig
from ._common import ConvFactory, conv_factory, fill_bn2d_gamma, kaiming_init_convs
from ._registration import register

__all__ = [
    "ImageNetResNet",
    "resnet18_1w1a_imagenet",
    "resnet34_1w1a_imagenet",
    "resnet18_fp_imagenet",
    "resnet34_fp_imagenet",
]


class BasicBlock(nn.Module):
    """Two binary 3x3 convolutions, each with its own residual; the first residual is downsampled
    by an FP 1x1 stride-2 convolution + BN where the shape changes."""

    def __init__(self, conv: ConvFactory, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = conv(cin, cout, 3, stride, 1)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = nn.Hardtanh()
        self.conv2 = conv(cout, cout, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act2 = nn.Hardtanh()
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.bn1(self.conv1(x)) + self.downsample(x))
        return self.act2(self.bn2(self.conv2(out)) + out)


class ImageNetResNet(nn.Module):
    """FP 7x7/2 stem, BN, hardtanh, 3x3/2 maxpool; 4 stages of :class:`BasicBlock` (64..512);
    global avgpool, BN1d(512), FP linear.

    Init as the authors' ImageNet ResNet: ``kaiming_normal_`` with PyTorch's defaults (fan_in, gain
    sqrt(2)) for every convolution, binary or not; every BatchNorm2d gamma 1e-8 and beta 0; BatchNorm1d,
    the linear layer and alpha keep their default init.

    Args:
        depths: blocks per stage, [2,2,2,2] for ResNet-18, [3,4,6,3] for ResNet-34.
        num_classes: classifier outputs.
        config: binary layer config; ``None`` builds the full-precision twin.
    """

    def __init__(
        self, depths: list[int], num_classes: int = 1000, config: Optional[BinaryConfig] = None, in_channels: int = 3
    ) -> None:
        super().__init__()
        conv = conv_factory(config)
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.act1 = nn.Hardtanh()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, cin = [], 64
        for i, (width, depth) in enumerate(zip([64, 128, 256, 512], depths)):
            blocks = []
            for j in range(depth):
                blocks.append(BasicBlock(conv, cin, width, 2 if i > 0 and j == 0 else 1))
                cin = width
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.bn2 = nn.BatchNorm1d(512)
        self.fc = nn.Linear(512, num_classes)
        kaiming_init_convs(self)
        fill_bn2d_gamma(self, 1e-8)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        x = self.layers(x)
        return self.fc(self.bn2(self.pool(x).flatten(1)))


@register()
def resnet18_1w1a_imagenet(num_classes: int = 1000, config: Optional[BinaryConfig] = None, in_channels: int = 3) -> nn.Module:
    """ImageNet ResNet-18 with 16 binary convolutions."""
    return ImageNetResNet([2, 2, 2, 2], num_classes, config or BinaryConfig(), in_channels)


@register()
def resnet34_1w1a_imagenet(num_classes: int = 1000, config: Optional[BinaryConfig] = None, in_channels: int = 3) -> nn.Module:
    """ImageNet ResNet-34 with 32 binary convolutions."""
    return ImageNetResNet([3, 4, 6, 3], num_classes, config or BinaryConfig(), in_channels)


@register(binary=False)
def resnet18_fp_imagenet(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    """Full-precision twin of :func:`resnet18_1w1a_imagenet`."""
    return ImageNetResNet([2, 2, 2, 2], num_classes, None, in_channels)


@register(binary=False)
def resnet34_fp_imagenet(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    """Full-precision twin of :func:`resnet34_1w1a_imagenet` (the two-stage recipe's teacher)."""
    return ImageNetResNet([3, 4, 6, 3], num_classes, None, in_channels)
