"""CIFAR-10/100 from the original "python version" files, md5-checked, decoded into one uint8 tensor.

The data folder is only ever read (it is often a read-only share); the decoded arrays are
cached in memory for the life of the process, never written to disk.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Union

import numpy as np
import torch
from torch import Tensor

from .augment import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CifarSpec",
    "CIFAR10",
    "CIFAR100",
    "CIFAR_SPECS",
    "ChecksumError",
    "md5sum",
    "default_download_dir",
    "resolve_cifar_dir",
    "load_cifar",
    "cifar_classes",
    "download_cifar",
]

PathLike = Union[str, "os.PathLike[str]"]

CIFAR100_MEAN = (0.507, 0.487, 0.441)
CIFAR100_STD = (0.267, 0.256, 0.276)


class ChecksumError(RuntimeError):
    """A data file exists but is not byte-identical to the original release."""


@dataclass(frozen=True)
class CifarSpec:
    """Where one CIFAR variant lives and what its files must hash to."""

    name: str
    title: str
    folder: str  # the folder the official tarball unpacks to
    env: str  # environment variable naming the data folder
    url: str
    tar_md5: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    label_key: bytes
    names_key: bytes
    num_classes: int
    md5: Mapping[str, str]
    # per-channel mean and std of the [0, 1] pixels that the loaders normalise with
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


CIFAR10 = CifarSpec(
    name="cifar10",
    title="CIFAR-10",
    folder="cifar-10-batches-py",
    env="RECU_CIFAR10_DIR",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    tar_md5="c58f30108f718f92721af3b95e74349a",
    train=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test=("test_batch",),
    meta="batches.meta",
    label_key=b"labels",
    names_key=b"label_names",
    num_classes=10,
    md5={
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
        "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    },
    # the authors normalise CIFAR-10 with the ImageNet statistics (their dataset.py; method document, section 5)
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
)

CIFAR100 = CifarSpec(
    name="cifar100",
    title="CIFAR-100",
    folder="cifar-100-python",
    env="RECU_CIFAR100_DIR",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    tar_md5="eb9058c3a382ffc7106e4002c42a8d85",
    train=("train",),
    test=("test",),
    meta="meta",
    label_key=b"fine_labels",
    names_key=b"fine_label_names",
    num_classes=100,
    md5={
        "train": "16019d7e3df5f24257cddd939b257f8d",
        "test": "f0ef6b0ae62326f3e7ffdfad4b98f7de",
        "meta": "7973b15100ade9c7d40fb424638fde48",
    },
    # CIFAR-100's own statistics, as the authors' dataset.py has them: the training set's per-channel
    # mean and std (0.5071, 0.4865, 0.4409 / 0.2673, 0.2564, 0.2762) rounded to 3 digits
    mean=CIFAR100_MEAN,
    std=CIFAR100_STD,
)

CIFAR_SPECS: dict[str, CifarSpec] = {"cifar10": CIFAR10, "cifar100": CIFAR100}


def _spec(name: Union[str, CifarSpec]) -> CifarSpec:
    if isinstance(name, CifarSpec):
        return name
    if name not in CIFAR_SPECS:
        raise ValueError(f"unknown CIFAR variant {name!r}; choose one of {sorted(CIFAR_SPECS)}")
    return CIFAR_SPECS[name]


def md5sum(path: PathLike, chunk: int = 1 << 20) -> str:
    """Hex md5 of a file, read in chunks."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@functools.lru_cache(maxsize=64)
def _md5_cached(path: str, size: int, mtime_ns: int) -> str:
    # keyed by size and mtime: a file replaced in place is hashed again
    return md5sum(path)


def _how_to_fix(spec: CifarSpec) -> str:
    return (f"Point --data-dir (or the environment variable {spec.env}) at the folder that holds "
            f"{spec.folder}/ (or at {spec.folder}/ itself), or pass download=True (--download) "
            f"to fetch {spec.url}.")


def _check_file(path: Path, expected: Optional[str], spec: CifarSpec) -> None:
    if not path.is_file():
        md5_note = f" (expected md5 {expected})" if expected else ""
        raise FileNotFoundError(f"{spec.title} file {path} is missing{md5_note}. {_how_to_fix(spec)}")
    if expected is None:
        return
    got = _md5_cached(*_file_key(path))
    if got != expected:
        raise ChecksumError(
            f"{spec.title} file {path} is corrupt or not the original release: md5 {got}, expected {expected}. "
            f"Point --data-dir (or {spec.env}) at an intact copy of {spec.folder}/, or delete the folder "
            f"and pass download=True (--download) to fetch {spec.url} again."
        )


