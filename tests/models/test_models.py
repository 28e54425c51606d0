"""Architecture tests for recu.models: sizes, binary layer counts, shapes, gradients, specs."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import recu.models as M
from recu import binary_layers, preset
from recu.models._common import PadShortcut
from recu.nn import BinaryConfig, ReCUConv2d

CIFAR_BINARY = {"resnet20_1w1a": 18, "resnet18_1w1a": 16, "vgg_small_1w1a": 5}
IMAGENET_BINARY = {"resnet18_1w1a_imagenet": 16, "resnet34_1w1a_imagenet": 32, "reactnet_resnet18": 16}
ALL_BINARY = {**CIFAR_BINARY, **IMAGENET_BINARY}
FP_TWIN = {
    "resnet20_1w1a": "resnet20_fp",
    "resnet18_1w1a": "resnet18_fp",
    "vgg_small_1w1a": "vgg_small_fp",
    "resnet18_1w1a_imagenet": "resnet18_fp_imagenet",
    "resnet34_1w1a_imagenet": "resnet34_fp_imagenet",
    "reactnet_resnet18": "reactnet_resnet18_fp",
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_available_lists_every_family_and_twin():
    assert set(M.available()) >= {*ALL_BINARY, *FP_TWIN.values()}
    assert M.available() == sorted(M.available())


def test_resnet20_parameter_count_by_hand():
    conv3 = lambda cin, cout: cin * cout * 9  # noqa: E731
    bn = lambda c: 2 * c  # noqa: E731  (gamma and beta; running stats are buffers)
    stem = conv3(3, 16) + bn(16)
    binary = 0
    for cin, cout in [(16, 16), (32, 32), (64, 64)]:
        first_in = cin if cin == 16 else cin // 2
        # six binary convs per stage: the first may widen, each has BN and a per-channel alpha
        convs = conv3(first_in, cout) + 5 * conv3(cout, cout)
        binary += convs + 6 * bn(cout) + 6 * cout
    head = bn(64) + 64 * 10 + 10
    expected = stem + binary + head
    assert expected == 270_522  # the "about 0.27M" of the paper
    model = M.create("resnet20_1w1a")
    assert n_params(model) == expected
    # the FP twin lacks exactly the 18 alphas
    assert n_params(M.create("resnet20_fp")) == expected - (6 * 16 + 6 * 32 + 6 * 64)


@pytest.mark.parametrize("name,count", sorted(ALL_BINARY.items()))
def test_binary_layer_count_and_fp_twin(name, count):
    model = M.create(name)
    layers = binary_layers(model)
    assert len(layers) == count
    assert all(isinstance(m, ReCUConv2d) for _, m in layers)
    # first conv and classifier stay full precision
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert not isinstance(first_conv, ReCUConv2d)
    assert type(model.fc) is nn.Linear
    twin = M.create(FP_TWIN[name])
    assert binary_layers(twin) == []
    # same architecture: identical keys apart from the binary layers' alpha and tau
    binary_only = {k for k in model.state_dict() if k.endswith((".alpha", ".tau"))}
    assert set(model.state_dict()) - binary_only == set(twin.state_dict())
    assert M.is_binary(name) and not M.is_binary(FP_TWIN[name])


@pytest.mark.parametrize("name", [*CIFAR_BINARY, "resnet20_fp", "vgg_small_fp"])
def test_cifar_forward_backward(name):
    torch.manual_seed(0)
    model = M.create(name, num_classes=100)
    x = torch.randn(4, 3, 32, 32)
    out = model(x)
    assert out.shape == (4, 100)
    out.logsumexp(1).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    model.eval()
    with torch.no_grad():
        assert model(x[:1]).shape == (1, 100)


@pytest.mark.parametrize("name", sorted(IMAGENET_BINARY))
def test_imagenet_output_shape_224(name):
    # one 224x224 image in eval mode: the shape contract at full size, cheaply
    model = M.create(name, num_classes=1000).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


@pytest.mark.parametrize("name", ["resnet18_1w1a_imagenet", "reactnet_resnet18", "resnet34_fp_imagenet"])
def test_imagenet_forward_backward(name):
    # training-mode forward and backward on a small input (the head pools adaptively)
    torch.manual_seed(0)
    model = M.create(name, num_classes=1000)
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 1000)
    out.sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


def test_in_channels_option():
    model = M.create("resnet20_1w1a", in_channels=1)
    assert model.conv1.in_channels == 1 and model.recu_spec["kwargs"] == {"in_channels": 1}
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)  # e.g. the 8x8 digits
    assert M.create("reactnet_resnet18_fp", in_channels=4).conv1.in_channels == 4
    assert M.create("vgg_small_fp", in_channels=1).conv0.in_channels == 1
    assert M.create("resnet34_1w1a_imagenet", in_channels=2).conv1.in_channels == 2


def test_builders_called_directly_keep_their_default_classes():
    assert M.resnet20_1w1a().fc.out_features == 10
    assert M.resnet18_fp_imagenet().fc.out_features == 1000
    # create's contract (issue 10): the model's own number of classes unless num_classes is given
    assert M.create("resnet18_fp_imagenet").fc.out_features == 1000
    assert M.create("resnet18_fp_imagenet", num_classes=10).fc.out_features == 10


def test_unknown_name_lists_available():
    with pytest.raises(ValueError) as err:
        M.create("resnet21_1w1a")
    msg = str(err.value)
    assert "resnet21_1w1a" in msg and all(n in msg for n in M.available())


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        M.create("resnet20_1w1a", num_classes=0)
    with pytest.raises(TypeError):
        M.create("resnet20_1w1a", depth=32)
    with pytest.raises(ValueError, match="stage"):
        M.create("reactnet_resnet18", stage=3)
    with pytest.raises(ValueError, match="already registered"):
        M.register("resnet20_1w1a")(lambda num_classes=10, config=None: nn.Linear(1, 1))


@pytest.mark.parametrize("name", sorted([*ALL_BINARY, *FP_TWIN.values()]))
def test_recu_spec_round_trip(name):
    kwargs = {"stage": 1} if name == "reactnet_resnet18" else {}
    config = preset("balanced") if M.is_binary(name) else None
    model = M.create(name, num_classes=7, config=config, **kwargs)
    spec = model.recu_spec
    spec = json.loads(json.dumps(spec))  # what a checkpoint stores must be plain JSON
    assert spec["name"] == name and spec["num_classes"] == 7
    if M.is_binary(name):
        assert spec["config"]["clamp"] == "none" and "config" not in spec["kwargs"]
    else:
        assert "config" not in spec and "config" not in spec["kwargs"]
    assert spec["kwargs"] == kwargs
    rebuilt = M.create(**spec)
    assert list(rebuilt.state_dict()) == list(model.state_dict())
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.recu_spec == spec
    assert [m.config for _, m in binary_layers(rebuilt)] == [m.config for _, m in binary_layers(model)]
    assert list(M.from_spec(spec).state_dict()) == list(model.state_dict())
    # the engine's reading: config from the top level, model options from kwargs
    config = spec.get("config")
    again = M.create(spec["name"], num_classes=spec["num_classes"],
                     config=BinaryConfig(**config) if config else None, **spec["kwargs"])
    assert again.recu_spec == spec
    # a config nested inside kwargs is accepted as well
    if config:
        nested = M.create(name, 7, kwargs={**spec["kwargs"], "config": config})
        assert nested.recu_spec == spec


def test_config_reaches_every_binary_layer():
    cfg = BinaryConfig(b_star=1.0, clamp="mask")
    model = M.create("resnet18_1w1a", config=cfg)
    assert all(m.config == cfg for _, m in binary_layers(model))
    assert all(m.config == BinaryConfig() for _, m in binary_layers(M.create("vgg_small_1w1a")))


def test_reactnet_stages():
    s1 = M.create("reactnet_resnet18", stage=1)
    s2 = M.create("reactnet_resnet18")  # stage 2 by default
    assert all(not m.config.binary_weights and m.config.binary_activations for _, m in binary_layers(s1))
    assert all(m.config.clamp == "none" for _, m in binary_layers(s1))  # ReActNet's stage 1: no clamp
    assert all(m.config.clamp == "clamp" for _, m in binary_layers(s2))
    assert all(m.config.binary_weights and m.config.binary_activations for _, m in binary_layers(s2))
    s2.load_state_dict(s1.state_dict())  # stage 2 starts from stage 1
    block = s2.layers[1][0]
    assert isinstance(block.downsample[0], nn.AvgPool2d) and block.downsample[1].kernel_size == (1, 1)
    assert isinstance(block.prelu, nn.PReLU)


def test_pad_shortcut_pools_and_zero_pads():
    x = torch.arange(2 * 4 * 4 * 4, dtype=torch.float32).reshape(2, 4, 4, 4)
    y = PadShortcut(4, 8, 2)(x)
    assert y.shape == (2, 8, 2, 2)
    assert torch.equal(y[:, :2], torch.zeros(2, 2, 2, 2)) and torch.equal(y[:, 6:], torch.zeros(2, 2, 2, 2))
    assert torch.allclose(y[:, 2:6], nn.functional.avg_pool2d(x, 2))
    with pytest.raises(ValueError):
        PadShortcut(4, 7, 2)


def test_resnet20_block_structure():
    model = M.create("resnet20_1w1a")
    assert sum(isinstance(m, PadShortcut) for m in model.modules()) == 2  # 16->32, 32->64
    assert isinstance(model.bn2, nn.BatchNorm1d) and model.bn2.num_features == 64
    # A skip around every conv: with only the SECOND conv's BN zeroed, a double-skip block is
    # hardtanh(bn1(conv1(x)) + x) (the second skip carries it through), while a single-skip block
    # (one residual around both convs) would give hardtanh(x).
    with torch.no_grad():
        for m in model.layers.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
        for stage in model.layers:
            for block in stage:
                block.bn2.weight.zero_()
                block.bn2.bias.zero_()
    model.eval()
    for block, shape in [(model.layers[0][0], (2, 16, 8, 8)), (model.layers[1][0], (2, 16, 8, 8))]:
        x = torch.randn(shape) * 0.5
        with torch.no_grad():
            expected = (block.bn1(block.conv1(x)) + block.shortcut(x)).clamp(-1, 1)
            out = block(x)
        assert torch.allclose(out, expected, atol=1e-6)
        assert (out - block.shortcut(x).clamp(-1, 1)).abs().max() > 0.1


def test_resnet20_kaiming_normal_init():
    # kaiming_normal_'s default fan_in mode, as the authors: pick convs whose fan_in and fan_out differ
    torch.manual_seed(0)
    model = M.create("resnet20_1w1a")
    conv = model.layers[2][0].conv1  # 32 -> 64: fan_in 288, fan_out 576
    assert abs(conv.weight.std().item() / (2 / 288) ** 0.5 - 1) < 0.03
    assert abs(model.conv1.weight.std().item() / (2 / 27) ** 0.5 - 1) < 0.1  # fan_out would be 144


def test_vgg_small_pool_before_bn_and_init():
    torch.manual_seed(0)
    model = M.create("vgg_small_1w1a")
    first = model.features[0]
    assert isinstance(first[0], ReCUConv2d) and isinstance(first[1], nn.MaxPool2d)
    assert isinstance(first[2], nn.BatchNorm2d) and isinstance(first[3], nn.Hardtanh)
    assert model.fc.in_features == 8192
    assert abs(model.fc.weight.std().item() - 0.01) < 1e-3
    conv = model.features[4][0]  # 512 -> 512: std sqrt(2 / (9 * 512))
    assert abs(conv.weight.std().item() / (2 / (9 * 512)) ** 0.5 - 1) < 0.02


def test_imagenet_bn_gamma_and_downsample():
    model = M.create("resnet18_1w1a_imagenet")
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(torch.all(m.weight == 1e-8) for m in bns)
    down = model.layers[1][0].downsample
    assert type(down[0]) is nn.Conv2d and down[0].stride == (2, 2) and down[0].kernel_size == (1, 1)
    assert sum(type(m) is nn.Conv2d for m in model.modules()) == 1 + 3  # stem + 3 downsamples


def test_models_do_not_import_upper_layers():
    pkg = Path(M.__file__).parent
    forbidden = ("recu.train", "recu.analysis", "recu.deploy", "recu.data", "recu.cli", "torchvision")
    relative_forbidden = ("train", "analysis", "deploy", "data", "cli")
    for path in pkg.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mod = node.module or ""
                if node.level >= 2 and mod.split(".")[0] in relative_forbidden:
                    pytest.fail(f"{path.name} imports ..{mod}")
                names = [mod] if node.level == 0 else []
            else:
                continue
            for n in names:
                assert not n.startswith(forbidden), f"{path.name} imports {n}"
