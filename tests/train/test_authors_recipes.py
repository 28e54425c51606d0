"""The paper recipes (configs/*.yaml) side by side with the authors' scripts (github.com/z-hXu/ReCU).

Everything called "authors" below is written out here from reading their main.py, run.sh,
utils/options.py and model files (imagenet/, imagenet_two-stage/, cifar/); nothing is imported
or copied from them.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import pytest
import torch
from torch import nn

from recu.schedule import create_schedule
from recu.train import TrainConfig, Trainer, lr_factor, param_groups
from recu.train.config import _CHOICES
from recu.train.engine import LR_SCHEDULES, WEIGHT_DECAY_RULES, build_model

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


# -- the authors' models: (parameter name, numel) in registration order ---------------------------


def authors_imagenet_resnet(depths: list[int], num_classes: int = 1000) -> list[tuple[str, int]]:
    """imagenet/models_imagenet/resnet.py: stem conv1 (7x7) + bn1; layer1..layer4 of BasicBlocks,
    each conv1 (BinarizeConv2d: weight, alpha), bn1, conv2 (weight, alpha), bn2, and in the first
    block of layers 2-4 downsample = Sequential(Conv2d 1x1, BatchNorm2d); bn2 = BatchNorm1d(512); fc."""
    params = [("conv1.weight", 64 * 3 * 49), ("bn1.weight", 64), ("bn1.bias", 64)]
    cin = 64
    for i, (width, depth) in enumerate(zip((64, 128, 256, 512), depths), start=1):
        for j in range(depth):
            p = f"layer{i}.{j}."
            params += [(p + "conv1.weight", width * cin * 9), (p + "conv1.alpha", width),
                       (p + "bn1.weight", width), (p + "bn1.bias", width),
                       (p + "conv2.weight", width * width * 9), (p + "conv2.alpha", width),
                       (p + "bn2.weight", width), (p + "bn2.bias", width)]
            if cin != width:
                params += [(p + "downsample.0.weight", width * cin),
                           (p + "downsample.1.weight", width), (p + "downsample.1.bias", width)]
            cin = width
    return params + [("bn2.weight", 512), ("bn2.bias", 512), ("fc.weight", num_classes * 512), ("fc.bias", num_classes)]


def authors_two_stage_resnet18(num_classes: int = 1000) -> list[tuple[str, int]]:
    """imagenet_two-stage/models_imagenet/resnet.py: stem `conv` (7x7) + `bn`; layer1..layer4 of four
    blocks, each move0 (LearnableBias), conv (weight, alpha), bn, move1, nonlinear (PReLU), move2, and
    where the shape changes downsample = Sequential(AvgPool2d, conv1x1, BatchNorm2d); fc."""
    params = [("conv.weight", 64 * 3 * 49), ("bn.weight", 64), ("bn.bias", 64)]
    cin = 64
    for i, width in enumerate((64, 128, 256, 512), start=1):
        for j in range(4):
            p = f"layer{i}.{j}."
            params += [(p + "move0.bias", cin), (p + "conv.weight", width * cin * 9), (p + "conv.alpha", width),
                       (p + "bn.weight", width), (p + "bn.bias", width), (p + "move1.bias", width),
                       (p + "nonlinear.weight", width), (p + "move2.bias", width)]
            if cin != width:
                params += [(p + "downsample.1.weight", width * cin),
                           (p + "downsample.2.weight", width), (p + "downsample.2.bias", width)]
            cin = width
    return params + [("fc.weight", num_classes * 512), ("fc.bias", num_classes)]


def authors_decay(name: str) -> bool:
    """Their ImageNet and two-stage main.py: the first SGD/Adam group (with weight_decay) takes the
    parameters whose name holds 'fc' or 'conv'; the second group has weight_decay 0."""
    return "fc" in name or "conv" in name


# recipe -> (the authors' model, how many parameters their rule decays: worked out by hand)
PAPER_RECIPES: dict[str, tuple[Callable[[], list[tuple[str, int]]], int]] = {
    # stem + 16 binary convs x (weight, alpha) + fc (weight, bias)
    "imagenet_resnet18.yaml": (lambda: authors_imagenet_resnet([2, 2, 2, 2]), 1 + 32 + 2),
    # stem + 32 binary convs x (weight, alpha) + fc (weight, bias)
    "imagenet_resnet34.yaml": (lambda: authors_imagenet_resnet([3, 4, 6, 3]), 1 + 64 + 2),
    "imagenet_reactnet_stage1.yaml": (authors_two_stage_resnet18, 1 + 32 + 2),
    "imagenet_reactnet_stage2.yaml": (authors_two_stage_resnet18, 1 + 32 + 2),
}


@pytest.mark.parametrize("recipe", sorted(PAPER_RECIPES))
def test_paper_recipe_decays_the_parameters_the_authors_script_decays(recipe):
    cfg = TrainConfig.from_yaml(CONFIGS / recipe)
    model = build_model(cfg, 1000)
    authors_model, count = PAPER_RECIPES[recipe]
    authors = authors_model()
    ours = list(model.named_parameters())
    # the same parameters in the same order (names may differ): pair them by position and size
    assert len(ours) == len(authors), f"{recipe}: {len(ours)} parameters, the authors' model has {len(authors)}"
    assert [p.numel() for _, p in ours] == [n for _, n in authors]
    ours_for = {a: o for (a, _), (o, _) in zip(authors, ours)}
    expected = {ours_for[a] for a, _ in authors if authors_decay(a)}
    assert len(expected) == count

    decay, rest = param_groups(model, cfg.weight_decay, cfg.weight_decay_on, cfg.weight_decay_names)
    decayed = {id(p) for p in decay["params"]}
    assert {n for n, p in ours if id(p) in decayed} == expected
    assert decay["weight_decay"] == cfg.weight_decay and rest["weight_decay"] == 0.0
    assert len(decay["params"]) + len(rest["params"]) == len(ours)


@pytest.mark.parametrize("recipe", ["cifar10_resnet20.yaml", "cifar10_resnet18.yaml", "cifar10_vgg_small.yaml"])
def test_cifar_recipes_decay_every_parameter_as_the_authors_cifar_script(recipe):
    # cifar/main.py: one group, model.parameters(), weight_decay 5e-4
    cfg = TrainConfig.from_yaml(CONFIGS / recipe)
    model = build_model(cfg, 10)
    (group,) = param_groups(model, cfg.weight_decay, cfg.weight_decay_on, cfg.weight_decay_names)
    assert [id(p) for p in group["params"]] == [id(p) for p in model.parameters()]
    assert group["weight_decay"] == 5e-4


def _users_model() -> nn.Module:
    return nn.Sequential(OrderedDict(
        conv_in=nn.Conv2d(3, 8, 3), norm=nn.BatchNorm2d(8), proj=nn.Conv2d(8, 8, 1),
        pool=nn.Flatten(), head_fc=nn.Linear(8, 2)))


def _decayed_names(model: nn.Module, groups: list[dict]) -> set[str]:
    ids = {id(p) for p in groups[0]["params"]}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_names_rule_on_a_users_own_model_is_about_names_only():
    model = _users_model()
    # default substrings (conv, fc): weights AND biases of conv_in and head_fc; not the BN, and not
    # `proj` (a convolution, but its name holds neither substring)
    groups = param_groups(model, 1e-4, "names")
    assert _decayed_names(model, groups) == {"conv_in.weight", "conv_in.bias", "head_fc.weight", "head_fc.bias"}
    assert groups[1]["weight_decay"] == 0.0 and len(groups[1]["params"]) == 4
    assert _decayed_names(model, param_groups(model, 1e-4, "names", ["proj", "norm.weight"])) == {
        "proj.weight", "proj.bias", "norm.weight"}
    # a frozen parameter is in no group
    model.conv_in.bias.requires_grad_(False)
    groups = param_groups(model, 1e-4, "names")
    assert _decayed_names(model, groups) == {"conv_in.weight", "head_fc.weight", "head_fc.bias"}
    assert sum(len(g["params"]) for g in groups) == 7
    # the old module-type rule guesses: every conv/linear weight but the full-precision 1x1 conv
    assert _decayed_names(model, param_groups(model, 1e-4, "conv_fc")) == {"conv_in.weight", "head_fc.weight"}


def test_names_rule_that_matches_nothing_is_an_error():
    model = _users_model()
    with pytest.raises(ValueError, match=r"match no trainable parameter.*conv_in.weight"):
        param_groups(model, 1e-4, "names", ["layer"])
    assert param_groups(model, 0.0, "names", ["layer"])[0]["params"] == []  # nothing to decay anyway
    for bad in ([], [""], "conv"):
        with pytest.raises(ValueError, match="names"):
            param_groups(model, 1e-4, "names", bad)
    with pytest.raises(ValueError, match="weight decay rule"):
        param_groups(model, 1e-4, "bn")


def test_trainer_builds_its_optimizer_with_the_configured_names(tmp_path):
    cfg = TrainConfig(model="digits_cnn_1w1a", dataset="digits", batch_size=64, eval_batch_size=100, epochs=2,
                      warmup_epochs=0, out_dir=str(tmp_path), name="wd", device="cpu", monitor=False,
                      weight_decay=1e-3, weight_decay_on="names", weight_decay_names=["features.0", "head.2"])
    trainer = Trainer(cfg)
    trainer._setup()
    decay, rest = trainer.optimizer.param_groups
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    assert sorted(names[id(p)] for p in decay["params"]) == [
        "features.0.alpha", "features.0.weight", "head.2.bias", "head.2.weight"]
    assert decay["weight_decay"] == 1e-3 and rest["weight_decay"] == 0.0


def test_config_lists_the_engines_choices():
    assert _CHOICES["lr_schedule"] == LR_SCHEDULES and _CHOICES["weight_decay_on"] == WEIGHT_DECAY_RULES
    cfg = TrainConfig.from_yaml(None, ["weight_decay_names=[conv, alpha]"])
    assert cfg.weight_decay_names == ["conv", "alpha"]  # a YAML list stays a list
    assert TrainConfig.from_yaml(None, ["weight_decay_names=fc"]).weight_decay_names == ["fc"]
    for bad in ("weight_decay_names=[]", "weight_decay_names=[conv, 3]", "lighting=pca"):
        with pytest.raises(ValueError):
            TrainConfig.from_yaml(None, [bad])


# -- the learning rate and tau per epoch -----------------------------------------------------------


def authors_lr_per_epoch(base_lr: float, epochs: int, warm_up: bool) -> list[float]:
    """The lr each epoch trains with in the authors' main.py (all three scripts), replayed with
    torch's own scheduler: the optimizer's groups carry initial_lr;
    CosineAnnealingLR(T_max = epochs - 4 * warm_up, eta_min = 0); before epoch e < 5 the warm-up
    overwrites every group's lr with base (e + 1) / 5; after training epoch e the scheduler steps if
    e >= 4 * warm_up."""
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [param], "initial_lr": base_lr}], lr=base_lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs - 4 * int(warm_up), eta_min=0)
    lrs = []
    for epoch in range(epochs):
        if warm_up and epoch < 5:
            for group in opt.param_groups:
                group["lr"] = base_lr * (epoch + 1) / 5
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        if epoch >= 4 * int(warm_up):
            sched.step()
    return lrs


@pytest.mark.parametrize("epochs", [20, 200, 256, 600])
def test_cosine_is_the_authors_lr_per_epoch(epochs):
    ours = [0.1 * lr_factor(e, epochs, 5) for e in range(epochs)]
    assert ours == pytest.approx(authors_lr_per_epoch(0.1, epochs, warm_up=True), rel=1e-9, abs=1e-15)
    # without --warm_up their cosine runs over all epochs from epoch 0
    ours = [0.1 * lr_factor(e, epochs, 0) for e in range(epochs)]
    assert ours == pytest.approx(authors_lr_per_epoch(0.1, epochs, warm_up=False), rel=1e-9, abs=1e-15)


def test_cosine_starts_at_the_last_warmup_epoch():
    # worked by hand for 20 epochs, 5 warm-up: cosine over 16 epochs starting at epoch 4
    assert lr_factor(4, 20, 5) == 1.0
    assert lr_factor(5, 20, 5) == pytest.approx(0.5 * (1 + math.cos(math.pi / 16)))
    assert lr_factor(19, 20, 5) == pytest.approx(0.5 * (1 + math.cos(math.pi * 15 / 16)))
    assert lr_factor(5, 20, 5, "cosine_after_warmup") == 1.0  # the old schedule: one epoch later


def authors_tau(epoch: int, epochs: int, tau_min: float = 0.85, tau_max: float = 0.99) -> float:
    """cpt_tau of their main.py: A e^(epoch / epochs) + B with A = (max - min) / (e - 1), B = min - A,
    set once per epoch before training it (they compute it in float32)."""
    a = (tau_max - tau_min) / (math.e - 1)
    return a * math.exp(epoch / epochs) + tau_min - a


# -- the recipes' settings, from each script's run.sh and utils/options.py -----------------------

_CIFAR = dict(dataset="cifar10", epochs=600, batch_size=256, optimizer="sgd", lr=0.1, momentum=0.9,
              weight_decay=5e-4, weight_decay_on="all")
_IMAGENET = dict(dataset="imagenet", epochs=200, batch_size=512, optimizer="sgd", lr=0.1, momentum=0.9,
                 weight_decay=1e-4, weight_decay_on="names", weight_decay_names=["conv", "fc"], lighting="uint8")
# imagenet_two-stage/run.sh (stage 2; the authors publish no stage-1 command: recu's stage 1 uses the same)
_TWO_STAGE = dict(dataset="imagenet", epochs=256, batch_size=512, optimizer="adam", lr=1e-3, weight_decay=0.0,
                  weight_decay_on="names", weight_decay_names=["conv", "fc"], lighting="uint8")
AUTHORS_SETTINGS = {
    "cifar10_resnet20.yaml": _CIFAR, "cifar10_resnet18.yaml": _CIFAR, "cifar10_vgg_small.yaml": _CIFAR,
    "imagenet_resnet18.yaml": _IMAGENET, "imagenet_resnet34.yaml": _IMAGENET,
    "imagenet_reactnet_stage1.yaml": _TWO_STAGE, "imagenet_reactnet_stage2.yaml": _TWO_STAGE,
}


@pytest.mark.parametrize("recipe", sorted(AUTHORS_SETTINGS))
def test_paper_recipe_settings_are_the_authors(recipe):
    cfg = TrainConfig.from_yaml(CONFIGS / recipe)
    for key, value in AUTHORS_SETTINGS[recipe].items():
        assert getattr(cfg, key) == value, f"{recipe}: {key} is {getattr(cfg, key)!r}, the authors use {value!r}"
    # every script: --warm_up (5 epochs), --lr_type cos, plain cross-entropy or soft-label distillation,
    # tau 0.85 -> 0.99 set per epoch, the data augmented
    assert (cfg.warmup_epochs, cfg.lr_schedule, cfg.label_smoothing) == (5, "cosine", 0.0)
    assert (cfg.tau_schedule, cfg.tau_per_step, cfg.tau_switch_off, cfg.augment) == ("exponential", False, None, True)
    schedule = create_schedule(cfg.tau_schedule, tau_start=cfg.tau_start, tau_end=cfg.tau_end, epochs=cfg.epochs)
    for epoch in (0, 1, cfg.epochs // 2, cfg.epochs - 1):
        assert schedule.value(epoch) == pytest.approx(authors_tau(epoch, cfg.epochs), abs=1e-6)


def test_trainer_passes_the_lighting_mode_to_the_data(tmp_path, monkeypatch):
    import recu.data

    seen = {}

    class Stop(Exception):
        pass

    def fake_build_loaders(*args, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(recu.data, "build_loaders", fake_build_loaders)
    cfg = TrainConfig(dataset="imagenet", out_dir=str(tmp_path), device="cpu", lighting="float")
    with pytest.raises(Stop):
        Trainer(cfg)._setup()
    assert seen["lighting"] == "float"
