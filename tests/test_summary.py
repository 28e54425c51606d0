"""recu.summary of the binarised torchvision-style ResNet-18 at 3x224x224, checked by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import recu
from recu import ReCUConv2d, binarize, summary

from _torchvision_resnet import resnet18


def _hand_binary_convs() -> list[tuple[str, int, int, int, int]]:
    """(name, out_hw, c_out, c_in, k) of every binary conv of ResNet-18 at 224x224, from the architecture."""
    convs = []
    c_in, hw = 64, 56  # after the 7x7/2 stem (112) and the 3x3/2 max-pool (56)
    for stage, width in enumerate((64, 128, 256, 512), start=1):
        stride = 1 if stage == 1 else 2
        out_hw = hw // stride
        convs.append((f"layer{stage}.0.conv1", out_hw, width, c_in, 3))
        convs.append((f"layer{stage}.0.conv2", out_hw, width, width, 3))
        if stride != 1 or c_in != width:
            convs.append((f"layer{stage}.0.downsample.0", out_hw, width, c_in, 1))
        convs.append((f"layer{stage}.1.conv1", out_hw, width, width, 3))
        convs.append((f"layer{stage}.1.conv2", out_hw, width, width, 3))
        c_in, hw = width, out_hw
    return convs


@pytest.fixture(scope="module")
def result():
    torch.manual_seed(0)
    net = resnet18()
    model = binarize(net, keep_downsample=False)  # the 1x1 downsample convs binary too: 19 binary convs
    model.train()
    return net, model, summary(model, (3, 224, 224))


def test_hand_checked_layers(result) -> None:
    _, model, s = result
    rows = {r.name: r for r in s.layers}
    assert rows["layer1.0.conv1"].bops == 56 * 56 * 64 * 64 * 9 == 115_605_504
    assert rows["layer1.0.conv1"].flops == 0
    assert rows["layer1.0.conv1"].output_shape == (64, 56, 56)
    assert rows["conv1"].flops == 112 * 112 * 64 * 3 * 7 * 7 == 118_013_952
    assert rows["conv1"].bops == 0 and rows["conv1"].output_shape == (64, 112, 112)
    assert rows["fc"].flops == 512 * 1000 and rows["fc"].bops == 0
    assert rows["layer4.0.downsample.0"].bops == 7 * 7 * 512 * 256
    assert rows["layer2.0.conv1"].binary_params == 128 * 64 * 9
    assert rows["layer2.0.conv1"].params == 128 * 64 * 9 + 128  # + alpha
    assert rows["layer2.0.conv1"].memory_bytes == 128 * 64 * 9 / 8 + 4 * 128
    assert rows["bn1"].params == 128 and rows["bn1"].memory_bytes == 4 * 128 and rows["bn1"].bops == 0


def test_totals_by_hand(result) -> None:
    net, model, s = result
    convs = _hand_binary_convs()
    assert len(convs) == 19
    bops = sum(hw * hw * co * ci * k * k for _, hw, co, ci, k in convs)
    assert s.bops == bops
    rows = {r.name: r for r in s.layers}
    for name, hw, co, ci, k in convs:
        assert rows[name].bops == hw * hw * co * ci * k * k, name
    flops = 112 * 112 * 64 * 3 * 49 + 512 * 1000
    assert s.flops == flops
    assert s.ops == flops + bops / 64
    total = sum(p.numel() for p in model.parameters())
    assert total == sum(p.numel() for p in net.parameters()) + sum(co for _, _, co, _, _ in convs)  # + alpha
    assert sum(p.numel() for p in net.parameters()) == 11_689_512  # torchvision's ResNet-18
    binary = sum(co * ci * k * k for _, _, co, ci, k in convs)
    assert s.total_params == total
    assert s.binary_params == binary
    assert s.float_params == total - binary
    assert s.memory_bytes == binary / 8 + 4 * (total - binary)
    assert s.float32_bytes == 4 * total
    assert s.compression == pytest.approx(4 * total / (binary / 8 + 4 * (total - binary)))
    assert 13.0 < s.compression < 13.5  # fc and stem stay float32


def test_table_contains_totals(result) -> None:
    _, _, s = result
    text = str(s)
    assert "layer1.0.conv1" in text and "ReCUConv2d" in text
    assert f"parameters: {s.total_params:,} ({s.binary_params:,} binary, {s.float_params:,} float)" in text
    assert f"BOPs: {s.bops / 1e9:.3f}G" in text
    assert f"FLOPs: {s.flops / 1e6:.3f}M" in text
    assert f"OPs = FLOPs + BOPs/64: {s.ops / 1e6:.3f}M" in text
    assert f"compression: {s.compression:.2f}x" in text
    assert "input: 3x224x224" in text


def test_summary_restores_modes_and_runs_without_grad(result) -> None:
    _, model, _ = result
    assert model.training
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), ReCUConv2d(4, 4, 3), nn.Flatten(), nn.Linear(16, 2))
    m.train()
    m[1].eval()  # a frozen BatchNorm stays frozen
    running = m[1].running_mean.clone()
    summary(m, (3, 6, 6))
    assert m.training and m[0].training and not m[1].training and m[2].training
    assert torch.equal(m[1].running_mean, running)


def test_real_weight_and_real_activation_layers_count_flops() -> None:
    m = nn.Sequential(
        nn.Conv2d(3, 4, 1),
        ReCUConv2d(4, 4, 1, config=recu.BinaryConfig(binary_activations=False)),
        ReCUConv2d(4, 4, 1, config=recu.BinaryConfig(binary_weights=False)),
        ReCUConv2d(4, 4, 1),
    )
    s = summary(m, (3, 5, 5))
    assert [r.bops for r in s.layers] == [0, 0, 0, 25 * 16]
    assert [r.flops for r in s.layers] == [25 * 12, 25 * 16, 25 * 16, 0]
    assert [r.binary_params for r in s.layers] == [0, 16, 0, 16]


def test_linear_on_sequences() -> None:
    s = summary(nn.Sequential(nn.Linear(8, 16)), (5, 8))
    assert s.flops == 5 * 8 * 16


@pytest.mark.parametrize("bad", [(), (3, 0, 224), (3, -1, 4), 3, (3.5, 224, 224), "abc", (3, None, 2)])
def test_bad_input_size(bad) -> None:
    with pytest.raises(ValueError, match="input_size"):
        summary(nn.Sequential(nn.Conv2d(3, 4, 1)), bad)
