"""Your own data and your own model: configs/folder.yaml on a 10-class image folder, end to end.

recu train (registry model, and a user's package.module:factory found in the current folder), exact
resume, recu eval per class name, recu export with class names, recu bench, and a bad folder's one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("PIL")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _image_folders import PROBLEMS, break_folder, write_image_folder  # noqa: E402

from recu.cli import main  # noqa: E402
from recu.train import TrainConfig, load_checkpoint, train  # noqa: E402

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "folder.yaml"
CLASSES = 10
FAST = ["image_size=28", "epochs=5", "batch_size=16", "eval_batch_size=100", "warmup_epochs=0", "workers=0",
        "device=cpu", "progress=false"]
USER_MODULE = "recu_test_folder_models"
USER_SOURCE = '''
from torch import nn


def make(num_classes, in_channels=3, width=32):
    w2 = 2 * width
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.Hardtanh(),
        nn.Conv2d(width, w2, 3, padding=1, bias=False), nn.BatchNorm2d(w2), nn.Hardtanh(), nn.MaxPool2d(2),
        nn.Conv2d(w2, w2, 3, padding=1, bias=False), nn.BatchNorm2d(w2), nn.Hardtanh(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(w2, num_classes))
'''


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("images")
    return root, write_image_folder(root, classes=CLASSES, train=20, val=6, size=12)


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The user's factory in ``tmp_path`` (the current folder), importable in this process too."""
    (tmp_path / f"{USER_MODULE}.py").write_text(USER_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, USER_MODULE, raising=False)
    return tmp_path


def _sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_registry_model_trains_on_the_folder_evaluates_per_class_and_exports_names(
        images: tuple[Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data, names = images
    run = tmp_path / "runs" / "folder"
    assert main(["train", "-c", str(CONFIG), *_sets(f"data_dir={data}", "model=resnet20_1w1a", *FAST,
                                                   f"out_dir={tmp_path / 'runs'}")]) == 0
    records = _metrics(run)
    assert len(records) == 5 and records[-1]["test_top1"] >= 40  # 10 classes: chance is 10%
    state = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    assert state["class_names"] == names and len(state["config"]["mean"]) == 3  # measured, then recorded
    capsys.readouterr()

    assert main(["eval", str(run / "last.pt"), "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["top1"] == pytest.approx(records[-1]["test_top1"])
    assert list(result["per_class"]) == names and all(v["images"] == 6 for v in result["per_class"].values())
    assert sum(v["top1"] for v in result["per_class"].values()) / CLASSES == pytest.approx(result["top1"])

    deployed = tmp_path / "model.recu"
    assert main(["export", str(run / "last.pt"), "-o", str(deployed)]) == 0
    from recu.deploy import load
    from recu.train import model_from_checkpoint

    packed = load(deployed)
    assert packed.class_names == names
    pre = packed.metadata["preprocessing"]
    assert pre["image_size"] == 28 and pre["mean"] == state["config"]["mean"]
    x = torch.randn(4, 3, 28, 28)
    reference = model_from_checkpoint(state).eval()(x)
    assert torch.equal(torch.as_tensor(packed(x.numpy())).argmax(1), reference.argmax(1))


def test_a_users_factory_in_the_current_folder_trains_from_the_command_line(
        images: tuple[Path, list[str]], user_module: Path, capsys: pytest.CaptureFixture) -> None:
    data, names = images
    recu = Path(sys.executable).parent / "recu"  # the console script: it does not put the cwd on sys.path
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [str(recu), "train", "-c", str(CONFIG), *_sets(f"data_dir={data}", f"model={USER_MODULE}:make",
                                                               *FAST, "out_dir=runs")]
    done = subprocess.run(command, cwd=user_module, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    run = user_module / "runs" / "folder"
    records = _metrics(run)
    assert records[-1]["test_top1"] >= 50
    taus = [r["tau"] for r in records]
    assert taus == sorted(taus) and taus[0] == pytest.approx(0.85)  # the tau schedule runs
    assert all("dead_weight" in r["monitor"] for r in records)  # and the dead-weight monitor
    spec = load_checkpoint(run / "last.pt")["model_spec"]
    assert spec["name"] == f"{USER_MODULE}:make" and spec["kwargs"] == {"in_channels": 3}
    assert spec["binarize"]["keep_first_last"] is True and "config" in spec

    deployed = user_module / "user.recu"
    assert main(["export", str(run / "last.pt"), "-o", str(deployed)]) == 0
    assert "2 packed binary layers" in capsys.readouterr().out
    assert main(["bench", str(deployed), "--no-compile", "--repeat", "1", "--batch", "1"]) == 0
    out = capsys.readouterr().out
    assert f"{USER_MODULE}:make (full precision) eager" in out  # the factory's model, not binarised
    assert main(["eval", str(run / "best.pt"), "--device", "cpu"]) == 0
    assert list(json.loads(capsys.readouterr().out)["per_class"]) == names


def test_a_users_model_resumes_exactly(images: tuple[Path, list[str]], user_module: Path) -> None:
    data, _ = images

    def cfg(name: str) -> TrainConfig:
        return TrainConfig.from_yaml(CONFIG, [f"data_dir={data}", f"model={USER_MODULE}:make", *FAST,
                                              "epochs=3", f"out_dir={user_module / 'runs'}", f"name={name}"])

    straight = train(cfg("straight"))
    train(cfg("split"), stop_after=1)
    resumed = train(cfg("split"), resume=True)
    assert resumed["final_top1"] == straight["final_top1"]
    a, b = (load_checkpoint(user_module / "runs" / n / "last.pt")["model"] for n in ("straight", "split"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("problem", PROBLEMS)
def test_a_bad_folder_ends_recu_train_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                    problem: str) -> None:
    data = tmp_path / "data"
    write_image_folder(data, classes=3, train=4, val=2)
    break_folder(data, problem)
    code = main(["train", "-c", str(CONFIG), *_sets(f"data_dir={data}", *FAST, "batch_size=4",
                                                   f"out_dir={tmp_path / 'runs'}")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and err.startswith("recu train: error: ")
    assert str(data) in err


def test_folder_keys_belong_to_folder_data_sets() -> None:
    with pytest.raises(ValueError, match="image_size apply to dataset: folder only"):
        TrainConfig.from_yaml(None, ["dataset=cifar10", "image_size=28"])
    cfg = TrainConfig.from_yaml(CONFIG, ["data_dir=/x", "in_channels=1", "mean=[0.5]", "std=[0.25]"])
    options = cfg.folder_options()
    assert options.in_channels == 1 and options.mean == (0.5,) and options.image_size == 32
    assert np.isclose(options.std[0], 0.25)
