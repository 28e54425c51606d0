"""The tiny digits run the engine tests share, and how they compare checkpoints."""

from __future__ import annotations

from pathlib import Path

import torch

from recu.train import TrainConfig, load_checkpoint

# digits_cnn on scikit-learn's 8x8 digits: 1437 training images, 22 steps of 64, seconds per epoch
TINY_BASE = ["model=digits_cnn_1w1a", "dataset=digits", "batch_size=64", "eval_batch_size=500", "warmup_epochs=1",
             "device=cpu", "progress=false"]


def tiny_config(tmp_path: Path, name: str, base: list[str], *extra: str) -> TrainConfig:
    return TrainConfig.from_yaml(None, base + [f"out_dir={tmp_path}", f"name={name}", *extra])


def checkpoint_weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
