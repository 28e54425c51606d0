"""Data sets and loaders: CIFAR-10/100, scikit-learn digits, ImageNet-style folders and any image folder.

:func:`build_loaders` is the one entry point the training engine uses
(docs/interfaces.md). Every loader has ``set_epoch(e)``, ``len()`` (steps per epoch),
``num_samples`` (samples per epoch on this rank) and yields ``(x, y)`` already on the
device. The training order and augmentation of epoch ``e`` depend only on ``(seed, e)``:
rank ``r`` of ``world_size`` takes its contiguous slice of each global batch, so a
2-process run sees exactly the images of a 1-process run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Protocol, Union

import torch
from torch import Tensor

from .cifar import CIFAR_SPECS, ChecksumError, cifar_classes, load_cifar
from .loader import InMemoryLoader

if TYPE_CHECKING:
    from .folder import FolderOptions

__all__ = ["DataBundle", "Loader", "DATASETS", "SUBSET_SEED", "build_loaders", "build_test_loader", "subset_indices",
           "ChecksumError"]

DATASETS = ("cifar10", "cifar100", "digits", "imagenet", "folder")
SUBSET_SEED = 0  # the subset is the same for every run seed, so runs on a subset stay comparable
IMAGENET_ENV = "RECU_IMAGENET_DIR"

Device = Union[str, torch.device]


class Loader(Protocol):
    """What the engine needs from a loader."""

    def set_epoch(self, epoch: int) -> None: ...
    def __len__(self) -> int: ...
    @property
    def num_samples(self) -> int: ...
    def __iter__(self): ...  # type: ignore[no-untyped-def]


@dataclass
class DataBundle:
    """The training and test loaders of a data set, and what a model needs to know about it.

    ``mean`` and ``std`` (of the [0, 1] pixels) are filled for folder data sets, where they come from the
    data; ``class_names`` for folder data sets (the class folders) and CIFAR (its meta file's names). A
    checkpoint keeps them so that evaluation and deployment need no training set.
    """

    train: Loader
    test: Loader
    num_classes: int
    input_size: tuple[int, int, int]
    class_names: Optional[list[str]] = None
    mean: Optional[tuple[float, ...]] = None
    std: Optional[tuple[float, ...]] = None


def subset_indices(n: int, subset: Optional[int]) -> Optional[Tensor]:
    """The first ``subset`` indices of a fixed permutation of ``range(n)`` (None: everything)."""
    if subset is None:
        return None
    if not isinstance(subset, int) or not 1 <= subset <= n:
        raise ValueError(f"subset must be an int in [1, {n}] (the training set size), got {subset!r}")
    g = torch.Generator().manual_seed(SUBSET_SEED)
    return torch.randperm(n, generator=g)[:subset]


def build_loaders(
    dataset: str,
    root: Optional[Union[str, "os.PathLike[str]"]],
    batch_size: int,
    eval_batch_size: int,
    device: Device,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    augment: bool = True,
    download: bool = False,
    workers: int = 4,
    subset: Optional[int] = None,
    lighting: str = "uint8",
    folder: Optional["FolderOptions"] = None,
) -> DataBundle:
    """Training and test loaders of ``dataset``.

    Args:
        dataset: ``cifar10``, ``cifar100``, ``digits``, ``imagenet`` or ``folder`` (any image folder:
            ``root/train/<class>/*`` and ``root/val/<class>/*`` or ``root/test/<class>/*``).
        root: data folder. CIFAR: the unpacked folder or its parent (``None``: ``RECU_CIFAR10_DIR`` /
            ``RECU_CIFAR100_DIR``); ImageNet: the folder holding ``train/`` and ``val/``
            (``None``: ``RECU_IMAGENET_DIR``); folder: the folder holding ``train/`` and ``val/`` or ``test/``;
            ignored for digits (shipped with scikit-learn).
        batch_size: the GLOBAL training batch; rank ``r`` gets its ``batch_size / world_size`` slice.
        eval_batch_size: test batch (the test loader is not sharded).
        device: where batches are returned (CIFAR and digits also live and are augmented there).
        seed: run seed; epoch ``e`` is seeded from ``(seed, e)``.
        rank, world_size: data-parallel position.
        augment: training augmentation (CIFAR: random crop 32 with padding 4 and flip; digits:
            random 1-pixel shift; ImageNet: RandomResizedCrop, lighting, flip).
        download: fetch CIFAR if missing (needs internet).
        workers: decoding processes (ImageNet, folder).
        subset: train on the first ``subset`` images of a fixed permutation of the training set.
        lighting: ImageNet's PCA lighting noise: ``uint8`` (added to the 0..255 crop before
            normalisation, as the authors' transform does), ``float`` (added to the [0, 1] image,
            AlexNet's strength) or ``none`` (see :class:`recu.data.imagenet.ImageFolderDataset`).
        folder: image size, channels, augmentation, normalisation and memory budget of a folder data
            set (:class:`recu.data.folder.FolderOptions`; ``None``: its defaults).

    CIFAR-10 is normalised with the ImageNet mean/std and CIFAR-100 with its own, as the authors do.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {list(DATASETS)}")
    common = dict(seed=seed, rank=rank, world_size=world_size)
    if dataset in CIFAR_SPECS:
        spec = CIFAR_SPECS[dataset]
        x_tr, y_tr = load_cifar(root, dataset, train=True, download=download)
        x_te, y_te = load_cifar(root, dataset, train=False, download=download)
        norm = dict(mean=spec.mean, std=spec.std, scale=1.0 / 255)
        pad, flip, classes, size = 4, True, spec.num_classes, (3, 32, 32)
        names: Optional[list[str]] = cifar_classes(root, dataset)  # the meta file load_cifar checked
    elif dataset == "digits":
        from .digits import DIGITS_MAX, digits_stats, load_digits

        x_tr, y_tr = load_digits(train=True)
        x_te, y_te = load_digits(train=False)
        mean, std = digits_stats()
        # mirrored digits are other symbols: shift only
        norm = dict(mean=(mean,), std=(std,), scale=1.0 / DIGITS_MAX)
        pad, flip, classes, size = 1, False, 10, (1, 8, 8)
        names = None
    elif dataset == "folder":
        return _folder(root, batch_size, eval_batch_size, device, workers, subset, augment, folder, **common)
    else:
        return _imagenet(root, batch_size, eval_batch_size, device, workers, subset, augment, lighting, **common)

    idx = subset_indices(x_tr.shape[0], subset)
    if idx is not None:
        x_tr, y_tr = x_tr[idx], y_tr[idx]
    train = InMemoryLoader(x_tr, y_tr, batch_size, device, train=True, augment=augment, pad=pad, flip=flip,
                           **common, **norm)  # type: ignore[arg-type]
    test = InMemoryLoader(x_te, y_te, eval_batch_size, device, train=False, **norm)  # type: ignore[arg-type]
    train.class_names = test.class_names = names
    return DataBundle(train, test, classes, size, class_names=names)


def build_test_loader(
    dataset: str,
    root: Optional[Union[str, "os.PathLike[str]"]],
    batch_size: int,
    device: Device,
    download: bool = False,
    workers: int = 4,
    folder: Optional["FolderOptions"] = None,
) -> Loader:
    """The test loader of ``dataset`` alone (``recu eval``): the training split is not read.

    Same arguments and the same test loader as :func:`build_loaders`; for ImageNet the labels
    are the sorted class folders of ``val/`` (which :func:`build_loaders` checks equal ``train/``'s).
    A folder data set needs ``folder.mean`` and ``folder.std`` (those the model was trained with);
    its loader's ``class_names`` are the class folders of ``val/`` (or ``test/``).
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {list(DATASETS)}")
    if dataset in CIFAR_SPECS:
        x_te, y_te = load_cifar(root, dataset, train=False, download=download)
        spec = CIFAR_SPECS[dataset]
        norm = dict(mean=spec.mean, std=spec.std, scale=1.0 / 255)
        names = cifar_classes(root, dataset)
    elif dataset == "digits":
        from .digits import DIGITS_MAX, digits_stats, load_digits

        x_te, y_te = load_digits(train=False)
        mean, std = digits_stats()
        norm = dict(mean=(mean,), std=(std,), scale=1.0 / DIGITS_MAX)
        names = None
    elif dataset == "folder":
        return _folder_test(root, batch_size, device, workers, folder)
    else:
        from .imagenet import ImageFolderDataset, ImageFolderLoader, scan_class_folders

        val_samples, _ = scan_class_folders(_imagenet_root(root) / "val")
        return ImageFolderLoader(ImageFolderDataset(val_samples, train=False), batch_size, device, 0, 0, 1, workers)
    loader = InMemoryLoader(x_te, y_te, batch_size, device, train=False, **norm)  # type: ignore[arg-type]
    loader.class_names = names
    return loader


def _imagenet_root(root: Optional[Union[str, "os.PathLike[str]"]]) -> Path:
    if root is None:
        root = os.environ.get(IMAGENET_ENV)
        if not root:
            raise FileNotFoundError(
                f"no ImageNet folder given and {IMAGENET_ENV} is not set: point --data-dir or {IMAGENET_ENV} "
                f"at the folder holding train/<class>/ and val/<class>/"
            )
    return Path(root).expanduser()


def _imagenet(root, batch_size, eval_batch_size, device, workers, subset, augment, lighting, seed, rank, world_size):  # type: ignore[no-untyped-def]
    from .imagenet import ImageFolderDataset, ImageFolderLoader, scan_class_folders

    root = _imagenet_root(root)
    train_samples, classes = scan_class_folders(root / "train")
    val_samples, val_classes = scan_class_folders(root / "val")
    if val_classes != classes:
        missing = sorted(set(classes) ^ set(val_classes))[:5]
        raise ValueError(f"{root}/train and {root}/val hold different class folders (e.g. {missing})")
    idx = subset_indices(len(train_samples), subset)
    if idx is not None:
        train_samples = [train_samples[i] for i in idx.tolist()]
    train_ds = ImageFolderDataset(train_samples, train=True, augment=augment, lighting=lighting)
    test_ds = ImageFolderDataset(val_samples, train=False)
    train = ImageFolderLoader(train_ds, batch_size, device, seed, rank, world_size, workers)
    test = ImageFolderLoader(test_ds, eval_batch_size, device, 0, 0, 1, workers)
    return DataBundle(train, test, len(classes), (3, 224, 224))


def _folder_root(root: Optional[Union[str, "os.PathLike[str]"]]) -> Path:
    if root is None:
        raise ValueError("dataset folder needs data_dir: the folder holding train/<class>/ and val/<class>/ "
                         "(--set data_dir=DIR)")
    return Path(root).expanduser()


def _folder(root, batch_size, eval_batch_size, device, workers, subset, augment, options, seed, rank, world_size):  # type: ignore[no-untyped-def]
    from .folder import FolderOptions, decoded_sources, normalization
    from .folder_loader import FolderLoader
    from .folder_scan import scan_folder_dataset

    options = options or FolderOptions()
    train_samples, test_samples, classes = scan_folder_dataset(_folder_root(root))
    idx = subset_indices(len(train_samples), subset)
    if idx is not None:
        train_samples = [train_samples[i] for i in idx.tolist()]
    train_src, test_src = decoded_sources([train_samples, test_samples], options, workers)
    mean, std = normalization(train_src, options, workers)
    common = dict(image_size=options.image_size, mode=options.mode, mean=mean, std=std, workers=workers)
    train = FolderLoader(train_src, _labels(train_samples), batch_size, device, train=True, augment=augment,
                         seed=seed, rank=rank, world_size=world_size, **common)  # type: ignore[arg-type]
    test = FolderLoader(test_src, _labels(test_samples), eval_batch_size, device, train=False, augment=False,
                        **common)  # type: ignore[arg-type]
    train.class_names = test.class_names = classes
    size = (options.in_channels, options.image_size, options.image_size)
    return DataBundle(train, test, len(classes), size, class_names=classes, mean=mean, std=std)


def _folder_test(root, batch_size, device, workers, options):  # type: ignore[no-untyped-def]
    from .folder import decoded_sources
    from .folder_loader import FolderLoader
    from .folder_scan import eval_split_dir, scan_split

    if options is None or options.mean is None or options.std is None:
        raise ValueError("a folder test loader needs the mean and std the model was trained with")
    samples, classes = scan_split(eval_split_dir(_folder_root(root)))
    (source,) = decoded_sources([samples], options, workers)
    loader = FolderLoader(source, _labels(samples), batch_size, device, train=False, augment=False,
                          image_size=options.image_size, mode=options.mode, mean=options.mean, std=options.std,
                          workers=workers)
    loader.class_names = classes
    return loader


def _labels(samples: list[tuple[str, int]]) -> Tensor:
    return torch.tensor([label for _, label in samples], dtype=torch.int64)
