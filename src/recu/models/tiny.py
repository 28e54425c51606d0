"""Small networks for the quick start (8x8 digits) and for fast tests of the training engine."""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from ..nn import BinaryConfig, ReCULinear
from ._common import conv_factory, kaiming_init_convs
from ._registration import register


class DigitsCNN(nn.Module):
    """FP conv 1->32, then two binary 3x3 convs (32->64->64) with max-pooling, BN1d, FP linear.

    Sized for 8x8 single-channel images; trains to ~95% on scikit-learn's digits in a minute on 2 cores.
    """

    def __init__(self, num_classes: int = 10, config: Optional[BinaryConfig] = None, in_channels: int = 1,
                 width: int = 64) -> None:
        super().__init__()
        conv = conv_factory(config)
        half = width // 2
        self.stem = nn.Sequential(nn.Conv2d(in_channels, half, 3, 1, 1, bias=False), nn.BatchNorm2d(half), nn.Hardtanh())
        self.features = nn.Sequential(
            conv(half, width, 3, 1, 1), nn.BatchNorm2d(width), nn.Hardtanh(), nn.MaxPool2d(2),
            conv(width, width, 3, 1, 1), nn.BatchNorm2d(width), nn.Hardtanh(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(width * 4), nn.Linear(width * 4, num_classes))
        kaiming_init_convs(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(self.stem(x)))


class BinaryMLP(nn.Module):
    """FP linear, binary hidden linear layers, FP classifier; no BatchNorm (its output does not
    depend on how a batch is split across processes, which the DDP equivalence test needs)."""

    def __init__(self, num_classes: int = 10, config: Optional[BinaryConfig] = None, in_features: int = 64,
                 hidden: int = 128, depth: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten(), nn.Linear(in_features, hidden), nn.Hardtanh()]
        for _ in range(depth):
            inner = nn.Linear(hidden, hidden, bias=False) if config is None else ReCULinear(hidden, hidden, config=config)
            layers += [inner, nn.Hardtanh()]
        layers.append(nn.Linear(hidden, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@register()
def digits_cnn_1w1a(num_classes: int = 10, config: Optional[BinaryConfig] = None, **kwargs: int) -> nn.Module:
    return DigitsCNN(num_classes, config, **kwargs)


@register(binary=False)
def digits_cnn_fp(num_classes: int = 10, **kwargs: int) -> nn.Module:
    return DigitsCNN(num_classes, None, **kwargs)


@register()
def mlp_1w1a(num_classes: int = 10, config: Optional[BinaryConfig] = None, **kwargs: int) -> nn.Module:
    return BinaryMLP(num_classes, config, **kwargs)


@register(binary=False)
def mlp_fp(num_classes: int = 10, **kwargs: int) -> nn.Module:
    return BinaryMLP(num_classes, None, **kwargs)
