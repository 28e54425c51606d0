"""dataset: folder - any image folder: scanning, decoding, the two sources, augmentation, bad folders."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _image_folders import break_folder, write_image_folder  # noqa: E402

from recu.data import build_loaders, build_test_loader  # noqa: E402
from recu.data.augment import random_resized_boxes, resized_crop_flip  # noqa: E402
from recu.data.folder import FolderOptions, decode_image  # noqa: E402
from recu.data.folder_scan import scan_folder_dataset  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("folder")
    write_image_folder(root, classes=4, train=10, val=3, size=12)
    return root


def _loaders(root: Path, batch: int = 8, **options: object):  # type: ignore[no-untyped-def]
    return build_loaders("folder", root, batch, 100, "cpu", seed=3, workers=0, folder=FolderOptions(**options))


def _epoch(loader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:  # type: ignore[no-untyped-def]
    loader.set_epoch(epoch)
    return list(loader)


def test_classes_come_from_sorted_folder_names_and_every_format_decodes(folder: Path) -> None:
    train, val, classes = scan_folder_dataset(folder)
    assert classes == ["a_class", "b_class", "c_class", "d_class"]
    assert len(train) == 40 and len(val) == 12 and [label for _, label in val] == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    assert {Path(p).suffix for p, _ in train} == {".png", ".jpg", ".bmp", ".gif"}
    bundle = _loaders(folder, image_size=16)
    assert bundle.num_classes == 4 and bundle.input_size == (3, 16, 16) and bundle.class_names == classes
    x, y = next(iter(bundle.test))
    assert x.shape == (12, 3, 16, 16) and x.dtype == torch.float32 and y.tolist() == [label for _, label in val]


def test_mean_and_std_are_measured_on_the_training_images_unless_given(folder: Path) -> None:
    measured = _loaders(folder, augment="crop")
    x = torch.cat([x for x, _ in measured.test])
    assert len(measured.mean) == 3 and all(0 < s < 1 for s in measured.std)
    # normalised with the training images' statistics, the held-out images are about standardised
    assert x.mean(dim=(0, 2, 3)).abs().max() < 0.3 and (x.std(dim=(0, 2, 3)) - 1).abs().max() < 0.3
    given = _loaders(folder, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert given.mean == (0.5, 0.5, 0.5) and given.std == (0.25, 0.25, 0.25)


def test_grey_images_become_three_channels_and_colour_ones_one(tmp_path: Path) -> None:
    grey = tmp_path / "grey.png"
    Image.fromarray(np.full((10, 20), 77, dtype=np.uint8)).save(grey)
    rgb = decode_image(str(grey), 8, 3)
    assert rgb.shape == (3, 8, 8) and (rgb == 77).all()
    colour = tmp_path / "colour.jpg"
    Image.fromarray(np.full((6, 6, 3), (255, 0, 0), dtype=np.uint8)).save(colour, quality=100)
    single = decode_image(str(colour), 6, 1)
    assert single.shape == (1, 6, 6) and abs(int(single.mean()) - 76) <= 2  # ITU-R 601 luma of pure red


def test_a_photo_is_decoded_upright_as_its_exif_orientation_says(tmp_path: Path) -> None:
    pixels = np.zeros((4, 8, 3), dtype=np.uint8)
    pixels[:, :4] = 255  # stored: left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view": the white half ends on top
    Image.fromarray(pixels).save(tmp_path / "photo.jpg", quality=100, exif=exif)
    upright = decode_image(str(tmp_path / "photo.jpg"), 4, 1)[0].astype(int)
    assert upright[:2].min() > 200 and upright[2:].max() < 60


def test_memory_and_workers_give_the_same_batches_that_depend_only_on_seed_and_epoch(folder: Path) -> None:
    for mode in ("crop", "resized_crop"):
        memory = _loaders(folder, augment=mode, image_size=14)
        streamed = _loaders(folder, augment=mode, image_size=14, cache_mb=0)
        assert memory.train.cached and not streamed.train.cached
        a, b = _epoch(memory.train, 2), _epoch(streamed.train, 2)
        assert len(a) == 5 and all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
        again = _epoch(memory.train, 2)
        assert all(torch.equal(xa, xb) for (xa, _), (xb, _) in zip(a, again))
        other = _epoch(memory.train, 3)
        assert not torch.equal(a[0][0], other[0][0])


def test_two_ranks_take_the_slices_of_one_process(folder: Path) -> None:
    one = build_loaders("folder", folder, 8, 100, "cpu", seed=1, workers=0, folder=FolderOptions())
    ranks = [build_loaders("folder", folder, 8, 100, "cpu", seed=1, rank=r, world_size=2, workers=0,
                           folder=FolderOptions()) for r in (0, 1)]
    whole = _epoch(one.train, 1)
    halves = [_epoch(r.train, 1) for r in ranks]
    for step, (x, y) in enumerate(whole):
        assert torch.equal(torch.cat([halves[0][step][0], halves[1][step][0]]), x)
        assert torch.equal(torch.cat([halves[0][step][1], halves[1][step][1]]), y)


def test_resized_crop_of_the_whole_picture_is_the_picture_and_a_flip_mirrors_it() -> None:
    img = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    whole = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2)
    out = resized_crop_flip(img, whole, torch.tensor([False, True]), 8)
    assert torch.allclose(out[0], img[0]) and torch.allclose(out[1], img[1].flip(-1))
    left_half = resized_crop_flip(img, torch.tensor([[0.0, 0.0, 0.5, 1.0]] * 2), torch.tensor([False, False]), 8)
    # twice as wide: output column 1 lies at input column 0.25 (bilinear), column 0 at the border
    assert torch.allclose(left_half[0, :, :, 1], img[0, :, :, 0] * 0.75 + img[0, :, :, 1] * 0.25)
    assert torch.allclose(left_half[0, :, :, 0], img[0, :, :, 0])
    boxes = random_resized_boxes(torch.Generator().manual_seed(0), 1000)
    assert (boxes >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= 1 + 1e-6).all() and (boxes[:, 1] + boxes[:, 3] <= 1 + 1e-6).all()


def test_large_images_take_resized_crops_and_evaluate_on_the_centre(folder: Path) -> None:
    options = FolderOptions(image_size=96)
    assert options.mode == "resized_crop" and options.stored_size == 110
    assert FolderOptions(image_size=32).mode == "crop"
    bundle = _loaders(folder, image_size=96)
    x, _ = _epoch(bundle.train, 0)[0]
    assert x.shape == (8, 3, 96, 96)
    assert next(iter(bundle.test))[0].shape == (12, 3, 96, 96)


def test_the_test_loader_alone_reads_only_val_with_the_given_statistics(folder: Path) -> None:
    bundle = _loaders(folder)
    options = FolderOptions(mean=bundle.mean, std=bundle.std)
    alone = build_test_loader("folder", folder, 100, "cpu", workers=0, folder=options)
    assert alone.class_names == bundle.class_names
    assert torch.equal(next(iter(alone))[0], next(iter(bundle.test))[0])
    with pytest.raises(ValueError, match="mean and std"):
        build_test_loader("folder", folder, 100, "cpu", workers=0, folder=FolderOptions())


def test_test_split_may_be_called_test(tmp_path: Path) -> None:
    write_image_folder(tmp_path, classes=2, train=4, val=2)
    (tmp_path / "val").rename(tmp_path / "test")
    assert _loaders(tmp_path, batch=4).test.dataset_size == 4


BAD_FOLDERS = {
    "no classes": (ValueError, "no class folders in .*train .*put each class in its own sub-folder"),
    "unreadable image": (ValueError, r"cannot decode image .*b_class.broken\.png"),
    "different classes": (ValueError, r"hold different classes: only in train \['z_only_train'\], only in val \['e_extra'\]"),
    "empty class": (ValueError, r"class folder .*c_empty holds no images"),
    "no val folder": (FileNotFoundError, "has no val/ or test/ folder"),
}


@pytest.mark.parametrize("problem", sorted(BAD_FOLDERS))
@pytest.mark.parametrize("cache_mb", [2048, 0])
def test_a_bad_folder_is_one_line_naming_the_problem(tmp_path: Path, problem: str, cache_mb: int) -> None:
    write_image_folder(tmp_path, classes=3, train=4, val=2)
    break_folder(tmp_path, problem)
    kind, pattern = BAD_FOLDERS[problem]
    with pytest.raises(kind, match=pattern) as info:
        bundle = build_loaders("folder", tmp_path, 4, 100, "cpu", seed=0, workers=1 if cache_mb == 0 else 0,
                               folder=FolderOptions(cache_mb=cache_mb, mean=(0.5,) * 3, std=(0.2,) * 3))
        _epoch(bundle.train, 0)  # workers decode only now
    assert "\n" not in str(info.value)


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="in_channels must be 1"):
        FolderOptions(in_channels=2)
    with pytest.raises(ValueError, match="mean needs 1 values"):
        FolderOptions(in_channels=1, mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))
    with pytest.raises(ValueError, match="give both mean and std"):
        FolderOptions(mean=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="folder_augment"):
        FolderOptions(augment="random")
    with pytest.raises(ValueError, match="data_dir"):
        build_loaders("folder", None, 4, 4, "cpu", seed=0)
