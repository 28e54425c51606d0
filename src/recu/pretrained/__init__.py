"""Trained weights shipped inside the package: a table of what exists and where each file lies.

Standard library only, so that both ``recu.models`` (float weights, for fine-tuning) and the
1-bit runtime ``recu.deploy`` (packed weights, for inference) can use it. Each model with weights
has two files under ``recu/pretrained/files/``:

- ``checkpoint``: a recu training checkpoint holding the float (latent) weights and the model's
  ``recu_spec``; ``recu eval``, ``recu export``, ``recu analyze`` and ``init_from:`` read it as is;
- ``deploy``: its 1-bit export (``recu export``), for ``recu.deploy.load`` and ``recu bench``.

Every file's sha256 is recorded here and checked before the file is used: a damaged or swapped
file is an error, never a silently different model.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["PretrainedWeights", "PRETRAINED", "available", "info", "path"]

FileKind = Literal["checkpoint", "deploy"]


@dataclass(frozen=True)
class PretrainedWeights:
    """One shipped model: its files, their sha256, and how it was made and how well it does."""

    model: str  # name in the model registry (``recu.models.create``)
    dataset: str
    checkpoint: str  # file name under files/: recu checkpoint, float weights
    checkpoint_sha256: str
    deploy: str  # file name under files/: the 1-bit export
    deploy_sha256: str
    test_top1: float  # % on the dataset's test split, as documented in docs/results.md
    source: str  # the training run it comes from


# docs/results.md ("Pretrained models") documents each entry: the run, the accuracy, the sha256.
# Made by scripts/make_pretrained.py from the run's last.pt.
PRETRAINED: dict[str, PretrainedWeights] = {
    "resnet20_1w1a": PretrainedWeights(
        model="resnet20_1w1a", dataset="cifar10",
        checkpoint="resnet20_1w1a_cifar10.pt",
        checkpoint_sha256="b06c4041c53ca028d1e01fa1fb4d5249b80e688d609c881b5d4dbb48887f1eec",
        deploy="resnet20_1w1a_cifar10.recu",
        deploy_sha256="2e4b50a059ddb6f7b4d7b6d7de65bb1ce7e3358e5d86356c83834a4e4f983dfc",
        test_top1=84.97, source="docs/runs/r20_recu_full_e100_s0 (epoch 100 of 100)"),
}


def _files_dir() -> Path:
    return Path(__file__).resolve().parent / "files"


def available() -> list[str]:
    """Sorted names of the models that have shipped weights."""
    return sorted(PRETRAINED)


def info(name: str) -> PretrainedWeights:
    """The table entry of ``name``; a clear error names the models that have weights."""
    if name not in PRETRAINED:
        have = ", ".join(available()) or "none yet"
        raise ValueError(f"no pretrained weights for model {name!r}; models with weights: {have}")
    return PRETRAINED[name]


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def path(name: str, kind: FileKind = "checkpoint") -> Path:
    """The shipped ``checkpoint`` (float) or ``deploy`` (1-bit) file of ``name``, its sha256 checked."""
    if kind not in ("checkpoint", "deploy"):
        raise ValueError(f"kind must be 'checkpoint' or 'deploy', got {kind!r}")
    entry = info(name)
    file = _files_dir() / getattr(entry, kind)
    if not file.is_file():
        raise FileNotFoundError(f"the pretrained {kind} file of {name!r} is missing from the installed "
                                f"package ({file}); reinstall recu-bnn")
    expected = getattr(entry, f"{kind}_sha256")
    actual = _sha256(file)
    if actual != expected:
        raise ValueError(f"the pretrained {kind} file of {name!r} ({file}) has sha256 {actual}, "
                         f"expected {expected}: the file is damaged or was replaced")
    return file
