"""Shared test setup: deterministic seeds, one CPU thread (the test machine is shared)."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def cifar_dir() -> str:
    """Real CIFAR-10 (cifar-10-batches-py), found through RECU_CIFAR10_DIR; the test skips without it."""
    import os

    path = os.environ.get("RECU_CIFAR10_DIR")
    if not path:
        pytest.skip("set RECU_CIFAR10_DIR to the cifar-10-batches-py folder to run the CIFAR-10 tests")
    return path


@pytest.fixture(scope="session")
def trained_resnet20(cifar_dir: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A ResNet-20 1W1A trained by ``recu train`` on a 1,024-image CIFAR-10 subset for 4 epochs
    (about a minute): the run's result, with ``run_dir`` holding metrics.jsonl and last.pt."""
    from pathlib import Path

    from recu.train import TrainConfig, train

    root = Path(__file__).resolve().parents[1]
    out = tmp_path_factory.mktemp("cifar_runs")
    cfg = TrainConfig.from_yaml(root / "configs" / "cifar10_resnet20_short.yaml", [
        f"data_dir={cifar_dir}", f"out_dir={out}", "name=r20", "subset=1024", "epochs=4",
        "warmup_epochs=0", "eval_every=4", "compile=false", "progress=false", "batch_size=128",
        "eval_batch_size=1000", "device=cpu",
    ])
    return train(cfg)
