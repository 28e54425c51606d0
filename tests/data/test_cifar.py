"""CIFAR reader on miniature files in the original layout: md5 checks, messages, download, loaders."""

from __future__ import annotations

import dataclasses
import io
import tarfile
import urllib.error
from pathlib import Path

import pytest
import torch

import recu.data.cifar as C
from recu.data import DataBundle, build_loaders, build_test_loader
from recu.data.cifar import CIFAR10, ChecksumError, cifar_classes, download_cifar, load_cifar, md5sum


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


def test_reads_cifar10_layout(cifar10_dir):
    root, md5 = cifar10_dir
    before = snapshot(root / "cifar-10-batches-py")
    x, y = load_cifar(root, checksums=md5)
    assert x.shape == (100, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
    xt, yt = load_cifar(root / "cifar-10-batches-py", train=False, checksums=md5)  # the folder itself works too
    assert xt.shape == (30, 3, 32, 32)
    # pixel layout: the 3072 bytes are R plane, G plane, B plane, each row-major
    import pickle

    with open(root / "cifar-10-batches-py" / "data_batch_2", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    assert torch.equal(x[20:40].reshape(20, -1), torch.from_numpy(raw[b"data"]))
    assert y[20:40].tolist() == raw[b"labels"]
    assert cifar_classes(root, checksums=md5) == [f"class{i}" for i in range(10)]
    assert snapshot(root / "cifar-10-batches-py") == before and len(list(root.iterdir())) == 1  # nothing written


def test_reads_cifar100_layout(cifar100_dir):
    root, md5 = cifar100_dir
    x, y = load_cifar(root, "cifar100", checksums=md5)
    assert x.shape == (40, 3, 32, 32) and int(y.max()) < 100
    assert load_cifar(root, "cifar100", train=False, checksums=md5)[0].shape == (20, 3, 32, 32)
    assert len(cifar_classes(root, "cifar100", checksums=md5)) == 100


def test_missing_file_message(cifar10_dir):
    root, md5 = cifar10_dir
    (root / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(FileNotFoundError) as err:
        load_cifar(root, checksums=md5)
    msg = str(err.value)
    assert "data_batch_4" in msg and md5["data_batch_4"] in msg
    assert "RECU_CIFAR10_DIR" in msg and "--data-dir" in msg and "download=True" in msg
    load_cifar(root, train=False, checksums=md5)  # the test split does not need the missing file


def test_corrupt_file_message(cifar10_dir):
    root, md5 = cifar10_dir
    path = root / "cifar-10-batches-py" / "test_batch"
    data = bytearray(path.read_bytes())
    data[-10] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError) as err:
        load_cifar(root, train=False, checksums=md5)
    msg = str(err.value)
    assert "test_batch" in msg and md5["test_batch"] in msg and md5sum(path) in msg and "download=True" in msg


def test_official_md5_table_rejects_other_files(cifar10_dir):
    root, _ = cifar10_dir
    with pytest.raises(ChecksumError, match=CIFAR10.md5["data_batch_1"]):
        load_cifar(root)


def test_md5_none_skips_a_check(cifar10_dir):
    root, md5 = cifar10_dir
    x, _ = load_cifar(root, train=False, checksums={**md5, "test_batch": None})
    assert x.shape[0] == 30


def test_environment_variable(cifar10_dir, monkeypatch):
    root, md5 = cifar10_dir
    monkeypatch.delenv("RECU_CIFAR10_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="RECU_CIFAR10_DIR is not set"):
        load_cifar(None, checksums=md5)
    monkeypatch.setenv("RECU_CIFAR10_DIR", str(root / "cifar-10-batches-py"))
    assert load_cifar(None, train=False, checksums=md5)[0].shape[0] == 30


def test_unknown_variant():
    with pytest.raises(ValueError, match="cifar10"):
        load_cifar("/nonexistent", "cifar11")


def test_download_offline_fails_clearly(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(C.urllib.request, "urlopen", offline)
    with pytest.raises(RuntimeError) as err:
        load_cifar(tmp_path / "data", download=True)
    msg = str(err.value)
    assert "could not download CIFAR-10" in msg and CIFAR10.url in msg and "RECU_CIFAR10_DIR" in msg
    assert list((tmp_path / "data").iterdir()) == []  # no partial tarball left behind


def _tarball(tmp_path: Path, write_cifar10) -> tuple[Path, dict[str, str]]:
    src = tmp_path / "src"
    md5 = write_cifar10(src)
    tar_path = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return tar_path, md5


def test_download_checks_md5_and_unpacks(tmp_path, monkeypatch, make_cifar10):
    tar_path, md5 = _tarball(tmp_path, make_cifar10)
    spec = dataclasses.replace(CIFAR10, url=tar_path.as_uri(), tar_md5=md5sum(tar_path), md5=md5)
    monkeypatch.setitem(C.CIFAR_SPECS, "cifar10", spec)
    dest = tmp_path / "dest"
    x, y = load_cifar(dest, download=True)
    assert x.shape == (100, 3, 32, 32) and (dest / "cifar-10-batches-py" / "batches.meta").is_file()
    assert sorted(p.name for p in dest.iterdir()) == ["cifar-10-batches-py"]
    with pytest.raises(RuntimeError, match="md5"):
        download_cifar(tmp_path / "other", spec, md5="0" * 32)


def test_download_refuses_unsafe_tarball(tmp_path):
    tar_path = tmp_path / "evil.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(RuntimeError, match="unexpected entry"):
        download_cifar(tmp_path / "d", "cifar10", url=tar_path.as_uri(), md5=md5sum(tar_path))
    assert not (tmp_path / "escape.txt").exists()


def test_build_loaders_on_cifar_layout(cifar10_dir, monkeypatch):
    root, md5 = cifar10_dir
    monkeypatch.setitem(C.CIFAR_SPECS, "cifar10", dataclasses.replace(CIFAR10, md5=md5))
    bundle = build_loaders("cifar10", str(root), 32, 25, "cpu", seed=0)
    assert isinstance(bundle, DataBundle)
    assert bundle.num_classes == 10 and bundle.input_size == (3, 32, 32)
    assert len(bundle.train) == 3 and bundle.train.num_samples == 96
    assert len(bundle.test) == 2 and bundle.test.num_samples == 30
    names = [f"class{i}" for i in range(10)]  # the meta file's names, in label order
    assert bundle.class_names == bundle.train.class_names == bundle.test.class_names == names
    x, y = next(iter(bundle.train))
    assert x.shape == (32, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    sub = build_loaders("cifar10", str(root), 8, 25, "cpu", seed=0, subset=40)
    assert sub.train.dataset_size == 40 and sub.test.num_samples == 30
    again = build_loaders("cifar10", str(root), 8, 25, "cpu", seed=9, subset=40)
    assert torch.equal(sub.train.images, again.train.images)  # the subset does not follow the run seed
    with pytest.raises(ValueError, match="subset"):
        build_loaders("cifar10", str(root), 8, 25, "cpu", seed=0, subset=101)


def test_build_test_loader_reads_only_the_test_split(cifar10_dir, monkeypatch):
    root, md5 = cifar10_dir
    monkeypatch.setitem(C.CIFAR_SPECS, "cifar10", dataclasses.replace(CIFAR10, md5=md5))
    want = build_loaders("cifar10", str(root), 8, 25, "cpu", seed=0).test
    for i in range(1, 6):  # `recu eval` must not need (or md5-check) the training split
        (root / "cifar-10-batches-py" / f"data_batch_{i}").unlink()
    test = build_test_loader("cifar10", str(root), 25, "cpu")
    assert test.num_samples == 30 and len(test) == 2 and test.class_names == [f"class{i}" for i in range(10)]
    for (x, y), (xw, yw) in zip(test, want):
        assert torch.equal(x, xw) and torch.equal(y, yw)
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        build_loaders("cifar10", str(root), 8, 25, "cpu", seed=0)
    with pytest.raises(ValueError, match="cifar10"):
        build_test_loader("mnist", None, 8, "cpu")


def test_build_loaders_unknown_dataset():
    with pytest.raises(ValueError, match="cifar10"):
        build_loaders("mnist", None, 8, 8, "cpu", 0)


# The authors' dataset.py normalises CIFAR-100 with (0.507, 0.487, 0.441) / (0.267, 0.256, 0.276) and
# CIFAR-10 with the ImageNet (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225); written out here on purpose.
AUTHORS_CIFAR100_MEAN, AUTHORS_CIFAR100_STD = (0.507, 0.487, 0.441), (0.267, 0.256, 0.276)


def _write_two_level_cifar100(root: Path, n: int = 8) -> dict[str, str]:
    """A cifar-100-python whose channel c takes two values, 255 (m_c -/+ s_c), in equal numbers:
    pixel mean m_c and std s_c (to rounding) for the authors' CIFAR-100 statistics (m, s)."""
    import pickle

    import numpy as np

    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    images = np.empty((n, 3, 32, 32), dtype=np.uint8)
    checker = (np.add.outer(np.arange(32), np.arange(32)) % 2).astype(bool)
    for c, (m, s) in enumerate(zip(AUTHORS_CIFAR100_MEAN, AUTHORS_CIFAR100_STD)):
        low, high = round(255 * (m - s)), round(255 * (m + s))
        images[:, c] = np.where(checker, high, low)
    for name in ("train", "test"):
        with open(folder / name, "wb") as f:
            pickle.dump({b"fine_labels": [i % 100 for i in range(n)], b"data": images.reshape(n, -1)}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}, f)
    return {f.name: md5sum(f) for f in folder.iterdir()}


def test_cifar100_is_normalised_with_its_own_statistics(tmp_path, monkeypatch):
    md5 = _write_two_level_cifar100(tmp_path)
    monkeypatch.setitem(C.CIFAR_SPECS, "cifar100", dataclasses.replace(C.CIFAR100, md5=md5))
    assert C.CIFAR100.mean == AUTHORS_CIFAR100_MEAN and C.CIFAR100.std == AUTHORS_CIFAR100_STD
    bundle = build_loaders("cifar100", str(tmp_path), 4, 8, "cpu", seed=0, augment=False)
    for x in (next(iter(bundle.test))[0], next(iter(bundle.train))[0],
              next(iter(build_test_loader("cifar100", str(tmp_path), 8, "cpu")))[0]):
        # data with the statistics the loader normalises with come out with mean 0 and std 1
        # (to the 1/255 rounding of the two levels); with ImageNet's they would not (0.10-0.16 and 1.17-1.23)
        mean, std = x.double().mean(dim=(0, 2, 3)), x.double().std(dim=(0, 2, 3), unbiased=False)
        assert torch.allclose(mean, torch.zeros(3, dtype=torch.float64), atol=0.01)
        assert torch.allclose(std, torch.ones(3, dtype=torch.float64), atol=0.01)
    raw = load_cifar(tmp_path, "cifar100", train=False, checksums=md5)[0][:8].double() / 255
    m = torch.tensor(AUTHORS_CIFAR100_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    s = torch.tensor(AUTHORS_CIFAR100_STD, dtype=torch.float64).view(1, 3, 1, 1)
    assert torch.allclose(next(iter(bundle.test))[0].double(), (raw - m) / s, atol=1e-5)


def test_cifar10_keeps_the_imagenet_statistics(cifar10_dir, monkeypatch):
    root, md5 = cifar10_dir
    monkeypatch.setitem(C.CIFAR_SPECS, "cifar10", dataclasses.replace(CIFAR10, md5=md5))
    x = next(iter(build_test_loader("cifar10", str(root), 30, "cpu")))[0].double()
    raw = load_cifar(root, "cifar10", train=False, checksums=md5)[0].double() / 255
    m = torch.tensor((0.485, 0.456, 0.406), dtype=torch.float64).view(1, 3, 1, 1)
    s = torch.tensor((0.229, 0.224, 0.225), dtype=torch.float64).view(1, 3, 1, 1)
    assert torch.allclose(x, (raw - m) / s, atol=1e-5)
