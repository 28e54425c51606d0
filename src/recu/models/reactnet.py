"""Two-stage "ReActNet-like" ResNet-18 (method document, section 4).

Sixteen single-convolution blocks in stages [4, 4, 4, 4]. Stage 1 trains with binary
activations and real weights without the ReCU clamp (as ReActNet's stage 1, whose convolutions
have real weights and no clamp), stage 2 with both binary and the clamp, initialised from stage 1
(the two stages have identical state_dict keys, so ``load_state_dict`` carries stage 1 over).
Every layer keeps PyTorch's default initialisation, as in the authors' two-stage model.

Not fixed by the document, chosen as in Bi-Real Net / ReActNet's ResNet-18: the stem is an
FP 7x7/2 convolution, BN and 3x3/2 maxpool without activation, and the head is global
average pooling and an FP linear layer (no BatchNorm1d).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..nn import BinaryConfig
from ._common import ConvFactory, conv_factory
from ._registration import register

__all__ = ["LearnableBias", "ReActBlock", "ReActResNet18", "reactnet_resnet18", "reactnet_resnet18_fp", "stage_config"]


class LearnableBias(nn.Module):
    """Adds a learned per-channel shift (ReActNet's RSign/RPReLU shifts), initialised to 0."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.bias


class ReActBlock(nn.Module):
    """bias, bconv 3x3, BN, + shortcut, bias, PReLU, bias.

    The shortcut is the identity, or AvgPool2d(2), FP 1x1 conv and BN where the shape changes.
    """

    def __init__(self, conv: ConvFactory, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.move0 = LearnableBias(cin)
        self.conv = conv(cin, cout, 3, stride, 1)
        self.bn = nn.BatchNorm2d(cout)
        self.move1 = LearnableBias(cout)
        self.prelu = nn.PReLU(cout)
        self.move2 = LearnableBias(cout)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.AvgPool2d(stride) if stride != 1 else nn.Identity(),
                nn.Conv2d(cin, cout, 1, 1, bias=False),
                nn.BatchNorm2d(cout),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn(self.conv(self.move0(x))) + self.downsample(x)
        return self.move2(self.prelu(self.move1(out)))


class ReActResNet18(nn.Module):
    """The two-stage ResNet-18; ``config=None`` builds the full-precision twin."""

    def __init__(self, num_classes: int = 1000, config: Optional[BinaryConfig] = None, in_channels: int = 3) -> None:
        super().__init__()
        conv = conv_factory(config)
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, cin = [], 64
        for i, width in enumerate([64, 128, 256, 512]):
            blocks = []
            for j in range(4):
                blocks.append(ReActBlock(conv, cin, width, 2 if i > 0 and j == 0 else 1))
                cin = width
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        # No init pass: the authors' two-stage model keeps PyTorch's default initialisation.

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.bn1(self.conv1(x)))
        x = self.layers(x)
        return self.fc(self.pool(x).flatten(1))


def stage_config(config: BinaryConfig, stage: int) -> BinaryConfig:
    """The binary config of training stage 1 (binary activations, real weights, no clamp) or 2 (both binary).

    Stage 1 drops the clamp whatever ``config`` says: ReActNet's stage 1 trains plain real weights,
    and clamping real weights would cap them at +-Q for no binarisation benefit. The weights are
    still centred and standardised, so stage 2 starts from the function stage 1 learned up to the sign.
    """
    if stage == 1:
        return config.replace(binary_weights=False, binary_activations=True, clamp="none")
    if stage == 2:
        return config.replace(binary_weights=True, binary_activations=True)
    raise ValueError(f"stage must be 1 (real weights, binary activations) or 2 (both binary), got {stage!r}")


@register()
def reactnet_resnet18(
    num_classes: int = 1000, config: Optional[BinaryConfig] = None, stage: int = 2, in_channels: int = 3
) -> nn.Module:
    """Two-stage ResNet-18 with 16 binary convolutions; ``stage=1`` keeps their weights real."""
    return ReActResNet18(num_classes, stage_config(config or BinaryConfig(), stage), in_channels)


@register(binary=False)
def reactnet_resnet18_fp(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    """Full-precision twin of :func:`reactnet_resnet18`."""
    return ReActResNet18(num_classes, None, in_channels)
