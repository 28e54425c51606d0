"""The loader of a folder data set: pictures kept in memory or decoded by workers, augmented on the device.

Both sources hand the loader the same uint8 pictures (:func:`recu.data.folder.decode_image`), and
everything random about an epoch (order, crops, flips) is drawn up front from a generator seeded by
(seed, epoch), as :class:`~recu.data.loader.InMemoryLoader` does: the batches depend neither on the
source, nor on the number of workers, nor on the number of processes.
"""

from __future__ import annotations

from typing import Iterator, Optional, Sequence, Union

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from ._batches import EpochBatching
from .augment import (crop_flip, epoch_generator, normalize, normalize_coefficients, random_resized_boxes,
                      resized_crop_flip)
from .folder import DecodedImages, worker_error_line

__all__ = ["FolderLoader"]

Device = Union[str, torch.device]


class _PlannedBatches:
    """The DataLoader's batch sampler: the index lists the loader plans for the current epoch.

    It runs in the main process even with persistent workers, so a new epoch's plan reaches it.
    """

    def __init__(self, loader: "FolderLoader") -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[list[int]]:
        for idx, _ in self.loader._index_batches():
            yield idx.tolist()


class FolderLoader(EpochBatching):
    """Iterates ``(x, y)`` on ``device``: x float32 normalised (B, C, image_size, image_size), y int64.

    Training: each epoch a permutation of the whole set; ``batch_size`` is the global batch, rank
    ``r`` takes the ``r``-th contiguous slice of it, the last incomplete global batch is dropped.
    With ``augment``: ``mode="crop"`` pads by ``image_size // 8`` and crops at random, ``resized_crop``
    cuts a random window (:func:`~recu.data.augment.random_resized_boxes`) and resizes it; both flip
    half the images. Evaluation (and training without ``augment``): in order, the whole picture
    (``crop``) or its centre ``image_size`` square (``resized_crop``).

    Args:
        images: the decoded pictures, uint8 (N, C, S, S) (kept on ``device``), or a
            :class:`~recu.data.folder.DecodedImages` that ``workers`` processes decode batch by batch.
        labels: (N,) class indices.
    """

    def __init__(self, images: Union[Tensor, DecodedImages], labels: Tensor, batch_size: int, device: Device, *,
                 train: bool, image_size: int, mode: str, augment: bool, mean: Sequence[float],
                 std: Sequence[float], seed: int = 0, rank: int = 0, world_size: int = 1, workers: int = 0) -> None:
        n = len(images)
        if labels.shape != (n,):
            raise ValueError(f"labels must be ({n},), got {tuple(labels.shape)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, world_size), got rank={rank}, world_size={world_size}")
        if train and batch_size % world_size:
            raise ValueError(f"the global batch {batch_size} must be divisible by world_size {world_size}")
        if train and batch_size > n:
            raise ValueError(f"the global batch {batch_size} exceeds the {n} training images: no full batch "
                             f"(lower batch_size)")
        self.device = torch.device(device)
        self.train, self.batch_size, self.seed = train, batch_size, int(seed)
        self.rank, self.world_size = (rank, world_size) if train else (0, 1)
        self.image_size, self.mode, self.augment = image_size, mode, augment and train
        self.mean, self.std = tuple(mean), tuple(std)
        self._coefficients = normalize_coefficients(self.mean, self.std, 1.0 / 255, self.device)
        self.labels = labels.to(torch.int64)
        self.class_names: Optional[list[str]] = None  # set by the builder: the class folders, in label order
        self.epoch = 0
        self._plan: Optional[tuple[int, tuple[Tensor, Tensor, Tensor]]] = None
        self.cached = isinstance(images, Tensor)
        if self.cached:
            self.images: Optional[Tensor] = images.to(self.device)
            self.labels = self.labels.to(self.device)
            self._workers: Optional[DataLoader] = None
        else:
            self.images = None
            self._workers = DataLoader(images, batch_sampler=_PlannedBatches(self), num_workers=workers,
                                       pin_memory=self.device.type == "cuda", persistent_workers=workers > 0)

    @property
    def dataset_size(self) -> int:
        """Samples in the whole data set (all ranks)."""
        return int(self.labels.shape[0])

    def epoch_plan(self, epoch: Optional[int] = None) -> tuple[Tensor, Tensor, Tensor]:
        """(order, crops, flips) of a training epoch for the whole data set, on the CPU: ``crops`` are
        (dy, dx) offsets (``crop``) or windows (``resized_crop``), drawn whether or not they are used."""
        epoch = self.epoch if epoch is None else epoch
        if self._plan is not None and self._plan[0] == epoch:  # one epoch asks for it several times
            return self._plan[1]
        g = epoch_generator(self.seed, epoch)
        n = self.dataset_size
        order = torch.randperm(n, generator=g)
        flips = torch.randint(0, 2, (n,), generator=g).bool()
        if self.mode == "crop":
            crops = torch.randint(0, 2 * self._pad + 1, (n, 2), generator=g)
        else:
            crops = random_resized_boxes(g, n)
        self._plan = (epoch, (order, crops, flips))
        return order, crops, flips

    @property
    def _pad(self) -> int:
        return max(1, self.image_size // 8)

    def _index_batches(self) -> Iterator[tuple[Tensor, slice]]:
        """(sample indices, their positions in the epoch plan) of each batch this rank yields."""
        if not self.train:
            for start in range(0, self.dataset_size, self.batch_size):
                yield torch.arange(start, min(start + self.batch_size, self.dataset_size)), slice(0, 0)
            return
        order = self.epoch_plan()[0]
        local = self.batch_size // self.world_size
        for step in range(len(self)):
            lo = step * self.batch_size + self.rank * local
            yield order[lo:lo + local], slice(lo, lo + local)

    def _pictures(self) -> Iterator[tuple[Tensor, Tensor]]:
        """(uint8 pictures, labels) of each batch on the device, from memory or from the workers."""
        if self.cached:
            assert self.images is not None
            for idx, _ in self._index_batches():
                idx = idx.to(self.device)
                yield self.images.index_select(0, idx), self.labels.index_select(0, idx)
            return
        assert self._workers is not None
        try:
            for x, y in self._workers:
                yield x.to(self.device, non_blocking=True), y.to(self.device, torch.int64, non_blocking=True)
        except ValueError as e:  # a file that does not decode, re-raised from a worker over many lines
            raise ValueError(worker_error_line(e)) from None

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        if self.augment:
            _, crops, flips = (t.to(self.device) for t in self.epoch_plan())
        positions = (pos for _, pos in self._index_batches())
        for (x, y), pos in zip(self._pictures(), positions):
            if self.augment and self.mode == "crop":
                x = crop_flip(x, crops[pos], flips[pos], self._pad)
            elif self.augment:
                x = resized_crop_flip(x, crops[pos], flips[pos], self.image_size)
            elif x.shape[-1] != self.image_size:  # the centre of a picture stored larger for resized crops
                m = (x.shape[-1] - self.image_size) // 2
                x = x[..., m:m + self.image_size, m:m + self.image_size]
            yield normalize(x, coefficients=self._coefficients), y

    def __repr__(self) -> str:
        kind = "train" if self.train else "eval"
        source = "memory" if self.cached else "workers"
        return (f"FolderLoader({kind}, images={self.dataset_size}, batch={self.batch_size}, mode={self.mode}, "
                f"augment={self.augment}, source={source}, device={self.device})")
