"""model: package.module:factory - a user's own model, binarised and rebuildable from its spec."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from recu.convert import binary_layers
from recu.models import create, from_spec
from recu.models.registry import takes_in_channels
from recu.nn import ReCUConv2d
from recu.train import TrainConfig
from recu.train.engine import build_model

MODULE = "recu_test_user_factories"
SOURCE = '''
from torch import nn


def small_cnn(num_classes, in_channels=3, width=8):
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.Hardtanh(),
        nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.Hardtanh(),
        nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.Hardtanh(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))


def no_channels(num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 12), nn.Hardtanh(), nn.Linear(12, num_classes))


def not_a_model(num_classes):
    return "a string"


from os import system  # a builtin re-exported: a file must not reach it through this module
'''


@pytest.fixture(autouse=True)
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / f"{MODULE}.py").write_text(SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, MODULE, raising=False)


def test_a_factory_is_called_binarised_and_rebuilt_from_its_json_spec() -> None:
    model = create(f"{MODULE}:small_cnn", num_classes=5, kwargs={"in_channels": 1},
                   binarize={"skip": ["3"], "tau": 0.9})
    # first conv and last linear stay full precision (keep_first_last), layer 3 by skip: one ReCU conv
    assert [name for name, _ in binary_layers(model)] == ["6"]
    assert isinstance(model[6], ReCUConv2d) and float(model[6].tau) == pytest.approx(0.9)
    spec = json.loads(json.dumps(model.recu_spec))  # plain JSON, as checkpoints and exports store it
    assert spec["name"] == f"{MODULE}:small_cnn" and spec["num_classes"] == 5 and spec["kwargs"] == {"in_channels": 1}
    assert spec["binarize"]["skip"] == ["3"] and spec["config"]["clamp"] == "clamp"
    rebuilt = from_spec(spec)
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(2, 1, 6, 6)
    assert torch.equal(rebuilt.eval()(x), model.eval()(x))


def test_binarize_can_be_switched_off_and_checks_its_keys() -> None:
    plain = create(f"{MODULE}:small_cnn", num_classes=3, binarize={"enabled": False})
    assert not binary_layers(plain) and "config" not in plain.recu_spec
    with pytest.raises(ValueError, match=r"unknown binarize keys \['keep_last'\]"):
        create(f"{MODULE}:small_cnn", num_classes=3, binarize={"keep_last": True})


def test_the_engine_passes_in_channels_only_to_a_factory_that_names_it() -> None:
    assert takes_in_channels(f"{MODULE}:small_cnn") and not takes_in_channels(f"{MODULE}:no_channels")
    cfg = TrainConfig.from_yaml(None, [f"model={MODULE}:small_cnn", "dataset=folder", "binarize.preset=balanced"])
    model = build_model(cfg, 4, in_channels=1)
    assert model[0].in_channels == 1 and model.recu_spec["kwargs"] == {"in_channels": 1}
    assert model.recu_spec["config"]["clamp"] == "none"  # the balanced preset: no ReCU clamp
    other = build_model(TrainConfig.from_yaml(None, [f"model={MODULE}:no_channels"]), 4, in_channels=3)
    assert other.recu_spec["kwargs"] == {}


@pytest.mark.parametrize("path, message", [
    ("no_such_module_xyz:make", "cannot import module 'no_such_module_xyz'"),
    (f"{MODULE}:missing", f"module '{MODULE}' has no 'missing'"),
    (f"{MODULE}:not_a_model", "returned a str, not an nn.Module"),
    (f"{MODULE}:", "must look like package.module:factory"),
    # a checkpoint names its factory: nothing of the standard library, nothing defined elsewhere
    ("os:system", "'os' is a standard-library module"),
    ("subprocess:run", "'subprocess' is a standard-library module"),
    (f"{MODULE}:system", "'system' is defined in 'posix'"),
])
def test_a_bad_factory_path_is_one_clear_line(path: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        create(path, num_classes=3)
    assert "\n" not in str(info.value)


def test_a_factory_whose_signature_does_not_fit_says_so() -> None:
    with pytest.raises(ValueError, match="could not be built with num_classes=3, depth=2"):
        create(f"{MODULE}:small_cnn", num_classes=3, depth=2)


def test_binarize_belongs_to_user_models_only() -> None:
    with pytest.raises(ValueError, match="binarize applies to a user model"):
        TrainConfig.from_yaml(None, ["model=resnet20_1w1a", "binarize.tau=0.9"])
    with pytest.raises(ValueError, match="pretrained weights ship only for registry models"):
        create(f"{MODULE}:small_cnn", num_classes=3, pretrained=True)


def test_a_registry_model_is_unchanged() -> None:
    model = create("resnet20_1w1a")
    assert "binarize" not in model.recu_spec and isinstance(model, nn.Module)
