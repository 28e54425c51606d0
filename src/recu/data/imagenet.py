"""ImageNet-style class folders (root/train/<class>/*, root/val/<class>/*) decoded with Pillow.

Training images are transformed as the authors' torchvision pipeline does:
RandomResizedCrop(224, scale 0.08-1.25) -> PCA lighting on the 0..255 pixels -> horizontal
flip -> ToTensor -> normalise. Worker processes decode, crop, light and flip (uint8); the
training device normalises. With ``lighting="float"`` the noise is instead drawn in the
worker, travels with the batch as 3 numbers per image and is added to the [0, 1] image on
the device. Every random choice of a sample comes from a seed drawn for its position in
the epoch from a generator seeded by (seed, epoch), so the result depends neither on the
number of workers nor on the number of processes.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterator, Sequence, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .augment import IMAGENET_MEAN, IMAGENET_STD, epoch_generator, normalize, normalize_coefficients

__all__ = [
    "IMAGE_EXTENSIONS",
    "LIGHTING_EIGVAL",
    "LIGHTING_EIGVEC",
    "scan_class_folders",
    "random_resized_crop_box",
    "LIGHTING_MODES",
    "lighting_offset",
    "lighting_uint8",
    "ImageFolderDataset",
    "SeededBatchSampler",
    "ImageFolderLoader",
]

PathLike = Union[str, "os.PathLike[str]"]
Device = Union[str, torch.device]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

# AlexNet's PCA of the ImageNet RGB pixel covariance (Krizhevsky et al., 2012).
LIGHTING_EIGVAL = (0.2175, 0.0188, 0.0045)
LIGHTING_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


# where the lighting noise is added: to the 0..255 pixels (the authors), to the [0, 1] image, nowhere
LIGHTING_MODES = ("uint8", "float", "none")


def _pil():  # type: ignore[no-untyped-def]
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError("reading image folders needs Pillow: pip install pillow (part of the 'train' extra)") from e
    return Image


def scan_class_folders(root: PathLike) -> tuple[list[tuple[str, int]], list[str]]:
    """``(samples, classes)``: sorted class folders of ``root`` and their image files, sorted.

    Raises:
        FileNotFoundError: ``root`` is not a folder, or holds no class folder with images.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist (expected {root}/<class>/<image files>)")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    samples: list[tuple[str, int]] = []
    for i, c in enumerate(classes):
        for dirpath, _, files in sorted(os.walk(root / c, followlinks=True)):
            for f in sorted(files):
                if f.lower().endswith(IMAGE_EXTENSIONS):
                    samples.append((os.path.join(dirpath, f), i))
    if not samples:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in class folders under {root}")
    return samples, classes


def random_resized_crop_box(
    width: int,
    height: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.25),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """``(left, top, w, h)`` of a RandomResizedCrop window (the usual Inception-style sampling).

    Up to 10 tries of an area fraction uniform in ``scale`` and a log-uniform aspect ratio;
    a window larger than the image is rejected (so scales above 1 only help the shape of
    wide or tall crops). After 10 failures: the largest centred crop with an allowed ratio.
    """
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, w, h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def lighting_offset(rng: np.random.Generator, std: float = 0.1) -> np.ndarray:
    """AlexNet PCA lighting noise: the RGB shift ``eigvec @ (alpha * eigval)``, alpha ~ N(0, std)."""
    if std <= 0:
        return np.zeros(3, dtype=np.float32)
    alpha = rng.normal(0.0, std, 3)
    return (np.asarray(LIGHTING_EIGVEC) @ (alpha * np.asarray(LIGHTING_EIGVAL))).astype(np.float32)


