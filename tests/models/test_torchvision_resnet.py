"""recu's torchvision-layout ResNet-18/34: torchvision's state-dict keys and forward, without torchvision.

The reference is ``tests/_torchvision_resnet.py``, a separate torchvision-style ResNet written for the tests.
"""

from __future__ import annotations

import pytest
import torch

from _torchvision_resnet import ResNet as ReferenceResNet
from recu.models import create, from_torchvision_state_dict


@pytest.mark.parametrize("name,depths", [("resnet18_torchvision", (2, 2, 2, 2)),
                                         ("resnet34_torchvision", (3, 4, 6, 3))])
def test_keys_shapes_and_outputs_match_the_reference(name: str, depths: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    reference = ReferenceResNet(depths, num_classes=1000)
    with torch.no_grad():  # non-trivial BN so that a misplaced BN or ReLU shows
        for m in reference.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    model = create(name, num_classes=1000)
    ref_state = reference.state_dict()
    assert list(model.state_dict()) == list(ref_state)
    assert all(model.state_dict()[k].shape == v.shape for k, v in ref_state.items())
    model.load_state_dict(ref_state)
    x = torch.randn(2, 3, 64, 64)
    for training in (False, True):
        model.train(training)
        reference.train(training)
        with torch.no_grad():
            torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-5)


def test_resnet34_has_torchvisions_key_set() -> None:
    # facts of torchvision's resnet34 state dict: 218 entries, stage depths 3/4/6/3, fc with bias
    state = create("resnet34_torchvision", 1000).state_dict()
    assert len(state) == 218
    assert {"conv1.weight", "bn1.num_batches_tracked", "layer2.0.downsample.0.weight",
            "layer2.0.downsample.1.running_var", "layer3.5.bn2.weight", "layer4.2.conv2.weight",
            "fc.weight", "fc.bias"} <= set(state)
    assert "layer3.6.conv1.weight" not in state and "layer1.0.downsample.0.weight" not in state


def test_from_state_dict_infers_depth_classes_and_tolerates_old_files() -> None:
    torch.manual_seed(1)
    reference = ReferenceResNet((3, 4, 6, 3), num_classes=7)
    # torchvision's original ResNet weights predate num_batches_tracked
    old = {k: v for k, v in reference.state_dict().items() if not k.endswith("num_batches_tracked")}
    model = from_torchvision_state_dict(old).eval()
    assert model.recu_spec == {"name": "resnet34_torchvision", "num_classes": 7, "kwargs": {"in_channels": 3}}
    assert model.fc.out_features == 7
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference.eval()(x), rtol=1e-5, atol=1e-5)
    assert from_torchvision_state_dict(ReferenceResNet((2, 2, 2, 2)).state_dict()).recu_spec["name"] == \
        "resnet18_torchvision"


def test_from_state_dict_rejects_other_layouts() -> None:
    recu_state = create("resnet34_1w1a_imagenet", 1000).state_dict()  # has conv1/layer1/fc keys too
    with pytest.raises(ValueError, match="not a torchvision"):
        from_torchvision_state_dict(recu_state)
    authors_like = {k.replace("layers.0.", "layer1."): v for k, v in recu_state.items()}
    with pytest.raises(ValueError, match="not a torchvision"):
        from_torchvision_state_dict(authors_like)
    reference = ReferenceResNet((3, 4, 6, 3)).state_dict()
    reference.pop("layer4.2.bn2.weight")
    with pytest.raises(ValueError, match="missing .*layer4.2.bn2.weight"):
        from_torchvision_state_dict(reference)
