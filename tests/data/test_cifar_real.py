"""Integration tests on the real CIFAR-10 (set RECU_CIFAR10_DIR; skipped otherwise)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from recu.data import build_loaders
from recu.data.cifar import CIFAR10, cifar_classes, load_cifar, md5sum, resolve_cifar_dir

pytestmark = pytest.mark.cifar


@pytest.fixture(scope="module")
def cifar_dir() -> Path:
    root = os.environ.get("RECU_CIFAR10_DIR")
    if not root:
        pytest.skip("RECU_CIFAR10_DIR is not set: point it at cifar-10-batches-py to run the real-data tests")
    return resolve_cifar_dir(root)


def test_files_are_the_original_release(cifar_dir):
    for name, expected in CIFAR10.md5.items():
        assert md5sum(cifar_dir / name) == expected, name


def test_shapes_and_label_counts(cifar_dir):
    x, y = load_cifar(cifar_dir)
    assert x.shape == (50000, 3, 32, 32) and x.dtype == torch.uint8
    assert torch.equal(torch.bincount(y, minlength=10), torch.full((10,), 5000))
    xt, yt = load_cifar(cifar_dir, train=False)
    assert xt.shape == (10000, 3, 32, 32)
    assert torch.equal(torch.bincount(yt, minlength=10), torch.full((10,), 1000))
    assert cifar_classes(cifar_dir)[:3] == ["airplane", "automobile", "bird"]
    # real photographs: roughly the usual channel means (0.491, 0.482, 0.447)
    means = x[:5000].double().mean(dim=(0, 2, 3)) / 255
    assert torch.allclose(means, torch.tensor([0.491, 0.482, 0.447], dtype=torch.float64), atol=0.01)


def test_loaders_on_real_data(cifar_dir):
    bundle = build_loaders("cifar10", str(cifar_dir), 256, 1000, "cpu", seed=0)
    assert len(bundle.train) == 195 and bundle.train.num_samples == 49920
    assert len(bundle.test) == 10 and bundle.test.num_samples == 10000
    x, y = next(iter(bundle.test))
    assert x.shape == (1000, 3, 32, 32)
    # normalised with the ImageNet statistics: roughly centred, unit-ish spread
    assert abs(float(x.mean())) < 0.3 and 0.8 < float(x.std()) < 1.5
    halves = [build_loaders("cifar10", str(cifar_dir), 256, 1000, "cpu", seed=0, rank=r, world_size=2).train
              for r in (0, 1)]
    single = iter(bundle.train)
    parts = [iter(h) for h in halves]
    for _ in range(2):
        xs, ys = next(single)
        (x0, y0), (x1, y1) = next(parts[0]), next(parts[1])
        assert torch.equal(torch.cat([x0, x1]), xs) and torch.equal(torch.cat([y0, y1]), ys)
