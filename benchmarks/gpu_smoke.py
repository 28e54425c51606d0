"""First run on a GPU machine: measure the recu training engine instead of debugging it.

    python benchmarks/gpu_smoke.py                                # cuda:0; 2-process DDP too when there are 2 GPUs
    python benchmarks/gpu_smoke.py --amp bfloat16                 # mixed precision (TrainConfig.amp)
    python benchmarks/gpu_smoke.py --device cpu --cifar-steps 2 --cifar-batch 8 \\
        --imagenet-steps 2 --imagenet-batch 2 --imagenet-size 64 --no-ddp     # a quick check on the CPU

Runs, through ``recu.train`` itself (the real engine, recipes from configs/, the dead-weight monitor on):

1. ResNet-20 (``resnet20_1w1a``), one epoch of CIFAR-10 with the paper recipe (batch 256): the real
   training set when ``RECU_CIFAR10_DIR`` is set, else generated CIFAR-shaped data on the device.
2. ResNet-18 (``resnet18_1w1a_imagenet``), ``--imagenet-steps`` steps of generated ImageNet-shaped data
   (3x224x224, 1000 classes) with the ImageNet recipe, twice (the first epoch warms cuDNN up); the
   second is reported. Generated data lives on the device: this measures the model, not JPEG decoding.
3. ``deterministic: true`` with the monitor on, a few ResNet-20 steps: the run fails if an op has no
   deterministic CUDA kernel.
4. With 2 GPUs (or ``--ddp on``): 1 and 2 again as a 2-process DDP job through torchrun, same global batch.

One line per run: ``NAME DATA: X images/s (...)``. On CUDA, ``--sync-debug`` (default on) counts the
host synchronisations CUDA reports inside the training steps (0 expected, except GradScaler's one per
step with ``--amp float16``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional
from unittest import mock

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]


class GeneratedLoader:
    """Random batches made once on the device and cycled (the loader interface of docs/interfaces.md).

    Labels are a fixed function of the batch so that the loss can fall; ``batch`` is the global
    batch, each process yields its ``batch / world_size`` slice.
    """

    def __init__(self, steps: int, batch: int, shape: tuple[int, int, int], classes: int, device: torch.device,
                 world_size: int = 1, pool: int = 4, train: bool = True) -> None:
        if batch % world_size:
            raise ValueError(f"batch {batch} must be divisible by the {world_size} processes")
        local = batch // world_size
        g = torch.Generator().manual_seed(0)
        self.batches = [(torch.randn((local, *shape), generator=g).to(device),
                         torch.randint(0, classes, (local,), generator=g).to(device)) for _ in range(min(pool, steps))]
        self.steps, self.local, self.train = steps, local, train

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return self.steps

    @property
    def num_samples(self) -> int:
        return self.steps * self.local

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for step in range(self.steps):
            yield self.batches[step % len(self.batches)]


@contextmanager
def generated_data(steps: int, shape: tuple[int, int, int], classes: int, eval_steps: int = 2) -> Iterator[None]:
    """Make the engine's ``build_loaders`` return generated data of this shape."""
    from recu.data import DataBundle

    def build(dataset: str, root: Any, batch_size: int, eval_batch_size: int, device: Any, seed: int,
              rank: int = 0, world_size: int = 1, **_: Any) -> DataBundle:
        device = torch.device(device)
        train = GeneratedLoader(steps, batch_size, shape, classes, device, world_size)
        test = GeneratedLoader(eval_steps, min(eval_batch_size, batch_size), shape, classes, device, train=False)
        return DataBundle(train, test, classes, shape)

    with mock.patch("recu.data.build_loaders", build):
        yield


@contextmanager
def count_step_syncs(enabled: bool, counts: list[int]) -> Iterator[None]:
    """Count the synchronising CUDA calls (torch.cuda.set_sync_debug_mode) inside each epoch's steps."""
    from recu.train.engine import Trainer

    if not enabled:
        yield
        return
    original = Trainer._run_steps

    def run_steps(self: Trainer, epoch: int):  # type: ignore[no-untyped-def]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                return original(self, epoch)
            finally:
                torch.cuda.set_sync_debug_mode("default")
                counts.append(sum("synchroniz" in str(w.message) for w in caught))

    with mock.patch.object(Trainer, "_run_steps", run_steps):
        yield


