"""recu.binarize on a torchvision-style ResNet-18 and on small models."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import recu
from recu import BinaryConfig, ReCUConv1d, ReCUConv2d, ReCULinear, binarize, binary_layers

from _torchvision_resnet import resnet18

CONV_NAMES = [f"layer{s}.{b}.conv{c}" for s in range(1, 5) for b in range(2) for c in (1, 2)]
DOWNSAMPLE = [f"layer{s}.0.downsample.0" for s in (2, 3, 4)]


@pytest.fixture(scope="module")
def net() -> nn.Module:
    torch.manual_seed(0)
    return resnet18(num_classes=10, width=8).eval()


def test_resnet18_conversion(net: nn.Module) -> None:
    before = {k: v.clone() for k, v in net.state_dict().items()}
    model = binarize(net)
    names = [n for n, _ in binary_layers(model)]
    # the 1x1 downsample convolutions stay full precision, as in Bi-Real, ReActNet and the authors' ImageNet ResNets
    assert sorted(names) == sorted(CONV_NAMES)
    assert len(names) == 16
    assert all(type(model.get_submodule(n)) is nn.Conv2d for n in DOWNSAMPLE)
    assert type(model.conv1) is nn.Conv2d and type(model.fc) is nn.Linear
    for name in names:
        new, old = model.get_submodule(name), net.get_submodule(name)
        assert type(new) is ReCUConv2d
        assert torch.equal(new.weight, old.weight)  # copied exactly
        assert new.weight.data_ptr() != old.weight.data_ptr()
        for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups"):
            assert getattr(new, attr) == getattr(old, attr)
        assert new.config == BinaryConfig() and new.alpha.shape == (old.out_channels, 1, 1)
        assert new.tau.item() == pytest.approx(0.85)  # clamps until a schedule sets tau
        assert new.training == old.training
    # everything else identical, the original untouched (inplace=False)
    sd = model.state_dict()
    for k, v in before.items():
        assert torch.equal(sd[k], v) and torch.equal(net.state_dict()[k], v)
    assert not any(isinstance(m, recu.nn.BinaryLayer) for m in net.modules())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert model(x).shape == net(x).shape == (2, 10)
    # binarising again changes nothing (already-binary layers are left alone) except the new first/last
    again = binarize(model)
    assert sorted(n for n, _ in binary_layers(again)) == sorted(names)


def test_biases_copied_and_linear_conv1d() -> None:
    model = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 4), nn.Unflatten(1, (4, 1)), nn.Conv1d(4, 3, 1, bias=False),
                          nn.Flatten(), nn.Linear(3, 2))
    out = binarize(model)
    assert type(out[1]) is ReCULinear and type(out[3]) is ReCUConv1d
    assert torch.equal(out[1].bias, model[1].bias) and out[3].bias is None
    assert type(out[0]) is nn.Linear and type(out[5]) is nn.Linear
    assert out(torch.randn(2, 6)).shape == (2, 2)


def test_keep_first_last_false_and_config(net: nn.Module) -> None:
    cfg = recu.preset("balanced")
    model = binarize(net, cfg, keep_first_last=False, keep_downsample=False)
    names = {n for n, _ in binary_layers(model)}
    assert names == set(CONV_NAMES + DOWNSAMPLE + ["conv1", "fc"])
    assert type(model.fc) is ReCULinear and model.fc.config == cfg
    assert torch.equal(model.fc.bias, net.fc.bias)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_skip_by_names_and_predicate(net: nn.Module) -> None:
    model = binarize(net, skip=DOWNSAMPLE, keep_downsample=False)
    assert {n for n, _ in binary_layers(model)} == set(CONV_NAMES)
    assert all(type(model.get_submodule(n)) is nn.Conv2d for n in DOWNSAMPLE)
    one = binarize(net, skip="layer1.0.conv1", keep_downsample=False)  # a single name, not its characters
    assert {n for n, _ in binary_layers(one)} == set(CONV_NAMES + DOWNSAMPLE) - {"layer1.0.conv1"}
    pred = binarize(net, skip=lambda name, m: isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1),
                    keep_downsample=False)
    assert {n for n, _ in binary_layers(pred)} == set(CONV_NAMES)
    stage = binarize(net, skip=lambda name, m: name.startswith("layer4"), keep_downsample=False)
    assert {n for n, _ in binary_layers(stage)} == {n for n in CONV_NAMES + DOWNSAMPLE if not n.startswith("layer4")}


def test_unknown_skip_name(net: nn.Module) -> None:
    with pytest.raises(ValueError, match="layer9.conv1"):
        binarize(net, skip=["layer1.0.conv1", "layer9.conv1"])
    with pytest.raises(ValueError, match="layer1.0.bn1"):
        binarize(net, skip=["layer1.0.bn1"])  # exists but is not convertible


def test_inplace(net: nn.Module) -> None:
    import copy

    copy_ = copy.deepcopy(net)
    out = binarize(copy_, inplace=True)
    assert out is copy_
    assert isinstance(copy_.layer1[0].conv1, ReCUConv2d)
    fresh = binarize(net)
    assert fresh is not net and isinstance(net.layer1[0].conv1, nn.Conv2d) and type(net.layer1[0].conv1) is nn.Conv2d


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("inplace", [False, True])
def test_non_finite_weights(net: nn.Module, bad: float, inplace: bool) -> None:
    import copy

    broken = copy.deepcopy(net)
    with torch.no_grad():
        broken.layer3[1].conv2.weight[0, 0, 0, 0] = bad
    with pytest.raises(ValueError, match="non-finite"):
        binarize(broken, inplace=inplace)
    # nothing was converted, not even the layers before the broken one
    assert not any(isinstance(m, recu.nn.BinaryLayer) for m in broken.modules())
    # a non-finite weight in a layer that stays full precision is not our business
    ok = copy.deepcopy(net)
    with torch.no_grad():
        ok.conv1.weight[0, 0, 0, 0] = bad
    assert len(binary_layers(binarize(ok))) == 16


def test_padding_mode_rejected() -> None:
    model = nn.Sequential(nn.Conv2d(3, 3, 3), nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect"), nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="padding_mode"):
        binarize(model, inplace=True)
    assert type(model[1]) is nn.Conv2d


def test_dtype_preserved() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3), nn.Conv2d(4, 2, 1)).double()
    out = binarize(model)
    assert out[1].weight.dtype == out[1].alpha.dtype == torch.float64
    assert out(torch.randn(1, 3, 8, 8, dtype=torch.float64)).dtype == torch.float64


def test_model_that_is_itself_a_layer() -> None:
    conv = nn.Conv2d(3, 4, 3)
    out = binarize(conv, keep_first_last=False)
    assert type(out) is ReCUConv2d and torch.equal(out.weight, conv.weight)
    assert list(out._modules) == [] and type(conv) is nn.Conv2d
    assert binarize(conv) is not conv and type(binarize(conv)) is nn.Conv2d  # first = last: kept
    lin = nn.Linear(3, 2)
    assert type(binarize(lin, keep_first_last=False, inplace=True)) is ReCULinear
