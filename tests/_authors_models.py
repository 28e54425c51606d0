"""The ReCU authors' paper models, re-implemented for the tests from reading github.com/z-hXu/ReCU.

Independent of ``recu``: module names, layer order, in-place ops and the binary convolution follow
their files (``*/modules/binarized_modules.py``, ``cifar/models_cifar/{resnet,resnet2,vgg}.py``,
``imagenet/models_imagenet/resnet.py``, ``imagenet_two-stage/models_imagenet/resnet.py``), so a state
dict of these modules has exactly the keys their ``main.py`` saves. Their ``main.py`` assigns each
binary convolution's ``tau`` as ``torch.tensor([tau])``; :func:`set_authors_tau` does the same.

Their binary convolution, restated:
  w1 = (w - mean_filter(w)) / (sqrt(var_filter(w - mean) + 1e-5) / 2 / sqrt(2))   (unbiased var)
  Q = -mean(|w1|) * log(2 - 2 tau), taken out of the graph as a Python float; w2 = clamp(w1, -Q, Q)
  a0 = a / sqrt(var_sample(a) + 1e-5) in training, a0 = a in eval
  out = conv(sign(a0), sign(w2)) * alpha, with torch.sign (0 at 0); sign of w2 passes the gradient
  straight through, sign of a0 multiplies it by max(0, 2 - 2|a0|).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _SignIdentityGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # type: ignore[no-untyped-def]
        return torch.sign(x)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def]
        return grad.clone()


class _SignTriangleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # type: ignore[no-untyped-def]
        ctx.save_for_backward(x)
        return torch.sign(x)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def]
        (x,) = ctx.saved_tensors
        return (2 - (2 * x).abs()).clamp(min=0) * grad


class AuthorsBinaryConv(nn.Conv2d):
    """Their BinarizeConv2d: an nn.Conv2d with a learned per-channel ``alpha`` and a ``tau`` buffer."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.alpha = nn.Parameter(torch.rand(self.weight.shape[0], 1, 1))
        self.register_buffer("tau", torch.tensor(1.0))

    def forward(self, a: Tensor) -> Tensor:
        w = self.weight
        centred = w - w.mean([1, 2, 3], keepdim=True)
        std_over_b = torch.sqrt(centred.var([1, 2, 3], keepdim=True) + 1e-5) / 2 / math.sqrt(2)
        w1 = centred / std_over_b
        q = (-w1.abs().mean() * torch.log(2 - 2 * self.tau)).detach().cpu().item()
        w2 = torch.clamp(w1, -q, q)
        if self.training:
            a = a / torch.sqrt(a.var([1, 2, 3], keepdim=True) + 1e-5)
        out = F.conv2d(_SignTriangleGrad.apply(a), _SignIdentityGrad.apply(w2), self.bias,
                       self.stride, self.padding, self.dilation, self.groups)
        return out * self.alpha


def set_authors_tau(model: nn.Module, tau: float) -> None:
    """What their main.py does each epoch: every binary conv's tau becomes a shape-(1,) tensor."""
    for m in model.modules():
        if isinstance(m, AuthorsBinaryConv):
            m.tau = torch.tensor([tau], dtype=torch.float32)


def _kaiming_all_convs(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)


class _ChannelPadShortcut(nn.Module):
    """Their option-A shortcut: 2x2 average pool, then ``pad`` zero channels before and after."""

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d((2, 2))
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(self.pool(x), (0, 0, 0, 0, self.pad, self.pad), "constant", 0)


# ---- CIFAR (cifar/models_cifar) ---------------------------------------------------------------------

