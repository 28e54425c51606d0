"""Pieces shared by the model families (not public API)."""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn import BinaryConfig, ReCUConv2d

# conv(in_channels, out_channels, kernel_size, stride, padding) -> module
ConvFactory = Callable[[int, int, int, int, int], nn.Module]


def conv_factory(config: Optional[BinaryConfig]) -> ConvFactory:
    """Binary convolutions with ``config``, or plain ``nn.Conv2d`` when ``config`` is None.

    The full-precision twins are the same classes built with ``config=None``, so the two
    can never drift apart architecturally.
    """

    def make(cin: int, cout: int, k: int, stride: int = 1, padding: int = 0) -> nn.Module:
        if config is None:
            return nn.Conv2d(cin, cout, k, stride, padding, bias=False)
        return ReCUConv2d(cin, cout, k, stride, padding, bias=False, config=config)

    return make


class PadShortcut(nn.Module):
    """Parameter-free downsampling shortcut: AvgPool2d(stride), then zero channels on both sides.

    Adds ``(out_channels - in_channels) // 2`` zero channels before and after, which is
    planes/4 on each side when the width doubles (the authors' "option A").
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        extra = out_channels - in_channels
        if extra < 0 or extra % 2:
            raise ValueError(f"PadShortcut needs an even, non-negative channel increase, got {in_channels}->{out_channels}")
        self.pad = extra // 2
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        if self.stride != 1:
            x = F.avg_pool2d(x, self.stride)
        if self.pad:
            x = F.pad(x, (0, 0, 0, 0, self.pad, self.pad))
        return x

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad_channels={self.pad}"


def kaiming_init_convs(model: nn.Module, **kwargs: object) -> None:
    """Kaiming-normal init of every (binary or full-precision) convolution weight."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, **kwargs)  # type: ignore[arg-type]


@torch.no_grad()
def fill_bn2d_gamma(model: nn.Module, value: float) -> None:
    """Set the scale of every BatchNorm2d (and zero its shift)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.fill_(value)
            m.bias.zero_()
