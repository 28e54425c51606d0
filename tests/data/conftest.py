"""Synthetic data sets in the original on-disk layouts, written into tmp_path."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from recu.data.cifar import md5sum


def write_cifar10(root: Path, per_batch: int = 20, test: int = 30, seed: int = 0) -> dict[str, str]:
    """A miniature cifar-10-batches-py under ``root``; returns the md5 table of its files."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = test if name == "test_batch" else per_batch
        d = {b"batch_label": name.encode(), b"labels": rng.integers(0, 10, n).tolist(),
             b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"filenames": [b"x.png"] * n}
        with open(folder / name, "wb") as f:
            pickle.dump(d, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"class{i}".encode() for i in range(10)], b"num_vis": 3072}, f)
    return {f: md5sum(folder / f) for f in os.listdir(folder)}


def write_cifar100(root: Path, train: int = 40, test: int = 20, seed: int = 1) -> dict[str, str]:
    """A miniature cifar-100-python under ``root``; returns the md5 table of its files."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for name, n in [("train", train), ("test", test)]:
        d = {b"fine_labels": rng.integers(0, 100, n).tolist(), b"coarse_labels": rng.integers(0, 20, n).tolist(),
             b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}
        with open(folder / name, "wb") as f:
            pickle.dump(d, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)],
                     b"coarse_label_names": [f"s{i}".encode() for i in range(20)]}, f)
    return {f: md5sum(folder / f) for f in os.listdir(folder)}


@pytest.fixture
def cifar10_dir(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    return tmp_path, write_cifar10(tmp_path)


@pytest.fixture
def cifar100_dir(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    return tmp_path, write_cifar100(tmp_path)


@pytest.fixture
def make_cifar10():
    """The writer itself, for tests that need the files somewhere else."""
    return write_cifar10