def default_download_dir() -> Path:
    """Where ``download=True`` puts data when no folder is given: ``$XDG_CACHE_HOME/recu`` or ``~/.cache/recu``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "recu"


def resolve_cifar_dir(root: Optional[PathLike], name: Union[str, CifarSpec] = "cifar10") -> Path:
    """The folder holding the CIFAR files.

    ``root`` may be the unpacked folder itself (``.../cifar-10-batches-py``) or its parent;
    when ``None`` the environment variable (``RECU_CIFAR10_DIR`` / ``RECU_CIFAR100_DIR``) is used.
    """
    spec = _spec(name)
    if root is None:
        root = os.environ.get(spec.env)
        if not root:
            raise FileNotFoundError(f"no {spec.title} folder given and {spec.env} is not set. {_how_to_fix(spec)}")
    root = Path(root).expanduser()
    if (root / spec.folder).is_dir():
        return root / spec.folder
    return root


def _unpickle(path: Path) -> dict:
    # Only called after the md5 check (or with checks explicitly disabled): pickle runs code.
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def _file_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=4)
def _decode(files: tuple[tuple[str, int, int], ...], label_key: bytes) -> tuple[Tensor, Tensor]:
    # keyed by (path, size, mtime): a file replaced in place is decoded again
    images, labels = [], []
    for f, _, _ in files:
        d = _unpickle(Path(f))
        images.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(d[label_key], dtype=np.int64))
    x = torch.from_numpy(np.concatenate(images))
    y = torch.from_numpy(np.concatenate(labels))
    return x, y


def load_cifar(
    root: Optional[PathLike] = None,
    name: Union[str, CifarSpec] = "cifar10",
    train: bool = True,
    download: bool = False,
    checksums: Optional[Mapping[str, Optional[str]]] = None,
) -> tuple[Tensor, Tensor]:
    """Read one split of CIFAR-10/100.

    Args:
        root: data folder (see :func:`resolve_cifar_dir`); ``None`` uses the environment variable.
        name: ``"cifar10"`` or ``"cifar100"`` (or a :class:`CifarSpec`).
        train: the training split (50,000 images) or the test split (10,000).
        download: fetch and unpack the official tarball into ``root`` when files are missing.
        checksums: md5 per file name, overriding the official table (tests, mirrors); a
            value of ``None`` skips that file's check, a name not given keeps the official md5.

    Returns:
        ``(images, labels)``: uint8 (N, 3, 32, 32) and int64 (N,). The tensors are shared
        by later calls in the same process: do not modify them in place.

    Raises:
        FileNotFoundError: a file is missing (the message names it and says what to do).
        ChecksumError: a file's md5 differs from the original release.
    """
    spec = _spec(name)
    md5 = {**spec.md5, **(checksums or {})}
    if download and root is None and not os.environ.get(spec.env):
        root = default_download_dir()
    folder = resolve_cifar_dir(root, spec)
    files = spec.train if train else spec.test
    needed = [*files, spec.meta]
    if download and not all((folder / f).is_file() for f in needed):
        # the tarball unpacks to <base>/<spec.folder>; root may name either of the two
        base = folder.parent if folder.name == spec.folder else folder
        folder = download_cifar(base, spec)
    for f in needed:
        _check_file(folder / f, md5.get(f), spec)
    x, y = _decode(tuple(_file_key(folder / f) for f in files), spec.label_key)
    if y.min() < 0 or y.max() >= spec.num_classes:
        raise ValueError(f"{spec.title} labels in {folder} lie outside [0, {spec.num_classes})")
    return x, y


def cifar_classes(root: Optional[PathLike] = None, name: Union[str, CifarSpec] = "cifar10",
                  checksums: Optional[Mapping[str, Optional[str]]] = None) -> list[str]:
    """Class names from the meta file, in label order."""
    spec = _spec(name)
    md5 = {**spec.md5, **(checksums or {})}
    path = resolve_cifar_dir(root, spec) / spec.meta
    _check_file(path, md5.get(spec.meta), spec)
    return [n.decode() if isinstance(n, bytes) else str(n) for n in _unpickle(path)[spec.names_key]]


def download_cifar(root: PathLike, name: Union[str, CifarSpec] = "cifar10", url: Optional[str] = None,
                   md5: Optional[str] = None, timeout: float = 60.0) -> Path:
    """Fetch the official tarball into ``root``, check its md5 and unpack it; returns the data folder.

    Raises:
        RuntimeError: the download failed (offline, blocked) or the tarball's md5 is wrong.
        PermissionError: ``root`` is not writable.
    """
    spec = _spec(name)
    url = url or spec.url
    md5 = md5 or spec.tar_md5
    root = Path(root).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PermissionError(f"cannot create the download folder {root}: {e}") from e
    if not os.access(root, os.W_OK):
        raise PermissionError(f"cannot download {spec.title} into {root}: the folder is not writable")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.name}-", suffix=".tar.gz", dir=root)
    tmp = Path(tmp_name)
    try:
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                shutil.copyfileobj(resp, out, length=1 << 20)
        except (urllib.error.URLError, OSError) as e:
            raise RuntimeError(
                f"could not download {spec.title} from {url}: {e}. Without internet access, fetch the tarball "
                f"on another machine, unpack it, and point --data-dir or {spec.env} at {spec.folder}/."
            ) from e
        got = md5sum(tmp)
        if got != md5:
            raise RuntimeError(f"downloaded {url} has md5 {got}, expected {md5}: the download is corrupt; try again")
        with tarfile.open(tmp, "r:gz") as tar:
            members = tar.getmembers()
            for m in members:
                if m.name.startswith(("/", "..")) or ".." in Path(m.name).parts or not (m.isfile() or m.isdir()):
                    raise RuntimeError(f"refusing to unpack {url}: unexpected entry {m.name!r}")
            if hasattr(tarfile, "data_filter"):
                tar.extractall(root, members=members, filter="data")
            else:  # Python without extraction filters; entries were checked above
                tar.extractall(root, members=members)
    finally:
        tmp.unlink(missing_ok=True)
    folder = root / spec.folder
    if not folder.is_dir():
        raise RuntimeError(f"the tarball from {url} did not contain {spec.folder}/")
    return folder
