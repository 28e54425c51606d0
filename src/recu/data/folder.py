"""Any image-folder data set (``dataset: folder``): ``root/train/<class>/*``, ``root/val/<class>/*``.

Every image is decoded once by Pillow into a square uint8 picture of ``stored_size`` pixels (shorter
side resized, centre cut, converted to RGB or grey). When the whole data set fits under the memory
budget those pictures are decoded once, by DataLoader workers, and kept in one tensor on the training
device; otherwise workers decode each batch again every epoch. Either way the batch is augmented and
normalised on the device by :class:`~recu.data.folder_loader.FolderLoader`, so both give the same
batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .folder_scan import Samples

__all__ = ["FOLDER_AUGMENTS", "FolderOptions", "decode_image", "DecodedImages", "decode_all", "pixel_stats",
           "estimate_stats", "worker_error_line", "decoded_sources", "normalization"]

FOLDER_AUGMENTS = ("auto", "crop", "resized_crop")
# "auto" pads and crops images up to this side (CIFAR-like), and takes random resized crops above it
SMALL_IMAGE_MAX = 64
# pictures decoded to estimate mean and std when the data set is not kept in memory
STATS_SAMPLES = 2000


@dataclass(frozen=True)
class FolderOptions:
    """How a folder data set becomes tensors (the ``image_size``, ``in_channels``, ``folder_augment``,
    ``mean``, ``std`` and ``image_cache_mb`` keys of the training config).

    Args:
        image_size: side of the square images the model sees.
        in_channels: 3 (grey images become RGB) or 1 (colour images become grey).
        augment: ``crop`` (zero-pad by ``image_size // 8``, random crop, flip: small images),
            ``resized_crop`` (random resized crop, flip; evaluation takes the centre ``image_size`` of the
            picture stored at ``8/7`` of it, as ImageNet's 224 of 256) or ``auto`` (``crop`` up to
            64 pixels, else ``resized_crop``).
        mean, std: per-channel normalisation of the [0, 1] pixels; ``None``: measured on the training images.
        cache_mb: memory budget for the decoded pictures of both splits; above it workers decode every epoch.
    """

    image_size: int = 32
    in_channels: int = 3
    augment: str = "auto"
    mean: Optional[tuple[float, ...]] = None
    std: Optional[tuple[float, ...]] = None
    cache_mb: float = 2048.0

    def __post_init__(self) -> None:
        if not isinstance(self.image_size, int) or self.image_size < 4:
            raise ValueError(f"image_size must be an int >= 4, got {self.image_size!r}")
        if self.in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 (grey) or 3 (RGB) for a folder data set, got {self.in_channels!r}")
        if self.augment not in FOLDER_AUGMENTS:
            raise ValueError(f"folder_augment must be one of {FOLDER_AUGMENTS}, got {self.augment!r}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither (then both are measured on the training images)")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                if not isinstance(value, (list, tuple)) or not all(isinstance(v, (int, float)) for v in value):
                    raise ValueError(f"{name} must be a list of numbers, one per channel, e.g. [0.5, 0.5, 0.5]; "
                                     f"got {value!r}")
                if len(value) != self.in_channels:
                    raise ValueError(f"{name} needs {self.in_channels} values (one per channel), got {list(value)}")
                object.__setattr__(self, name, tuple(float(v) for v in value))
        if self.std is not None and min(self.std) <= 0:
            raise ValueError(f"std must be > 0, got {list(self.std)}")
        if not self.cache_mb >= 0:
            raise ValueError(f"image_cache_mb must be >= 0, got {self.cache_mb}")

    @property
    def mode(self) -> str:
        """The augmentation family: ``crop`` or ``resized_crop`` (``auto`` resolved by the image size)."""
        if self.augment != "auto":
            return self.augment
        return "crop" if self.image_size <= SMALL_IMAGE_MAX else "resized_crop"

    @property
    def stored_size(self) -> int:
        """Side of the decoded pictures: ``image_size``, or 8/7 of it for resized crops (room to cut the centre)."""
        return self.image_size if self.mode == "crop" else int(round(self.image_size * 8 / 7))

    def bytes_per_image(self) -> int:
        return self.in_channels * self.stored_size ** 2


def _pil():  # type: ignore[no-untyped-def]
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError("image folders need Pillow: pip install pillow (part of the 'train' extra)") from e
    return Image


def decode_image(path: str, size: int, channels: int) -> np.ndarray:
    """(channels, size, size) uint8: the picture at ``path`` with its shorter side resized to ``size``
    (bilinear, antialiased) and the centre square cut; grey or palette images become RGB for
    ``channels=3``, colour ones grey for 1. A GIF gives its first frame; a photo is turned upright
    as its EXIF orientation says.

    Raises:
        ValueError: the file cannot be decoded (the message names it).
    """
    Image = _pil()
    from PIL import ImageOps

    mode = "RGB" if channels == 3 else "L"
    try:
        with Image.open(path) as img:
            img.draft(mode, (size, size))  # a JPEG decodes at 1/2, 1/4 or 1/8 scale when that still covers size
            # a camera's EXIF orientation: the picture as it is seen, not as the sensor stored it
            img = ImageOps.exif_transpose(img).convert(mode)
        scale = size / min(img.width, img.height)
        new = (max(size, round(img.width * scale)), max(size, round(img.height * scale)))
        img = img.resize(new, Image.BILINEAR)
        left, top = (img.width - size) // 2, (img.height - size) // 2
        pixels = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for a bad file; name the file
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"cannot decode image {path}: {why}") from None
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


class DecodedImages(Dataset):
    """Item ``i``: (uint8 (C, size, size) tensor, label) of ``samples[i]`` (:func:`decode_image`)."""

    def __init__(self, samples: Samples, size: int, channels: int) -> None:
        self.samples = list(samples)
        self.size = size
        self.channels = channels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, label = self.samples[index]
        return torch.from_numpy(np.ascontiguousarray(decode_image(path, self.size, self.channels))), label


def worker_error_line(e: BaseException) -> str:
    """The decoding error's own line out of the DataLoader's multi-line re-raise from a worker."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    last = lines[-1] if lines else type(e).__name__
    return last.split(": ", 1)[1] if last.startswith("ValueError: ") else last


def decode_all(dataset: DecodedImages, workers: int, batch: int = 64) -> Tensor:
    """Every picture of ``dataset`` as one uint8 (N, C, size, size) tensor, decoded by ``workers`` processes."""
    out = torch.empty((len(dataset), dataset.channels, dataset.size, dataset.size), dtype=torch.uint8)
    loader = DataLoader(dataset, batch_size=batch, num_workers=workers)
    start = 0
    try:
        for x, _ in loader:
            out[start:start + x.shape[0]] = x
            start += x.shape[0]
    except ValueError as e:
        raise ValueError(worker_error_line(e)) from None
    return out


def pixel_stats(images: Union[Tensor, Sequence[Tensor]], chunk: int = 1024) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 (N, C, H, W) pictures scaled to [0, 1], summed in float64 by chunks."""
    parts = [images] if isinstance(images, Tensor) else list(images)
    total = sq = None
    count = 0
    for part in parts:
        for start in range(0, part.shape[0], chunk):
            x = part[start:start + chunk].to(torch.float64) / 255.0
            s, q = x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3))
            total, sq = (s, q) if total is None else (total + s, sq + q)
            count += x.numel() // x.shape[1]
    if total is None or count == 0:
        raise ValueError("no training images to measure mean and std on")
    mean = total / count
    std = (sq / count - mean * mean).clamp(min=0).sqrt()
    # a channel of one constant value would divide by 0: leave it unscaled
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def estimate_stats(dataset: DecodedImages, workers: int, limit: int = STATS_SAMPLES,
                   seed: int = 0) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std of up to ``limit`` training pictures (a fixed random choice), decoded for it."""
    n = len(dataset)
    picked = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit].sort().values.tolist()
    subset = DecodedImages([dataset.samples[i] for i in picked], dataset.size, dataset.channels)
    return pixel_stats(decode_all(subset, workers))


def decoded_sources(splits: Sequence[Samples], options: FolderOptions, workers: int) -> list[Union[Tensor, DecodedImages]]:
    """Each split's pictures: decoded now into one uint8 tensor when all splits together fit in
    ``options.cache_mb``, else a :class:`DecodedImages` for workers to decode every epoch."""
    datasets = [DecodedImages(s, options.stored_size, options.in_channels) for s in splits]
    total = sum(len(d) for d in datasets) * options.bytes_per_image()
    if total > options.cache_mb * 2**20:
        return list(datasets)
    return [decode_all(d, workers) for d in datasets]


def normalization(train: Union[Tensor, DecodedImages], options: FolderOptions,
                  workers: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``options``' mean and std, else those of the training pictures (all in memory; else a sample)."""
    if options.mean is not None and options.std is not None:
        return options.mean, options.std
    return pixel_stats(train) if isinstance(train, Tensor) else estimate_stats(train, workers)
