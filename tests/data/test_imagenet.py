"""ImageNet-style folders on a tiny generated tree (3 classes x 4 images of random sizes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

from recu.data import build_loaders, build_test_loader  # noqa: E402
from recu.data.augment import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from recu.data.imagenet import (  # noqa: E402
    LIGHTING_EIGVAL,
    LIGHTING_EIGVEC,
    ImageFolderDataset,
    ImageFolderLoader,
    lighting_offset,
    random_resized_crop_box,
    scan_class_folders,
)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    for split, n in [("train", 4), ("val", 2)]:
        for c in ["n01", "n02", "n03"]:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                h, w = rng.integers(60, 300, 2)
                img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
                ext = ".JPEG" if i % 2 == 0 else ".png"
                img.save(root / split / c / f"img{i}{ext}")
    (root / "train" / "n01" / "notes.txt").write_text("not an image")
    return root


def test_scan(tree):
    samples, classes = scan_class_folders(tree / "train")
    assert classes == ["n01", "n02", "n03"] and len(samples) == 12
    assert [label for _, label in samples] == [0] * 4 + [1] * 4 + [2] * 4
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan_class_folders(tree / "missing")


def test_random_resized_crop_box_stays_inside():
    rng = np.random.default_rng(0)
    for width, height in [(500, 375), (60, 300), (1000, 50), (224, 224)]:
        for _ in range(200):
            left, top, w, h = random_resized_crop_box(width, height, rng)
            assert 0 <= left and left + w <= width and 0 <= top and top + h <= height and w > 0 and h > 0
    # a 10:1 strip cannot fit an allowed ratio window of the sampled area often; the fallback is centred
    boxes = {random_resized_crop_box(1000, 10, np.random.default_rng(s), scale=(0.9, 1.0)) for s in range(5)}
    assert boxes == {((1000 - 13) // 2, 0, 13, 10)}


def test_lighting_offset_is_the_alexnet_pca_shift():
    rng, ref = np.random.default_rng(4), np.random.default_rng(4)
    alpha = ref.normal(0.0, 0.1, 3)
    expected = [sum(LIGHTING_EIGVEC[i][j] * alpha[j] * LIGHTING_EIGVAL[j] for j in range(3)) for i in range(3)]
    assert np.allclose(lighting_offset(rng, 0.1), expected)
    assert not lighting_offset(rng, 0.0).any()


def test_eval_transform_resizes_shorter_side_and_centre_crops(tmp_path):
    # a 300x600 (h x w) image whose left half is black and right half white:
    # resize to 256x512, centre crop 224 -> columns 144..367, the edge at column 256 -> 112 in the crop
    arr = np.zeros((300, 600, 3), dtype=np.uint8)
    arr[:, 300:] = 255
    Image.fromarray(arr).save(tmp_path / "a.png")
    x, label, light = ImageFolderDataset([(str(tmp_path / "a.png"), 7)], train=False)[0]
    assert x.shape == (3, 224, 224) and x.dtype == torch.uint8 and label == 7 and not light.any()
    assert torch.all(x[:, :, :110] == 0) and torch.all(x[:, :, 114:] == 255)


def test_train_items_depend_only_on_their_seed(tree):
    samples, _ = scan_class_folders(tree / "train")
    ds = ImageFolderDataset(samples, train=True)
    a, b, c = ds[(3, 123)], ds[(3, 123)], ds[(3, 124)]
    assert a[0].shape == (3, 224, 224) and a[1] == 0
    assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2]) and not torch.equal(a[0], c[0])
    with pytest.raises(TypeError, match="sample_seed"):
        ds[3]


def test_unreadable_image_is_named(tmp_path):
    bad = tmp_path / "broken.JPEG"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(RuntimeError, match="broken.JPEG"):
        ImageFolderDataset([(str(bad), 0)], train=False)[0]


def batches(loader, epoch):
    loader.set_epoch(epoch)
    return list(loader)


def test_loader_workers_and_ranks_agree(tree):
    samples, _ = scan_class_folders(tree / "train")
    ds = ImageFolderDataset(samples, train=True)
    single = ImageFolderLoader(ds, 4, "cpu", seed=1, workers=0)
    assert len(single) == 3 and single.num_samples == 12
    ref = batches(single, 2)
    assert all(x.shape == (4, 3, 224, 224) and x.dtype == torch.float32 and y.dtype == torch.int64 for x, y in ref)
    assert sorted(torch.cat([y for _, y in ref]).tolist()) == [0] * 4 + [1] * 4 + [2] * 4
    # two worker processes: the same batches, bit for bit
    multi = batches(ImageFolderLoader(ds, 4, "cpu", seed=1, workers=2), 2)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(ref, multi))
    # two ranks: each holds its half of every global batch
    halves = [batches(ImageFolderLoader(ds, 4, "cpu", seed=1, rank=r, world_size=2, workers=0), 2) for r in (0, 1)]
    for step, (x, y) in enumerate(ref):
        assert torch.equal(torch.cat([halves[0][step][0], halves[1][step][0]]), x)
        assert torch.equal(torch.cat([halves[0][step][1], halves[1][step][1]]), y)
    assert not torch.equal(batches(single, 3)[0][0], ref[0][0])


def test_training_batches_add_lighting_then_normalise(tree):
    samples, _ = scan_class_folders(tree / "train")
    ds = ImageFolderDataset(samples, train=True)
    loader = ImageFolderLoader(ds, 4, "cpu", seed=2, workers=0)
    loader.set_epoch(1)
    keys = next(iter(loader.sampler))
    x, y = next(iter(loader))
    items = [ds[k] for k in keys]
    raw = torch.stack([i[0] for i in items]).float() / 255
    light = torch.stack([i[2] for i in items]).view(4, 3, 1, 1)
    assert light.abs().max() > 0
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose(x, (raw + light - mean) / std, atol=1e-5)
    assert y.tolist() == [i[1] for i in items]


def test_build_loaders_imagenet(tree, monkeypatch):
    b = build_loaders("imagenet", str(tree), 6, 4, "cpu", seed=0, workers=0)
    assert b.num_classes == 3 and b.input_size == (3, 224, 224)
    assert len(b.train) == 2 and len(b.test) == 2 and b.test.num_samples == 6
    x, y = next(iter(b.test))
    assert x.shape == (4, 3, 224, 224) and y.tolist() == [0, 0, 1, 1]
    # evaluation batches are plain normalisation of the centre crops (no lighting)
    raw = torch.stack([b.test.dataset[i][0] for i in range(4)]).float() / 255
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose(x, (raw - mean) / std, atol=1e-5)
    sub = build_loaders("imagenet", str(tree), 2, 4, "cpu", seed=0, workers=0, subset=5, augment=False)
    assert len(sub.train.dataset) == 5 and len(sub.train) == 2
    monkeypatch.delenv("RECU_IMAGENET_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="RECU_IMAGENET_DIR"):
        build_loaders("imagenet", None, 2, 2, "cpu", seed=0)
    test = build_test_loader("imagenet", str(tree), 4, "cpu", workers=0)  # val/ only
    for (xa, ya), (xb, yb) in zip(test, b.test):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    with pytest.raises(FileNotFoundError, match="RECU_IMAGENET_DIR"):
        build_test_loader("imagenet", None, 2, "cpu")
