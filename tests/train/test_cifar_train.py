"""Integration: the paper's ResNet-20 trains on real CIFAR-10 through the whole engine."""

import os

import pytest

from recu.train import TrainConfig, train

pytestmark = pytest.mark.cifar


@pytest.fixture
def cifar_dir():
    path = os.environ.get("RECU_CIFAR10_DIR")
    if not path:
        pytest.skip("set RECU_CIFAR10_DIR to the cifar-10-batches-py folder to run the CIFAR-10 tests")
    return path


def test_resnet20_recu_learns_on_a_cifar10_subset(tmp_path, cifar_dir):
    cfg = TrainConfig.from_yaml("configs/cifar10_resnet20_short.yaml" if os.path.exists(
        "configs/cifar10_resnet20_short.yaml") else None, [
        f"data_dir={cifar_dir}", f"out_dir={tmp_path}", "name=r20", "subset=1024", "epochs=4",
        "warmup_epochs=0", "eval_every=4", "compile=false", "progress=false", "batch_size=128",
        "eval_batch_size=1000", "device=cpu",
    ])
    result = train(cfg)
    records = [line for line in (tmp_path / "r20" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 4
    import json

    first, last = json.loads(records[0]), json.loads(records[-1])
    assert last["train_loss"] < first["train_loss"] - 0.1
    assert [json.loads(r)["tau"] for r in records] == pytest.approx(
        [0.85 + 0.14 * (2.718281828 ** (e / 4) - 1) / 1.718281828 for e in range(4)], abs=1e-6)
    # 10,000 test images, 10 classes: 1,024 training images for 4 epochs already beat chance clearly
    assert result["final_top1"] > 18.0
    assert "dead_weight" in last["monitor"]