class _R20Block(nn.Module):
    """resnet.py's block: a residual around EACH binary conv (the first one with the shortcut)."""

    def __init__(self, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = AuthorsBinaryConv(cin, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = AuthorsBinaryConv(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or cin != planes:
            self.shortcut = nn.Sequential(_ChannelPadShortcut(planes // 4))

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn1(self.conv1(x))
        out += self.shortcut(x)
        out = F.hardtanh(out, inplace=True)
        skip = out
        out = self.bn2(self.conv2(out))
        out += skip
        return F.hardtanh(out, inplace=True)


class _R18CifarBlock(nn.Module):
    """resnet2.py's block: ONE residual around both binary convs, hardtanh between them."""

    def __init__(self, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = AuthorsBinaryConv(cin, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = AuthorsBinaryConv(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or cin != planes:
            self.shortcut = nn.Sequential(_ChannelPadShortcut(planes // 4))

    def forward(self, x: Tensor) -> Tensor:
        out = F.hardtanh(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.hardtanh(out, inplace=True)


class _CifarResNet(nn.Module):
    def __init__(self, block: type, widths: list[int], depths: list[int], stem_hardtanh: bool,
                 num_classes: int) -> None:
        super().__init__()
        self.stem_hardtanh = stem_hardtanh
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        cin = widths[0]
        for i, (width, depth) in enumerate(zip(widths, depths)):
            blocks = []
            for j in range(depth):
                blocks.append(block(cin, width, 2 if i > 0 and j == 0 else 1))
                cin = width
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.n_stages = len(widths)
        self.bn2 = nn.BatchNorm1d(widths[-1])
        self.linear = nn.Linear(widths[-1], num_classes)
        _kaiming_all_convs(self)

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn1(self.conv1(x))
        if self.stem_hardtanh:  # resnet.py (ResNet-20) has it, resnet2.py (ResNet-18) not
            out = F.hardtanh(out, inplace=True)
        for i in range(1, self.n_stages + 1):
            out = getattr(self, f"layer{i}")(out)
        if self.stem_hardtanh:
            out = F.avg_pool2d(out, out.size()[3])  # resnet.py: pool over the whole map
        else:
            out = F.avg_pool2d(out, 4)  # resnet2.py: a fixed 4x4 window (the 32x32 input's last map)
        out = out.view(out.size(0), -1)
        return self.linear(self.bn2(out))


def authors_resnet20(num_classes: int = 10) -> nn.Module:
    return _CifarResNet(_R20Block, [16, 32, 64], [3, 3, 3], True, num_classes)


def authors_resnet18_cifar(num_classes: int = 10) -> nn.Module:
    return _CifarResNet(_R18CifarBlock, [64, 128, 256, 512], [2, 2, 2, 2], False, num_classes)


class AuthorsVGGSmall(nn.Module):
    """vgg.py: named conv0..conv5 / bn0..bn5; one shared max-pool module applied after conv1, 3 and 5."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(3, 128, kernel_size=3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(128)
        self.nonlinear0 = nn.Hardtanh(inplace=True)
        widths = [128, 128, 256, 256, 512, 512]
        for k in range(1, 6):
            setattr(self, f"conv{k}", AuthorsBinaryConv(widths[k - 1], widths[k], kernel_size=3, padding=1,
                                                        bias=False))
            setattr(self, f"bn{k}", nn.BatchNorm2d(widths[k]))
            setattr(self, f"nonlinear{k}", nn.Hardtanh(inplace=True))
        self.pooling = nn.MaxPool2d(kernel_size=2, stride=2)
        self.fc = nn.Linear(512 * 4 * 4, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2.0 / fan))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                m.weight.data.normal_(0, 0.01)
                m.bias.data.zero_()

    def forward(self, x: Tensor) -> Tensor:
        x = self.nonlinear0(self.bn0(self.conv0(x)))
        for k in range(1, 6):
            x = getattr(self, f"conv{k}")(x)
            if k in (1, 3, 5):  # the pool sits between the conv and its BN
                x = self.pooling(x)
            x = getattr(self, f"nonlinear{k}")(getattr(self, f"bn{k}")(x))
        return self.fc(x.view(x.size(0), -1))


# ---- ImageNet (imagenet/models_imagenet/resnet.py) ---------------------------------------------------

class _ImageNetBlock(nn.Module):
    """A residual around each binary conv; the first one's residual is ``downsample(x)`` where given."""

    def __init__(self, cin: int, planes: int, stride: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = AuthorsBinaryConv(cin, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.nonlinear1 = nn.Hardtanh(inplace=True)
        self.conv2 = AuthorsBinaryConv(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.nonlinear2 = nn.Hardtanh(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn1(self.conv1(x))
        out += x if self.downsample is None else self.downsample(x)
        out = self.nonlinear1(out)
        skip = out
        out = self.bn2(self.conv2(out))
        out += skip
        return self.nonlinear2(out)


class AuthorsImageNetResNet(nn.Module):
    """FP 7x7/2 stem + BN + hardtanh + maxpool, 4 stages, AvgPool2d(7) (the 224 input's last map), BN1d, fc."""

    def __init__(self, depths: list[int], num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.nonlinear = nn.Hardtanh(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        cin = 64
        for i, (width, depth) in enumerate(zip([64, 128, 256, 512], depths)):
            stride = 1 if i == 0 else 2
            down = None
            if stride != 1 or cin != width:  # FP 1x1 conv carrying the stride, then BN
                down = nn.Sequential(nn.Conv2d(cin, width, kernel_size=1, stride=stride, bias=False),
                                     nn.BatchNorm2d(width))
            blocks = [_ImageNetBlock(cin, width, stride, down)]
            blocks += [_ImageNetBlock(width, width, 1, None) for _ in range(1, depth)]
            cin = width
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool: nn.Module = nn.AvgPool2d(7, stride=1)
        self.bn2 = nn.BatchNorm1d(512)
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1e-8)
                m.bias.data.zero_()

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.nonlinear(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.avgpool(x)
        return self.fc(self.bn2(x.view(x.size(0), -1)))


def authors_resnet18_imagenet(num_classes: int = 1000) -> AuthorsImageNetResNet:
    return AuthorsImageNetResNet([2, 2, 2, 2], num_classes)


def authors_resnet34_imagenet(num_classes: int = 1000) -> AuthorsImageNetResNet:
    return AuthorsImageNetResNet([3, 4, 6, 3], num_classes)


# ---- two-stage (imagenet_two-stage/models_imagenet/resnet.py) ----------------------------------------

class _Shift(nn.Module):
    """Their LearnableBias: x + a learned (1, C, 1, 1) shift, zero at init."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.bias.expand_as(x)


class _TwoStageBlock(nn.Module):
    """shift, binary 3x3 conv, BN, + residual, shift, PReLU, shift (one binary conv per block)."""

    def __init__(self, cin: int, planes: int, stride: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.move0 = _Shift(cin)
        self.conv = AuthorsBinaryConv(cin, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(planes)
        self.move1 = _Shift(planes)
        self.nonlinear = nn.PReLU(planes)
        self.move2 = _Shift(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn(self.conv(self.move0(x)))
        out += x if self.downsample is None else self.downsample(x)
        return self.move2(self.nonlinear(self.move1(out)))


class AuthorsTwoStageResNet18(nn.Module):
    """Stem ``conv``/``bn``/maxpool (no activation), 4 x 4 single-conv blocks, adaptive pool, fc; default init."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        cin = 64
        for i, width in enumerate([64, 128, 256, 512]):
            stride = 1 if i == 0 else 2
            down = None
            if stride != 1 or cin != width:  # pool first, then an FP 1x1 conv at stride 1, then BN
                down = nn.Sequential(nn.AvgPool2d(kernel_size=2, stride=stride),
                                     nn.Conv2d(cin, width, kernel_size=1, stride=1, bias=False),
                                     nn.BatchNorm2d(width))
            blocks = [_TwoStageBlock(cin, width, stride, down)]
            blocks += [_TwoStageBlock(width, width, 1, None) for _ in range(3)]
            cin = width
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.bn(self.conv(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).view(x.size(0), -1))


ZEROED_STEM_CHANNELS = [1, 5, 7]


def _stem_bn(model: nn.Module) -> nn.BatchNorm2d:
    return model.bn if hasattr(model, "conv") else (model.bn0 if hasattr(model, "bn0") else model.bn1)


@torch.no_grad()
def randomize(model: nn.Module, seed: int) -> None:
    """Random BN affine/statistics, alphas, shifts, PReLU slopes, tau 0.9; zeros into the first binary conv."""
    g = torch.Generator().manual_seed(seed)

    def uniform(t: Tensor, lo: float, hi: float) -> None:
        t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)

    for name, m in model.named_modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            uniform(m.weight, 0.5, 1.5)
            uniform(m.bias, -0.3, 0.3)
            uniform(m.running_mean, -0.2, 0.2)
            uniform(m.running_var, 0.5, 1.5)
        elif isinstance(m, nn.PReLU):
            uniform(m.weight, 0.0, 0.5)
        elif isinstance(m, AuthorsBinaryConv):
            uniform(m.alpha, 0.1, 1.0)
        elif name.endswith(("move0", "move1", "move2")):
            uniform(m.bias, -0.2, 0.2)
    set_authors_tau(model, 0.9)  # Q finite: the clamp zeroes some weight gradients in train mode
    # gamma = beta = 0 makes these stem channels exactly 0 in train and eval mode
    stem = _stem_bn(model)
    stem.weight[ZEROED_STEM_CHANNELS] = 0.0
    stem.bias[ZEROED_STEM_CHANNELS] = 0.0
    if hasattr(model, "conv"):  # two-stage: the first block shifts its input before the binary conv
        model.layer1[0].move0.bias[:, ZEROED_STEM_CHANNELS] = 0.0


def save_as_authors(model: nn.Module, path: Path, data_parallel: bool, legacy: bool = False) -> None:
    """The dict the authors' main.py saves; ``data_parallel`` adds the ``module.`` prefix."""
    state = model.state_dict()
    if data_parallel:
        state = {f"module.{k}": v for k, v in state.items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 10)
    ckpt = {"epoch": 7, "model": "whatever_1w1a", "state_dict": state, "best_prec1": 12.5,
            "optimizer": optimizer.state_dict(), "lr_scheduler": scheduler.state_dict()}
    torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy)


# recu registry name -> builder of the authors' model it corresponds to
AUTHORS_BUILDERS = {
    "resnet20_1w1a": authors_resnet20,
    "resnet18_1w1a": authors_resnet18_cifar,
    "vgg_small_1w1a": AuthorsVGGSmall,
    "resnet18_1w1a_imagenet": authors_resnet18_imagenet,
    "resnet34_1w1a_imagenet": authors_resnet34_imagenet,
    "reactnet_resnet18": AuthorsTwoStageResNet18,
}
