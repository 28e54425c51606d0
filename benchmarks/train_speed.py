"""Training throughput of `recu` against the authors' ReCU layer, in the same process.

The baseline is an eager re-implementation of the authors' `BinarizeConv2d` (method document,
section 1), including its per-layer `.item()` host sync, in float32 and the default NCHW layout, as
their scripts run it. `recu` runs the same architecture with its own layer, channels-last memory,
`torch.compile` and bfloat16 operands for the binary convolutions (+-1 are exact in bfloat16). Both train the same model (SGD step included) on random CIFAR-sized batches.

    python benchmarks/train_speed.py                 # ResNet-20 and VGG-Small on the CPU
    python benchmarks/train_speed.py --device cuda   # on a GPU

Prints images/s for each and the ratio recu / authors.
"""

from __future__ import annotations

import argparse
import copy
import math
import platform
import time

import torch
import torch.nn.functional as F
from torch import nn

import recu
from recu.models import create
from recu.nn import BinaryLayer


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.sign(x)

    @staticmethod
    def backward(ctx, g):
        return g


class _SignApprox(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.sign(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (2 - 2 * x.abs()).clamp(min=0)


class AuthorsConv2d(nn.Conv2d):
    """The authors' layer as their scripts run it: eager, NCHW, Q moved to the host with .item()."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.alpha = nn.Parameter(torch.rand(self.weight.size(0), 1, 1))
        self.register_buffer("tau", torch.tensor(1.0))

    def forward(self, a):
        w = self.weight
        w0 = w - w.mean([1, 2, 3], keepdim=True)
        w1 = w0 / (torch.sqrt(w0.var([1, 2, 3], keepdim=True) + 1e-5) / 2 / math.sqrt(2))
        q = (-w1.abs().mean() * torch.log(2 - 2 * self.tau)).detach().cpu().item()
        w2 = torch.clamp(w1, -q, q)
        if self.training:
            a = a / torch.sqrt(a.var([1, 2, 3], keepdim=True) + 1e-5)
        out = F.conv2d(_SignApprox.apply(a), _SignSTE.apply(w2), None, self.stride, self.padding)
        return out * self.alpha


def authors_model(model: nn.Module) -> nn.Module:
    model = copy.deepcopy(model)
    for name, m in list(model.named_modules()):
        if isinstance(m, BinaryLayer):
            new = AuthorsConv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, bias=False)
            with torch.no_grad():
                new.weight.copy_(m.weight)
                new.alpha.copy_(m.alpha)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, new)
    return model


def images_per_s(model: nn.Module, batch: int, steps: int, device: torch.device, channels_last: bool,
                 compile_model: bool) -> tuple[float, float]:
    """(steady-state images/s, seconds of the first step including compilation)."""
    model = model.to(device)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    for m in model.modules():
        if hasattr(m, "tau"):
            m.tau.fill_(0.9)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    net = torch.compile(model) if compile_model else model

    def step() -> None:
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t = time.perf_counter()
    step()
    sync()
    first = time.perf_counter() - t
    step()
    times = []
    for _ in range(steps):
        sync()
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
    times.sort()
    return batch / times[len(times) // 2], first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="+", default=["resnet20_1w1a", "vgg_small_1w1a"])
    parser.add_argument("--batch", type=int, default=256, help="the CIFAR recipes' batch (default 256)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true", help="recu eager with channels-last only")
    parser.add_argument("--binary-dtype", default="bfloat16", choices=["float32", "bfloat16"],
                        help="operand type of recu's binary convolutions (BinaryConfig.compute_dtype)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {device}, batch {args.batch}, recu {recu.__version__}")
    print(f"# recu: channels-last, torch.compile={not args.no_compile}, binary operands {args.binary_dtype}")
    print("model,authors_img_s,recu_eager_cl_img_s,recu_img_s,ratio_recu_vs_authors,recu_first_step_s")
    for name in args.models:
        model = create(name, config=recu.BinaryConfig(compute_dtype=args.binary_dtype))
        base, _ = images_per_s(authors_model(model), args.batch, args.steps, device, False, False)
        eager, _ = images_per_s(copy.deepcopy(model), args.batch, args.steps, device, True, False)
        if args.no_compile:
            fast, first = eager, 0.0
        else:
            fast, first = images_per_s(copy.deepcopy(model), args.batch, args.steps, device, True, True)
        print(f"{name},{base:.1f},{eager:.1f},{fast:.1f},{fast / base:.2f},{first:.1f}", flush=True)


if __name__ == "__main__":
    main()
