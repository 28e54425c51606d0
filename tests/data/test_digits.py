"""The scikit-learn digits quick-start data set."""

from __future__ import annotations

import torch

from recu.data import build_loaders
from recu.data.augment import crop_flip
from recu.data.digits import load_digits


def test_fixed_split():
    x, y = load_digits(train=True)
    xt, yt = load_digits(train=False)
    assert x.shape == (1437, 1, 8, 8) and xt.shape == (360, 1, 8, 8)
    assert x.dtype == torch.uint8 and int(x.max()) == 16 and int(x.min()) == 0
    assert set(y.tolist()) == set(range(10)) and set(yt.tolist()) == set(range(10))
    # disjoint and the same every call
    train_rows = {tuple(r) for r in x.reshape(len(x), -1).tolist()}
    assert torch.equal(load_digits(train=False)[0], xt)
    assert sum(tuple(r) in train_rows for r in xt.reshape(len(xt), -1).tolist()) < 10  # a few exact duplicates exist


def test_loaders():
    b = build_loaders("digits", None, 64, 100, "cpu", seed=0, augment=False)
    assert b.num_classes == 10 and b.input_size == (1, 8, 8)
    assert len(b.train) == 1437 // 64 and b.test.num_samples == 360
    x = torch.cat([xb for xb, _ in b.train])
    # normalised with the training statistics
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1) < 0.05


def test_shift_augmentation_is_a_one_pixel_shift_without_flip():
    b = build_loaders("digits", None, 32, 100, "cpu", seed=3)
    loader = b.train
    order, offsets, flips = loader.epoch_plan(0)
    assert not flips.any() and offsets.max() == 2
    x, y = next(iter(loader))
    raw = loader.images[order[:32]]
    expected = crop_flip(raw, offsets[:32], flips[:32], 1)
    assert torch.allclose(x, (expected.float() / 16 - loader.mean[0]) / loader.std[0], atol=1e-5)
    assert torch.equal(y, loader.labels[order[:32]])
