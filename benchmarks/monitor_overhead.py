"""Cost of one ``DeadWeightMonitor.on_epoch_end`` call on ResNet-20-sized binary layers.

Prints milliseconds per call (median of several), to compare with the epoch time the
training engine measures. Uses ``recu.models.create("resnet20_1w1a")`` when the model
registry has it, else the 18 binary 3x3 convolutions of ResNet-20 built directly.

    python benchmarks/monitor_overhead.py [--repeats 20] [--threads N] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from torch import nn

import recu
from recu.analysis import DeadWeightMonitor


def resnet20_binary_convs() -> nn.Module:
    """The 18 binary convs of ResNet-20 (3 stages x 3 blocks x 2 convs, widths 16/32/64)."""
    shapes = []
    in_ch = 16
    for width in (16, 32, 64):
        for _ in range(3):
            shapes += [(in_ch, width), (width, width)]
            in_ch = width
    convs = nn.ModuleList(recu.ReCUConv2d(i, o, 3, padding=1) for i, o in shapes)
    for c in convs:
        nn.init.kaiming_normal_(c.weight)
    return convs


def build_model() -> tuple[nn.Module, str]:
    try:
        from recu.models import create

        return create("resnet20_1w1a"), "recu.models resnet20_1w1a"
    except (ImportError, KeyError, ValueError):
        return resnet20_binary_convs(), "18 ReCUConv2d layers (16x16x3x3 ... 64x64x3x3)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave as is)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, what = build_model()
    model.to(args.device)
    recu.set_tau(model, 0.85)
    layers = recu.binary_layers(model)
    n = sum(m.weight.numel() for _, m in layers)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    with tempfile.TemporaryDirectory() as run_dir:
        monitor = DeadWeightMonitor(since_epochs=[1])
        monitor.on_train_begin(model, run_dir, epochs=10_000)  # no middle/end snapshot in the loop
        times = []
        for epoch in range(args.repeats + 2):
            with torch.no_grad():  # a small update so some weights flip, as in training
                for _, m in layers:
                    m.weight.add_(0.01 * torch.randn_like(m.weight))
            sync()
            t0 = time.perf_counter()
            monitor.on_epoch_end(model, epoch)
            sync()
            if epoch >= 2:  # the first calls pay one-off allocation and dispatch costs
                times.append(time.perf_counter() - t0)
    ms = [t * 1e3 for t in times]
    print(f"model: {what}; {len(layers)} binary layers, {n} weights; device {args.device}; "
          f"torch threads {torch.get_num_threads()}")
    print(f"on_epoch_end: median {statistics.median(ms):.1f} ms, min {min(ms):.1f} ms, "
          f"max {max(ms):.1f} ms over {len(ms)} calls")


if __name__ == "__main__":
    main()
