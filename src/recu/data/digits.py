"""scikit-learn's 8x8 handwritten digits: a data set that ships with the package, for quick starts.

1,797 grey images with pixel values 0..16, split once and for all into 1,437 training and
360 test images by a fixed seed (independent of the run seed, so every run is evaluated on
the same test images).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import Tensor

__all__ = ["DIGITS_TEST_SIZE", "DIGITS_SPLIT_SEED", "load_digits", "digits_stats"]

DIGITS_TEST_SIZE = 360
DIGITS_SPLIT_SEED = 0
DIGITS_MAX = 16  # pixel values are counts 0..16 of an 4x4 block of the original 32x32 bitmap


@functools.lru_cache(maxsize=1)
def _all() -> tuple[Tensor, Tensor]:
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as e:  # the "train" extra brings scikit-learn
        raise ImportError("the digits data set needs scikit-learn: pip install 'recu-bnn[train]'") from e
    d = sk_load_digits()
    x = torch.from_numpy(np.asarray(d.images, dtype=np.uint8)).reshape(-1, 1, 8, 8)
    y = torch.from_numpy(np.asarray(d.target, dtype=np.int64))
    return x, y


def load_digits(train: bool = True) -> tuple[Tensor, Tensor]:
    """``(images, labels)`` of one split: uint8 (N, 1, 8, 8) with values 0..16, int64 (N,).

    Shared between calls: do not modify in place.
    """
    x, y = _all()
    g = torch.Generator().manual_seed(DIGITS_SPLIT_SEED)
    perm = torch.randperm(x.shape[0], generator=g)
    idx = perm[DIGITS_TEST_SIZE:] if train else perm[:DIGITS_TEST_SIZE]
    return x[idx], y[idx]


def digits_stats() -> tuple[float, float]:
    """Mean and std of the training images scaled to [0, 1] (the normalisation constants)."""
    x, _ = load_digits(train=True)
    v = x.double() / DIGITS_MAX
    return float(v.mean()), float(v.std())
