"""InMemoryLoader: the seeded epoch stream, DDP slicing, drop-last, evaluation order."""

from __future__ import annotations

import pytest
import torch

from recu.data.augment import IMAGENET_MEAN, IMAGENET_STD, crop_flip, normalize
from recu.data.loader import InMemoryLoader

N = 100


def data(n: int = N):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(n) % 10


def make(batch=16, train=True, **kw):
    x, y = data()
    kw.setdefault("seed", 5)
    return InMemoryLoader(x, y, batch, "cpu", train=train, mean=IMAGENET_MEAN, std=IMAGENET_STD, **kw)


def epoch(loader, e):
    loader.set_epoch(e)
    return list(loader)


def test_lengths_and_drop_last():
    tr = make(batch=16)
    assert len(tr) == 6 and tr.num_samples == 96 and tr.dataset_size == 100
    xs = epoch(tr, 0)
    assert len(xs) == 6 and all(x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 for x, _ in xs)
    assert all(y.dtype == torch.int64 for _, y in xs)
    labels = torch.cat([y for _, y in xs])
    assert labels.numel() == 96
    te = make(batch=16, train=False, rank=1, world_size=2)  # evaluation ignores sharding
    ys = [y for _, y in te]
    assert len(te) == 7 and te.num_samples == 100 and [len(y) for y in ys][-1] == 4
    assert torch.equal(torch.cat(ys), data()[1])


def test_every_sample_once_per_epoch_without_drop():
    tr = make(batch=20, augment=False)
    order, _, _ = tr.epoch_plan(0)
    assert sorted(order.tolist()) == list(range(N))
    x, y = data()
    got = torch.cat([xb for xb, _ in epoch(tr, 0)])
    assert torch.equal(got, normalize(x[order], IMAGENET_MEAN, IMAGENET_STD))


def test_augmentation_follows_the_epoch_plan():
    tr = make(batch=10)
    order, offsets, flips = tr.epoch_plan(2)
    assert offsets.min() >= 0 and offsets.max() <= 8 and flips.any() and not flips.all()
    x, _ = data()
    expected = normalize(crop_flip(x[order[:10]], offsets[:10], flips[:10], 4), IMAGENET_MEAN, IMAGENET_STD)
    assert torch.equal(epoch(tr, 2)[0][0], expected)


def test_deterministic_per_seed_and_epoch():
    a, b = make(), make()
    ea = epoch(a, 3)
    epoch(b, 1)  # iterating another epoch first must not matter
    eb = epoch(b, 3)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(ea, eb))
    assert not torch.equal(epoch(a, 4)[0][0], ea[0][0])
    assert not torch.equal(epoch(make(seed=6), 3)[0][0], ea[0][0])


@pytest.mark.parametrize("world_size", [2, 4])
def test_ranks_together_see_exactly_the_single_process_batches(world_size):
    single = make(batch=16)
    ranks = [make(batch=16, rank=r, world_size=world_size) for r in range(world_size)]
    assert all(len(r) == len(single) and r.num_samples == single.num_samples // world_size for r in ranks)
    for e in (0, 1):
        ref = epoch(single, e)
        parts = [epoch(r, e) for r in ranks]
        for step, (x, y) in enumerate(ref):
            # rank r holds the r-th contiguous slice of the global batch, bit for bit
            assert torch.equal(torch.cat([p[step][0] for p in parts]), x)
            assert torch.equal(torch.cat([p[step][1] for p in parts]), y)


def test_bad_arguments():
    with pytest.raises(ValueError, match="divisible"):
        make(batch=10, rank=0, world_size=3)
    with pytest.raises(ValueError, match="exceeds"):
        make(batch=128)
    with pytest.raises(ValueError, match="rank"):
        make(rank=2, world_size=2)
    with pytest.raises(ValueError, match="epoch"):
        make().set_epoch(-1)
    with pytest.raises(ValueError, match="labels"):
        InMemoryLoader(torch.zeros(4, 3, 2, 2), torch.zeros(3), 2, "cpu", train=True, mean=(0,) * 3, std=(1,) * 3)
