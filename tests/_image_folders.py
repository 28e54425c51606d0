"""Tiny image-folder data sets written with Pillow: classes told apart by colour and by a bar's position."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# one colour per class, far apart in RGB
PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
           (145, 30, 180), (70, 240, 240), (240, 50, 230), (128, 128, 0), (0, 0, 128)]
FORMATS = (".png", ".jpg", ".bmp", ".gif")


def class_image(label: int, size: int, rng: np.random.Generator) -> Image.Image:
    """A noisy picture in the class's colour with a bright bar at a class-dependent row."""
    colour = np.array(PALETTE[label % len(PALETTE)], dtype=np.float64)
    pixels = colour + rng.normal(0, 20, (size, size, 3))
    row = (label * size) // len(PALETTE)
    pixels[row:row + max(1, size // 6)] = 255
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_image_folder(root: Path, classes: int = 10, train: int = 20, val: int = 6, size: int = 12,
                       formats: tuple[str, ...] = FORMATS, seed: int = 0) -> list[str]:
    """``root/train/<class>/`` and ``root/val/<class>/`` with ``train`` and ``val`` images per class,
    cycling through ``formats``; returns the class names (sorted, as the loader numbers them)."""
    rng = np.random.default_rng(seed)
    names = [f"{chr(ord('a') + i)}_class" for i in range(classes)]
    for split, n in (("train", train), ("val", val)):
        for label, name in enumerate(names):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                class_image(label, size, rng).save(folder / f"img{i:03d}{formats[i % len(formats)]}")
    return names


# what break_folder can do to a folder
PROBLEMS = ("no classes", "unreadable image", "different classes", "empty class", "no val folder")


def break_folder(root: Path, problem: str) -> None:
    """Give a folder written by :func:`write_image_folder` (classes a, b, c at least) one of :data:`PROBLEMS`."""
    if problem == "no classes":
        for d in (root / "train").iterdir():
            for f in d.iterdir():
                f.rename(root / "train" / f"{d.name}_{f.name}")
            d.rmdir()
    elif problem == "unreadable image":
        (root / "train" / "b_class" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    elif problem == "different classes":
        (root / "val" / "e_extra").mkdir()
        Image.new("RGB", (8, 8)).save(root / "val" / "e_extra" / "x.png")
        (root / "train" / "z_only_train").mkdir()
        Image.new("RGB", (8, 8)).save(root / "train" / "z_only_train" / "x.png")
    elif problem == "empty class":
        (root / "train" / "c_empty").mkdir()
        (root / "train" / "c_empty" / "notes.txt").write_text("no images here")
    elif problem == "no val folder":
        (root / "val").rename(root / "elsewhere")
