import math

import pytest
from torch import nn

from recu.models import create
from recu.nn import BinaryLayer
from recu.train import lr_factor, param_groups


def test_cosine_after_warmup_starts_the_cosine_after_the_warmup():
    # recu's schedule before issue 10 (an option now): lr = 0.1 (e + 1) / 5, then cosine over 595 epochs.
    def f(e: int) -> float:
        return lr_factor(e, 600, 5, "cosine_after_warmup")

    assert [f(e) for e in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert f(5) == pytest.approx(1.0)
    assert f(5 + 595 // 2) == pytest.approx(0.5 * (1 + math.cos(math.pi * 297 / 595)))
    assert f(599) == pytest.approx(0.5 * (1 + math.cos(math.pi * 594 / 595)))
    assert f(599) < 1e-4
    assert lr_factor(3, 10, 0, "constant") == 1.0
    with pytest.raises(ValueError, match="lr schedule"):
        lr_factor(3, 10, 0, "step")


def test_conv_fc_rule_decays_conv_and_linear_weights_but_no_fp_1x1():
    model = create("resnet18_1w1a_imagenet", num_classes=1000)
    decay, rest = param_groups(model, 1e-4, "conv_fc")
    decayed = {id(p) for p in decay["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in decayed}
    binary = [n + ".weight" for n, m in model.named_modules() if isinstance(m, BinaryLayer)]
    fp_1x1 = [n + ".weight" for n, m in model.named_modules()
              if type(m) is nn.Conv2d and m.kernel_size == (1, 1)]
    assert len(binary) == 16 and len(fp_1x1) == 3
    # the 16 binary convs, the 7x7 stem and the classifier; no BN, no alpha, no 1x1 downsample conv
    assert names == set(binary) | {"conv1.weight", "fc.weight"}
    assert not names & set(fp_1x1)
    assert decay["weight_decay"] == 1e-4 and rest["weight_decay"] == 0.0
    assert len(decay["params"]) + len(rest["params"]) == len(list(model.parameters()))


def test_cifar_weight_decay_on_everything():
    model = create("resnet20_1w1a")
    (group,) = param_groups(model, 5e-4, "all")
    assert len(group["params"]) == len(list(model.parameters()))
