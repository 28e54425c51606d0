"""A loader for data sets that fit in device memory (CIFAR, digits): no workers, no copies per step.

The images live on the training device as one uint8 tensor; each step gathers its batch,
crops, flips and normalises it there (:mod:`recu.data.augment`).
"""

from __future__ import annotations

from typing import Iterator, Optional, Sequence, Union

import torch
from torch import Tensor

from ._batches import EpochBatching
from .augment import crop_flip, epoch_generator, normalize, normalize_coefficients

__all__ = ["InMemoryLoader"]

Device = Union[str, torch.device]


class InMemoryLoader(EpochBatching):
    """Iterates ``(x, y)`` on ``device``: x float32 normalised (B, C, H, W), y int64 (B,).

    Training (``train=True``): each epoch is a permutation of the whole data set drawn from
    a generator seeded by (seed, epoch) (set with :meth:`set_epoch`); ``batch_size`` is the
    global batch and rank ``r`` of ``world_size`` yields the ``r``-th contiguous slice of it;
    the last incomplete global batch is dropped. Crop offsets and flips are drawn for every
    position of the epoch from the same generator, so they too do not depend on
    ``world_size``.

    Evaluation (``train=False``): the data set in order, unsharded, last batch kept, no
    augmentation.

    Args:
        images: (N, C, H, W) integer pixels (uint8 for CIFAR) or floats, scaled by ``scale``.
        labels: (N,) class indices.
        batch_size: global batch (training) or batch (evaluation).
        device: where batches are made and returned.
        train: training or evaluation behaviour, see above.
        seed: run seed; the epoch's stream is seeded from (seed, epoch).
        rank, world_size: this process's place among the data-parallel processes.
        augment: random crop (zero padding ``pad``) and, if ``flip``, horizontal flip.
        mean, std: per-channel normalisation applied after ``scale``.
        scale: factor taking the stored pixels to [0, 1].
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        device: Device,
        *,
        train: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        augment: bool = True,
        pad: int = 4,
        flip: bool = True,
        mean: Sequence[float],
        std: Sequence[float],
        scale: float = 1.0 / 255,
    ) -> None:
        if images.dim() != 4 or labels.dim() != 1 or images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"images must be (N, C, H, W) and labels (N,), got {tuple(images.shape)} and {tuple(labels.shape)}"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, world_size), got rank={rank}, world_size={world_size}")
        n = images.shape[0]
        if train:
            if batch_size % world_size:
                raise ValueError(f"the global batch {batch_size} must be divisible by world_size {world_size}")
            if batch_size > n:
                raise ValueError(f"the global batch {batch_size} exceeds the {n} training samples: no full batch")
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device, torch.int64)
        self.batch_size = batch_size
        self.train = train
        self.seed = int(seed)
        self.rank = rank if train else 0
        self.world_size = world_size if train else 1
        self.augment = augment and train
        self.pad = pad
        self.flip = flip
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.scale = scale
        self._coefficients = normalize_coefficients(self.mean, self.std, scale, self.device)
        if self._coefficients[0].shape[1] != images.shape[1]:
            raise ValueError(f"mean/std have {len(self.mean)} entries for {images.shape[1]} image channels")
        self.epoch = 0

    @property
    def dataset_size(self) -> int:
        """Samples in the whole data set (all ranks)."""
        return int(self.images.shape[0])

    def epoch_plan(self, epoch: Optional[int] = None) -> tuple[Tensor, Tensor, Tensor]:
        """(order, offsets, flips) of a training epoch for the GLOBAL data set, on the CPU.

        ``order[p]`` is the sample at position ``p``; ``offsets[p]`` its (dy, dx) crop corner
        in the padded image and ``flips[p]`` whether it is mirrored.
        """
        g = epoch_generator(self.seed, self.epoch if epoch is None else epoch)
        n = self.dataset_size
        order = torch.randperm(n, generator=g)
        # Always drawn, so switching augmentation off or on does not change the order stream.
        offsets = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=g)
        flips = torch.randint(0, 2, (n,), generator=g).bool()
        if not self.flip:
            flips.zero_()
        return order, offsets, flips

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        if not self.train:
            for start in range(0, self.dataset_size, self.batch_size):
                x = self.images[start:start + self.batch_size]
                yield normalize(x, coefficients=self._coefficients), self.labels[start:start + self.batch_size]
            return
        order, offsets, flips = (t.to(self.device) for t in self.epoch_plan())
        local = self.local_batch_size
        for step in range(len(self)):
            lo = step * self.batch_size + self.rank * local
            pos = slice(lo, lo + local)
            idx = order[pos]
            x = self.images.index_select(0, idx)
            if self.augment:
                x = crop_flip(x, offsets[pos], flips[pos], self.pad)
            yield normalize(x, coefficients=self._coefficients), self.labels.index_select(0, idx)

    def __repr__(self) -> str:
        kind = "train" if self.train else "eval"
        return (f"InMemoryLoader({kind}, samples={self.dataset_size}, batch={self.batch_size}, "
                f"rank={self.rank}/{self.world_size}, augment={self.augment}, device={self.device})")