def _config(recipe: str, out_dir: Path, name: str, args: argparse.Namespace, extra: list[str]):  # type: ignore[no-untyped-def]
    from recu.train import TrainConfig

    overrides = [f"out_dir={out_dir}", f"name={name}", f"device={args.device}", "progress=false", "warmup_epochs=0",
                 "monitor=true", f"amp={args.amp}", f"compile={str(args.compile).lower()}", "workers=0"]
    if args.channels_last is not None:
        overrides.append(f"channels_last={str(args.channels_last).lower()}")
    return TrainConfig.from_yaml(ROOT / "configs" / recipe, overrides + extra)


def _last_record(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])


def _report(label: str, run_dir: Path, batch: int, world: int, syncs: list[int]) -> None:
    r = _last_record(run_dir)
    steps = round(r["images_per_s"] * r["epoch_time_s"] / batch)
    sync = f", host syncs in the steps: {syncs[-1]}" if syncs else ""
    print(f"{label}: {r['images_per_s']:.1f} images/s ({r['epoch_time_s']:.2f} s for {steps} steps of {batch}, "
          f"{world} process{'es' if world > 1 else ''}, train loss {r['train_loss']:.3f}{sync})", flush=True)


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def run_cifar(args: argparse.Namespace, out_dir: Path, world: int = 1) -> None:
    from recu.train import train

    syncs: list[int] = []
    real = os.environ.get("RECU_CIFAR10_DIR")
    extra = [f"batch_size={args.cifar_batch}", f"epochs={args.cifar_epochs}", "eval_batch_size=1000"]
    name = f"cifar_r20_w{world}"
    if real:
        if args.cifar_steps:
            extra.append(f"subset={args.cifar_steps * args.cifar_batch}")
        with count_step_syncs(args.sync_debug, syncs):
            train(_config("cifar10_resnet20.yaml", out_dir, name, args, extra))
        label = "resnet20_1w1a cifar10 (RECU_CIFAR10_DIR)"
    else:
        steps = args.cifar_steps or 50000 // args.cifar_batch
        with generated_data(steps, (3, 32, 32), 10), count_step_syncs(args.sync_debug, syncs):
            train(_config("cifar10_resnet20.yaml", out_dir, name, args, extra))
        label = "resnet20_1w1a cifar10 (generated)"
    if _is_main():
        _report(label + (" DDP" if world > 1 else ""), out_dir / name, args.cifar_batch, world, syncs)


def run_imagenet(args: argparse.Namespace, out_dir: Path, world: int = 1) -> None:
    from recu.train import train

    syncs: list[int] = []
    size = args.imagenet_size
    name = f"imagenet_r18_w{world}"
    extra = [f"batch_size={args.imagenet_batch}", "epochs=2", f"eval_batch_size={args.imagenet_batch}"]
    with generated_data(args.imagenet_steps, (3, size, size), 1000), count_step_syncs(args.sync_debug, syncs):
        train(_config("imagenet_resnet18.yaml", out_dir, name, args, extra))
    if _is_main():
        _report(f"resnet18_1w1a_imagenet generated {size}x{size}" + (" DDP" if world > 1 else ""),
                out_dir / name, args.imagenet_batch, world, syncs)


def run_deterministic(args: argparse.Namespace, out_dir: Path) -> None:
    from recu.train import train

    steps = 3
    extra = [f"batch_size={args.cifar_batch}", "epochs=2", "deterministic=true"]
    try:
        with generated_data(steps, (3, 32, 32), 10):
            train(_config("cifar10_resnet20.yaml", out_dir, "deterministic", args, extra))
    finally:
        torch.use_deterministic_algorithms(False)  # the engine sets it for the whole process
    monitor = _last_record(out_dir / "deterministic").get("monitor", {})
    assert "dead_weight" in monitor, "the dead-weight monitor did not run"
    _report("resnet20_1w1a deterministic+monitor", out_dir / "deterministic", args.cifar_batch, 1, [])