def lighting_uint8(pixels: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Add the RGB ``shift`` to (H, W, 3) uint8 pixels as the authors' ``Lighting`` transform does.

    Their transform runs on the PIL crop, before ToTensor: the sum is taken in floating point,
    clipped to [0, 255] and cast back to uint8, which truncates. A shift meant for [0, 1] pixels
    (|shift| ~ 0.02) thus lowers a channel by 1/255 where its shift is negative (0 stays 0) and
    leaves it unchanged where the shift is positive.
    """
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"pixels must be uint8 (H, W, 3), got {pixels.dtype} {pixels.shape}")
    lit = np.clip(pixels.astype(np.float64) + np.asarray(shift, dtype=np.float64), 0, 255)
    return lit.astype(np.uint8)


class ImageFolderDataset(Dataset):
    """Decodes one image and applies the geometric transforms.

    Training items are addressed by ``(index, sample_seed)``; from that seed come, in this
    order, the RandomResizedCrop(``size``, ``scale``) window (cut, then resized bilinearly,
    as torchvision does), the 50% horizontal flip and the lighting shift. ``lighting``
    says where the shift goes: ``uint8`` adds it to the 0..255 crop before the flip and
    before normalisation (:func:`lighting_uint8`, the authors' transform order); ``float``
    returns it for the loader to add to the [0, 1] image (AlexNet's strength, 255x the
    authors'); ``none`` drops it. Evaluation items are addressed by ``index`` and return
    the centre ``size`` crop of the image resized to shorter side ``resize``. A training
    set with ``augment=False`` is shuffled and sharded like one but transformed like
    evaluation.

    Items are ``(uint8 (3, size, size), label, float32 (3,) shift still to add)``; the
    shift is zero unless ``lighting="float"``.
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        train: bool,
        size: int = 224,
        resize: int = 256,
        scale: tuple[float, float] = (0.08, 1.25),
        lighting_std: float = 0.1,
        augment: bool = True,
        lighting: str = "uint8",
    ) -> None:
        if lighting not in LIGHTING_MODES:
            raise ValueError(f"lighting must be one of {LIGHTING_MODES}, got {lighting!r}")
        self.lighting = lighting
        self.samples = list(samples)
        self.train = train
        self.augment = augment
        self.size = size
        self.resize = resize
        self.scale = scale
        self.lighting_std = lighting_std

    def __len__(self) -> int:
        return len(self.samples)

    def _open(self, path: str):  # type: ignore[no-untyped-def]
        Image = _pil()
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except Exception as e:  # a truncated or non-image file: name it
            raise RuntimeError(f"cannot decode image {path}: {e}") from e

    def __getitem__(self, key: Union[int, tuple[int, int]]) -> tuple[Tensor, int, Tensor]:
        Image = _pil()
        if self.train and self.augment:
            if not isinstance(key, tuple):
                raise TypeError("training items are addressed by (index, sample_seed); use SeededBatchSampler")
            index, sample_seed = key
            path, label = self.samples[index]
            img = self._open(path)
            rng = np.random.default_rng(sample_seed)
            left, top, w, h = random_resized_crop_box(img.width, img.height, rng, self.scale)
            # cut, then resize: resizing with box= would let pixels outside the window into its edges
            img = img.crop((left, top, left + w, top + h)).resize((self.size, self.size), Image.BILINEAR)
            flip = rng.random() < 0.5
            shift = lighting_offset(rng, self.lighting_std)  # drawn in every mode: one random stream
            pixels = np.array(img, dtype=np.uint8)  # a writable copy: torch.from_numpy shares it
            if self.lighting == "uint8":
                pixels = lighting_uint8(pixels, shift)
            if flip:
                pixels = pixels[:, ::-1]
            light = shift if self.lighting == "float" else np.zeros(3, dtype=np.float32)
            x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).contiguous()
            return x, label, torch.from_numpy(light)
        else:
            index = key[0] if isinstance(key, tuple) else key
            path, label = self.samples[index]
            img = self._open(path)
            # shorter side -> resize (the longer side truncated, as torchvision's Resize does)
            if img.width <= img.height:
                new = (self.resize, int(self.resize * img.height / img.width))
            else:
                new = (int(self.resize * img.width / img.height), self.resize)
            img = img.resize(new, Image.BILINEAR)
            top = int(round((img.height - self.size) / 2.0))
            left = int(round((img.width - self.size) / 2.0))
            img = img.crop((left, top, left + self.size, top + self.size))
            light = np.zeros(3, dtype=np.float32)
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()
        return x, label, torch.from_numpy(light)


class SeededBatchSampler:
    """Batches of ``(index, sample_seed)`` for one rank, DistributedSampler-style but exact.

    Training: the epoch's permutation of the GLOBAL data set and one seed per position
    come from a generator seeded by (seed, epoch); rank ``r`` takes the ``r``-th
    contiguous slice of each global batch; the last incomplete global batch is dropped.
    Evaluation: the data set in order, unsharded, the last batch kept.
    """

    def __init__(self, n: int, batch_size: int, train: bool, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if train and batch_size % world_size:
            raise ValueError(f"the global batch {batch_size} must be divisible by world_size {world_size}")
        if train and batch_size > n:
            raise ValueError(f"the global batch {batch_size} exceeds the {n} training samples: no full batch")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, world_size), got rank={rank}, world_size={world_size}")
        self.n, self.batch_size, self.train, self.seed = n, batch_size, train, int(seed)
        self.rank, self.world_size = (rank, world_size) if train else (0, 1)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n // self.batch_size if self.train else math.ceil(self.n / self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        if not self.train:
            for start in range(0, self.n, self.batch_size):
                yield [(i, 0) for i in range(start, min(start + self.batch_size, self.n))]
            return
        g = epoch_generator(self.seed, self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        seeds = torch.randint(0, 2**62, (self.n,), generator=g).tolist()
        local = self.batch_size // self.world_size
        for step in range(len(self)):
            lo = step * self.batch_size + self.rank * local
            yield [(order[p], seeds[p]) for p in range(lo, lo + local)]


class ImageFolderLoader:
    """The loader interface of docs/interfaces.md over an :class:`ImageFolderDataset`.

    Iterates ``(x, y)`` on ``device``: x float32 normalised (B, 3, size, size), y int64.
    """

    def __init__(
        self,
        dataset: ImageFolderDataset,
        batch_size: int,
        device: Device,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        workers: int = 4,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.dataset = dataset
        self.device = torch.device(device)
        self.sampler = SeededBatchSampler(len(dataset), batch_size, dataset.train, seed, rank, world_size)
        self.batch_size = batch_size
        self.workers = workers
        self.mean, self.std = tuple(mean), tuple(std)
        self.loader = DataLoader(
            dataset,
            batch_sampler=self.sampler,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            # keep the decoding processes between epochs (and between the evaluations): starting
            # them again costs seconds per epoch; the batch sampler runs in this process, so
            # set_epoch still reaches the next epoch's order
            persistent_workers=workers > 0,
        )

    @property
    def train(self) -> bool:
        return self.dataset.train

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentation the next iteration uses."""
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    @property
    def num_samples(self) -> int:
        """Samples this loader yields per epoch on this rank."""
        if self.train:
            return len(self) * (self.batch_size // self.sampler.world_size)
        return len(self.dataset)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        coefficients = normalize_coefficients(self.mean, self.std, 1.0 / 255, self.device)
        inv_std = coefficients[0] * 255.0
        for x, y, light in self.loader:
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, torch.int64, non_blocking=True)
            out = normalize(x, coefficients=coefficients)
            if self.train and self.dataset.lighting == "float":
                # the shift is added to the [0, 1] image, i.e. light / std after normalisation
                out = out + light.to(self.device, non_blocking=True).view(-1, 3, 1, 1) * inv_std
            yield out, y
