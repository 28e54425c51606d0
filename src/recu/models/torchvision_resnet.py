"""Full-precision ResNet-18/34 with torchvision's exact module layout, written without torchvision.

The two-stage recipe distils from torchvision's ImageNet ResNet-34, whose weights are distributed as
a bare state dict (``torch.save(model.state_dict())``). The state-dict keys here are torchvision's
(``conv1``, ``bn1``, ``layer1..4.N.{conv1,bn1,conv2,bn2,downsample.0,downsample.1}``, ``fc``), so that
file loads with ``load_state_dict`` unchanged; :func:`from_torchvision_state_dict` recognises one.
"""

from __future__ import annotations

from typing import Mapping, Optional

import torch
from torch import Tensor, nn

from ._registration import register

__all__ = [
    "TorchvisionBasicBlock",
    "TorchvisionResNet",
    "resnet18_torchvision",
    "resnet34_torchvision",
    "from_torchvision_state_dict",
]

_DEPTHS = {"resnet18_torchvision": (2, 2, 2, 2), "resnet34_torchvision": (3, 4, 6, 3)}


class TorchvisionBasicBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + downsample(x)); ``downsample`` is None or 1x1 conv + BN."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: Optional[nn.Module] = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class TorchvisionResNet(nn.Module):
    """7x7/2 conv, BN, ReLU, 3x3/2 maxpool, four stages (64..512), global average pool, linear with bias.

    Init as torchvision: Kaiming-normal (fan_out, ReLU) convolutions, BatchNorm gamma 1 and beta 0,
    the linear layer PyTorch's default.
    """

    def __init__(self, depths: tuple[int, ...], num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, (width, depth) in enumerate(zip((64, 128, 256, 512), depths)):
            blocks = []
            for j in range(depth):
                blocks.append(TorchvisionBasicBlock(cin, width, 2 if i > 0 and j == 0 else 1))
                cin = width
            # torchvision's attribute names layer1..layer4 are the state-dict keys
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(self.avgpool(x).flatten(1))


@register(binary=False)
def resnet18_torchvision(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    """Full-precision ResNet-18 whose state dict is torchvision's ``resnet18``'s."""
    return TorchvisionResNet(_DEPTHS["resnet18_torchvision"], num_classes, in_channels)


@register(binary=False)
def resnet34_torchvision(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    """Full-precision ResNet-34 whose state dict is torchvision's ``resnet34``'s (the two-stage teacher)."""
    return TorchvisionResNet(_DEPTHS["resnet34_torchvision"], num_classes, in_channels)


def _stage_depths(keys: set[str]) -> tuple[int, ...]:
    """Blocks per stage, counted from the ``layerK.N.conv1.weight`` keys."""
    depths = []
    for stage in range(1, 5):
        depth = 0
        while f"layer{stage}.{depth}.conv1.weight" in keys:
            depth += 1
        depths.append(depth)
    return tuple(depths)


def from_torchvision_state_dict(state: Mapping[str, object]) -> nn.Module:
    """The torchvision-layout ResNet-18 or -34 holding ``state`` (e.g. torchvision's resnet34 weights file).

    The depth comes from the ``layerK.N`` keys, the classes from ``fc.weight``. Missing
    ``num_batches_tracked`` counters (files saved before PyTorch 0.4.1, like torchvision's original
    ResNet weights) are set to 0, as ``torchvision`` itself does on loading.

    Raises:
        ValueError: ``state`` is not such a state dict (the message names the first differences).
    """
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError("not a torchvision ResNet state dict: need a dict of tensors")
    keys = set(state)
    depths = _stage_depths(keys)
    names = [n for n, d in _DEPTHS.items() if d == depths]
    fc = state.get("fc.weight")
    if not names or not isinstance(fc, Tensor) or fc.dim() != 2:
        raise ValueError(f"not a torchvision ResNet-18/34 state dict: blocks per stage {depths}, "
                         f"fc.weight {'present' if 'fc.weight' in keys else 'missing'}")
    in_channels = state["conv1.weight"].shape[1] if "conv1.weight" in keys else 3
    model = (resnet18_torchvision if names[0] == "resnet18_torchvision" else resnet34_torchvision)(
        num_classes=int(fc.shape[0]), in_channels=int(in_channels))
    own = model.state_dict()
    filled = dict(state)
    for key in own:
        if key.endswith("num_batches_tracked") and key not in filled:
            filled[key] = torch.zeros((), dtype=torch.long)
    missing = sorted(set(own) - set(filled))
    unexpected = sorted(set(filled) - set(own))
    mismatched = [k for k in own if k in filled and filled[k].shape != own[k].shape]  # type: ignore[union-attr]
    if missing or unexpected or mismatched:
        raise ValueError(f"not a torchvision {names[0].split('_')[0]} state dict: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}, shape mismatches {mismatched[:3]}")
    model.load_state_dict(filled)
    return model
