"""Finding and checking an image-folder data set: ``root/train/<class>/*`` and ``root/val/<class>/*``
(or ``root/test/<class>/*``).

Every problem a user's folder can have is a ``ValueError`` (a missing folder a ``FileNotFoundError``)
whose one-line message names the folder or file, so ``recu train`` can print it and exit 1.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

__all__ = ["FOLDER_IMAGE_EXTENSIONS", "EVAL_SPLITS", "scan_split", "eval_split_dir", "scan_folder_dataset"]

PathLike = Union[str, "os.PathLike[str]"]

# what Pillow decodes; GIFs give their first frame
FOLDER_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
# the held-out split, in the order they are looked for
EVAL_SPLITS = ("val", "test")

Samples = list[tuple[str, int]]


def _is_image(name: str) -> bool:
    return name.lower().endswith(FOLDER_IMAGE_EXTENSIONS)


def scan_split(split_dir: PathLike) -> tuple[Samples, list[str]]:
    """``(samples, classes)`` of one split: the sorted class folders and their image files (sorted,
    sub-folders included), each sample ``(path, class index)``.

    Raises:
        FileNotFoundError: ``split_dir`` does not exist.
        ValueError: it holds no class folder, or a class folder holds no image.
    """
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise FileNotFoundError(f"image folder {split_dir} does not exist (expected {split_dir}/<class>/<images>)")
    classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        loose = any(_is_image(e.name) for e in os.scandir(split_dir) if e.is_file())
        hint = " (its images lie directly in it: put each class in its own sub-folder)" if loose else ""
        raise ValueError(f"no class folders in {split_dir}{hint}; expected {split_dir}/<class>/<images>")
    samples: Samples = []
    for index, name in enumerate(classes):
        found = [os.path.join(d, f) for d, _, files in sorted(os.walk(split_dir / name, followlinks=True))
                 for f in sorted(files) if _is_image(f)]
        if not found:
            raise ValueError(f"class folder {split_dir / name} holds no images "
                             f"({', '.join(FOLDER_IMAGE_EXTENSIONS)}); remove it or add its images")
        samples.extend((path, index) for path in found)
    return samples, classes


def eval_split_dir(root: PathLike) -> Path:
    """``root/val``, else ``root/test``; a ``FileNotFoundError`` naming both when neither exists."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data_dir {root} does not exist (expected {root}/train/<class>/<images> "
                                f"and {root}/val/<class>/<images>)")
    for name in EVAL_SPLITS:
        if (root / name).is_dir():
            return root / name
    raise FileNotFoundError(f"{root} has no val/ or test/ folder (expected {root}/val/<class>/<images>)")


def scan_folder_dataset(root: PathLike) -> tuple[Samples, Samples, list[str]]:
    """``(train samples, eval samples, classes)`` of ``root``; both splits must hold the same classes."""
    root = Path(root)
    eval_dir = eval_split_dir(root)
    train, classes = scan_split(root / "train")
    held_out, eval_classes = scan_split(eval_dir)
    if eval_classes != classes:
        only_train = sorted(set(classes) - set(eval_classes))[:5]
        only_eval = sorted(set(eval_classes) - set(classes))[:5]
        raise ValueError(f"{root}/train and {eval_dir} hold different classes: only in train {only_train}, "
                         f"only in {eval_dir.name} {only_eval}")
    return train, held_out, classes
