"""What the in-memory and the image-folder loaders share: epochs, sharded global batches, their counts."""

from __future__ import annotations

import math

__all__ = ["EpochBatching"]


class EpochBatching:
    """Epoch selection and batch counts of a loader whose ``batch_size`` is the global batch.

    A subclass sets ``train``, ``batch_size``, ``world_size`` and ``epoch`` and defines ``dataset_size``.
    Training drops the last incomplete global batch and each rank yields its slice of every batch;
    evaluation yields the whole set, last batch kept, on one rank.
    """

    train: bool
    batch_size: int
    world_size: int
    epoch: int

    @property
    def dataset_size(self) -> int:
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentation the next iteration uses."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    @property
    def local_batch_size(self) -> int:
        """Samples per batch on this rank."""
        return self.batch_size // self.world_size

    def __len__(self) -> int:
        if self.train:
            return self.dataset_size // self.batch_size
        return math.ceil(self.dataset_size / self.batch_size)

    @property
    def num_samples(self) -> int:
        """Samples this loader yields per epoch on this rank."""
        return len(self) * self.local_batch_size if self.train else self.dataset_size
