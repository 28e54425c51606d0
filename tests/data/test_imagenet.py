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
    lighting_uint8,
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


def test_float_lighting_is_added_to_the_unit_range_image_then_normalised(tree):
    samples, _ = scan_class_folders(tree / "train")
    ds = ImageFolderDataset(samples, train=True, lighting="float")
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


def test_lighting_uint8_truncates_like_the_authors_transform():
    # hand-worked: the sum in floating point, clipped to [0, 255], cast to uint8 (floor for >= 0)
    pixels = np.array([[[0, 0, 0], [100, 100, 100], [255, 255, 255]]], dtype=np.uint8)  # (1, 3, 3)
    out = lighting_uint8(pixels, np.array([-0.02, 0.03, -1.5]))
    assert out.dtype == np.uint8
    assert out[0].T.tolist() == [[0, 99, 254], [0, 100, 255], [0, 98, 253]]
    assert lighting_uint8(pixels, np.array([1.5, 0.0, 0.999]))[0].T.tolist() == [[1, 101, 255], [0, 100, 255],
                                                                                  [0, 100, 255]]
    with pytest.raises(ValueError, match="uint8"):
        lighting_uint8(pixels.astype(np.float32), np.zeros(3))


def _random_image(tmp_path: Path, name: str = "a.png", h: int = 37, w: int = 53) -> str:
    arr = np.random.default_rng(5).integers(0, 256, (h, w, 3), dtype=np.uint8)
    arr[:3] = 0  # a few exact 0s and 255s: the ends of the clip
    arr[-3:] = 255
    Image.fromarray(arr).save(tmp_path / name)
    return str(tmp_path / name)


def test_uint8_lighting_goes_on_the_pixels_before_normalisation(tmp_path):
    # The authors' train transform: RandomResizedCrop -> Lighting on the 0..255 PIL crop -> flip
    # -> ToTensor -> Normalize. A channel whose shift is negative loses 1/255 (0 stays 0); a
    # positive shift changes nothing. Added after ToTensor instead, the shift would move every
    # pixel by itself (about 0.02): the values below tell the two orders apart.
    path = _random_image(tmp_path)
    plain, float_mode, authors = (ImageFolderDataset([(path, 0)], train=True, size=16, lighting=m)
                                  for m in ("none", "float", "uint8"))
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(3, 1, 1)
    signs = set()
    for seed in range(12):
        base = plain[(0, seed)][0]
        shift = float_mode[(0, seed)][2]  # the same draws: the shift this seed's image gets
        assert shift.abs().max() < 1 and not authors[(0, seed)][2].any()
        lowered = (shift < 0).view(3, 1, 1) & (base > 0)
        expected = base - lowered.to(torch.uint8)
        assert torch.equal(authors[(0, seed)][0], expected)
        signs |= {bool(s < 0) for s in shift}
        # through the loader: normalisation of the lit uint8 crop, not the shift added after ToTensor
        loader = ImageFolderLoader(authors, 1, "cpu", seed=seed, workers=0)
        ((_, sample_seed),) = next(iter(loader.sampler))
        (x, _), = list(loader)
        lit = authors[(0, sample_seed)][0]
        assert torch.allclose(x[0].double(), (lit.double() / 255 - mean) / std, atol=1e-6)
        base, shift = plain[(0, sample_seed)][0], float_mode[(0, sample_seed)][2]
        wrong_order = (base.double() / 255 + shift.view(3, 1, 1) - mean) / std
        assert (x[0].double() - wrong_order).abs().max() > 1e-3
    assert signs == {True, False}  # both branches of the truncation were exercised


def test_train_crop_is_cut_then_resized_like_torchvision(tmp_path):
    path = _random_image(tmp_path, h=61, w=47)
    img = Image.open(path).convert("RGB")
    ds = ImageFolderDataset([(path, 0)], train=True, size=16, lighting="none")
    box_resize_differs = False
    for seed in range(8):
        rng = np.random.default_rng(seed)  # the item's draws, in their documented order
        left, top, w, h = random_resized_crop_box(img.width, img.height, rng, (0.08, 1.25))
        flip = rng.random() < 0.5
        box = (left, top, left + w, top + h)
        expected = np.asarray(img.crop(box).resize((16, 16), Image.BILINEAR))
        if flip:
            expected = expected[:, ::-1]
        got = ds[(0, seed)][0].permute(1, 2, 0).numpy()
        assert np.array_equal(got, expected)
        in_place = np.asarray(img.resize((16, 16), Image.BILINEAR, box=box))
        box_resize_differs |= not np.array_equal(in_place[:, ::-1] if flip else in_place, expected)
    assert box_resize_differs  # resizing with box= reads pixels outside the window: a different result


def test_lighting_modes_reach_the_dataset(tree):
    assert build_loaders("imagenet", str(tree), 6, 4, "cpu", seed=0, workers=0).train.dataset.lighting == "uint8"
    b = build_loaders("imagenet", str(tree), 6, 4, "cpu", seed=0, workers=0, lighting="float")
    assert b.train.dataset.lighting == "float"
    with pytest.raises(ValueError, match="lighting"):
        ImageFolderDataset([], train=True, lighting="pca")
