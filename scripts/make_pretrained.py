#!/usr/bin/env python
"""Turn a finished training run into the two files ``recu.pretrained`` ships, and measure them.

Writes, under ``src/recu/pretrained/files/`` (or ``--out``):

- ``<model>_<dataset>.pt``: the run's model weights and spec only (no optimiser, RNG or monitor
  state: the file is small and is what ``create(name, pretrained=True)`` and ``recu eval`` read),
  with ``compute_dtype`` set to float32 - a run trained with bf16 binary convolutions on an AMX CPU
  must not make every user's evaluation bf16;
- ``<model>_<dataset>.recu``: its 1-bit export (``recu.deploy.export``).

Then evaluates the float model on the test split, runs the 1-bit file through ``recu.deploy.load``
on the same images, counts the images whose top-1 differs, and prints the ``PRETRAINED`` entry to
paste into ``src/recu/pretrained/__init__.py`` (file names, sha256, test top-1).

Usage: RECU_CIFAR10_DIR=... python scripts/make_pretrained.py docs/runs/r20_recu_full_e100_s0/last.pt
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from recu.data import build_test_loader
from recu.deploy import export, load
from recu.models import from_spec
from recu.pretrained import _sha256 as sha256  # the digest recu.pretrained checks
from recu.train import load_checkpoint
from recu.train.checkpoint import load_model_state, save_checkpoint

FILES = Path(__file__).resolve().parents[1] / "src" / "recu" / "pretrained" / "files"


def shipped_state(state: dict, source: str) -> dict:
    """The fields of a training checkpoint a user of the weights needs, with float32 compute."""
    spec = json.loads(json.dumps(state["model_spec"]))  # deep copy of plain data
    spec.setdefault("config", {})["compute_dtype"] = "float32"
    metrics = {k: v for k, v in state.get("metrics", {}).items() if not isinstance(v, dict)}
    return {"model": state["model"], "model_spec": spec, "epoch": state["epoch"], "config": state["config"],
            "metrics": metrics, "source": source}


@torch.no_grad()
def float_and_packed_predictions(model: torch.nn.Module, packed, loader) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, float top-1 and packed top-1 over the whole loader."""
    labels, float_top1, packed_top1 = [], [], []
    for images, target in loader:
        labels.append(target.numpy())
        float_top1.append(model(images).argmax(1).numpy())
        packed_top1.append(np.asarray(packed(images.numpy())).argmax(1))
    return np.concatenate(labels), np.concatenate(float_top1), np.concatenate(packed_top1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path, help="the run's last.pt")
    p.add_argument("--out", type=Path, default=FILES, help=f"folder for the two files (default {FILES})")
    p.add_argument("--data-dir", default=None, help="test data folder (default: $RECU_CIFAR10_DIR)")
    args = p.parse_args()

    state = load_checkpoint(args.checkpoint)
    ship = shipped_state(state, source=str(args.checkpoint.parent.name))
    model = from_spec(ship["model_spec"])
    load_model_state(model, ship["model"], str(args.checkpoint))
    model.eval()
    dataset = ship["config"].get("dataset", "cifar10")
    stem = f"{ship['model_spec']['name']}_{dataset}"
    ckpt_file, deploy_file = args.out / f"{stem}.pt", args.out / f"{stem}.recu"
    args.out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(ship, ckpt_file)
    export(model, deploy_file)

    loader = build_test_loader(dataset, args.data_dir, batch_size=500, device=torch.device("cpu"), workers=0)
    labels, float_top1, packed_top1 = float_and_packed_predictions(model, load(deploy_file), loader)
    top1 = 100.0 * float((float_top1 == labels).mean())
    print(json.dumps({"images": int(labels.size), "float_top1": top1,
                      "packed_top1": 100.0 * float((packed_top1 == labels).mean()),
                      "top1_disagreements": int((float_top1 != packed_top1).sum()),
                      "checkpoint_bytes": ckpt_file.stat().st_size, "deploy_bytes": deploy_file.stat().st_size}))
    print(f"""    "{ship['model_spec']['name']}": PretrainedWeights(
        model="{ship['model_spec']['name']}", dataset="{dataset}",
        checkpoint="{ckpt_file.name}", checkpoint_sha256="{sha256(ckpt_file)}",
        deploy="{deploy_file.name}", deploy_sha256="{sha256(deploy_file)}",
        test_top1={top1:.2f}, source="{ship['source']} (epoch {ship['epoch'] + 1})"),""")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