def _ddp(args: argparse.Namespace, which: str, out_dir: Path) -> None:
    """Run ``which`` (cifar or imagenet) as a 2-process torchrun job."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(Path(__file__).resolve()), "--ddp-child", which, "--out-dir", str(out_dir)] + _passthrough(args)
    subprocess.run(cmd, check=True)


def _passthrough(args: argparse.Namespace) -> list[str]:
    out = ["--device", "auto" if args.device.startswith("cuda") else args.device, "--amp", args.amp,
           "--cifar-batch", str(args.cifar_batch), "--cifar-epochs", str(args.cifar_epochs),
           "--imagenet-steps", str(args.imagenet_steps), "--imagenet-batch", str(args.imagenet_batch),
           "--imagenet-size", str(args.imagenet_size)]
    if args.cifar_steps:
        out += ["--cifar-steps", str(args.cifar_steps)]
    if args.compile:
        out.append("--compile")
    if args.channels_last is not None:
        out.append("--channels-last" if args.channels_last else "--no-channels-last")
    if not args.sync_debug:
        out.append("--no-sync-debug")
    return out


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cuda, cuda:1, cpu ... (default: cuda when there is one); under torchrun: auto")
    p.add_argument("--amp", default="off", choices=["off", "bfloat16", "float16"], help="TrainConfig.amp")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (TrainConfig.compile)")
    p.add_argument("--channels-last", dest="channels_last", action="store_true", default=None,
                   help="force channels-last (default: the recipe's, on)")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--cifar-batch", type=int, default=256, help="global batch (default: the recipe's 256)")
    p.add_argument("--cifar-steps", type=int, default=0, help="steps in the epoch (default: a whole epoch)")
    p.add_argument("--cifar-epochs", type=int, default=1)
    p.add_argument("--imagenet-batch", type=int, default=256, help="global batch (default 256; the recipe: 512 on 8 GPUs)")
    p.add_argument("--imagenet-steps", type=int, default=20)
    p.add_argument("--imagenet-size", type=int, default=224, help="generated image side (default 224)")
    p.add_argument("--ddp", choices=["auto", "on", "off"], default="auto",
                   help="2-process DDP runs: auto = when there are 2 GPUs; on = also on the CPU (gloo)")
    p.add_argument("--no-ddp", dest="ddp", action="store_const", const="off")
    p.add_argument("--no-deterministic", action="store_true", help="skip the deterministic+monitor run")
    p.add_argument("--no-sync-debug", dest="sync_debug", action="store_false", default=True,
                   help="do not count CUDA host synchronisations in the training steps")
    p.add_argument("--out-dir", help="keep the run directories here (default: a temporary folder)")
    p.add_argument("--ddp-child", choices=["cifar", "imagenet"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.sync_debug = args.sync_debug and args.device.startswith(("cuda", "auto")) and torch.cuda.is_available()
    return args


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before cuBLAS starts: deterministic run
    if args.ddp_child:
        out = Path(args.out_dir)
        (run_cifar if args.ddp_child == "cifar" else run_imagenet)(args, out, world=int(os.environ["WORLD_SIZE"]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out_dir) if args.out_dir else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "CPU"
        print(f"# recu gpu_smoke: torch {torch.__version__}, device {args.device} ({name}), {gpus} GPU(s), "
              f"amp {args.amp}, compile {args.compile}", flush=True)
        run_cifar(args, out)
        run_imagenet(args, out)
        if not args.no_deterministic:
            run_deterministic(args, out)
        if args.ddp == "on" or (args.ddp == "auto" and gpus >= 2):
            _ddp(args, "cifar", out)
            _ddp(args, "imagenet", out)
        elif args.ddp == "auto":
            print("# DDP: skipped (fewer than 2 GPUs)", flush=True)


if __name__ == "__main__":
    main()
