"""``teacher:`` files: a recu checkpoint, or torchvision's bare ResNet-34 state dict; anything else a one-line error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from _torchvision_resnet import ResNet as ReferenceResNet
from recu.models import create
from recu.train.teacher import load_teacher


def test_torchvision_state_dict_file_loads_as_resnet34(tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = ReferenceResNet((3, 4, 6, 3), num_classes=1000).eval()
    path = tmp_path / "resnet34-b627a593.pth"
    torch.save(reference.state_dict(), path)  # how torchvision's weights are distributed
    teacher = load_teacher(path).eval()
    assert teacher.recu_spec["name"] == "resnet34_torchvision"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(teacher(x), reference(x), rtol=1e-5, atol=1e-5)


def test_recu_checkpoint_still_loads(tmp_path: Path) -> None:
    model = create("resnet20_fp", 10)
    path = tmp_path / "best.pt"
    torch.save({"model": model.state_dict(), "model_spec": model.recu_spec, "epoch": 0}, path)
    teacher = load_teacher(path)
    assert teacher.recu_spec["name"] == "resnet20_fp"
    assert all(torch.equal(a, b) for a, b in zip(teacher.state_dict().values(), model.state_dict().values()))


def test_other_files_are_one_line_errors(tmp_path: Path) -> None:
    noise = tmp_path / "noise.bin"
    noise.write_bytes(bytes(range(256)) * 4)
    text = tmp_path / "teacher.txt"
    text.write_text("resnet34\n")
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    binary_resnet = tmp_path / "binary.pt"  # has conv1/layer1/fc keys, but not torchvision's layout
    torch.save(create("resnet34_1w1a_imagenet", 1000).state_dict(), binary_resnet)
    pickled_code = tmp_path / "code.pt"
    torch.save({"fc.weight": torch.zeros(2, 2), "fn": Path("x")}, pickled_code)  # needs weights_only=False
    for path, message in [(noise, "not a readable PyTorch file"), (text, "not a readable PyTorch file"),
                          (other, "neither a recu checkpoint"), (binary_resnet, "not a torchvision"),
                          (pickled_code, "not a readable PyTorch file: the weights-only unpickler refused it")]:
        with pytest.raises(ValueError, match=message) as err:
            load_teacher(path)
        assert "\n" not in str(err.value) and str(path) in str(err.value)
        assert "weights_only=False" not in str(err.value)  # never advise running the file's code
    with pytest.raises(FileNotFoundError):
        load_teacher(tmp_path / "missing.pth")


def test_recipe_trains_with_a_torchvision_teacher_file(tmp_path: Path) -> None:
    # The engine's teacher: is load_teacher: a torchvision-layout ResNet-18 file (1 input channel for
    # the 8x8 digits) distils a binary CNN for one epoch.
    from recu.train import TrainConfig
    from recu.train.engine import Trainer

    teacher_file = tmp_path / "teacher.pth"
    torch.save(create("resnet18_torchvision", 10, in_channels=1).state_dict(), teacher_file)
    cfg = TrainConfig.from_yaml(None, [
        "model=digits_cnn_1w1a", "dataset=digits", "batch_size=64", "eval_batch_size=500", "epochs=1",
        "warmup_epochs=0", "device=cpu", "progress=false", "monitor=false", f"teacher={teacher_file}",
        f"out_dir={tmp_path}", "name=kd"])
    trainer = Trainer(cfg)
    result = trainer.fit()
    assert trainer.teacher.recu_spec["name"] == "resnet18_torchvision" and not trainer.teacher.training
    assert result["last_epoch"] == 1
