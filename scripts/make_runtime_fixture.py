"""Write the fixture of the torch-free runtime test (tests_runtime/, run by .ci/run): needs PyTorch.

    python scripts/make_runtime_fixture.py OUT_DIR [--model resnet20_1w1a] [--batch 4] [--size 32] [--seed 0]

OUT_DIR receives ``model.recu`` (the model exported by :func:`recu.deploy.export`, random weights and
random BatchNorm statistics so that every folded BatchNorm matters), ``input.npy`` (float32 NCHW
random images) and ``logits.npy`` (the PyTorch model's float32 logits on them, eval mode). The
environment without PyTorch then checks that ``recu.deploy.load(model.recu)(input)`` gives them.

The input and the stem's weights are random multiples of 1/8 and 1/64 (:func:`dyadic`), so that the stem
convolution is exact in float32 in any summation order (checked here against float64). Why: one
activation next to 0 decides a sign in the next binary layer, and a random network is chaotic: with
standard-normal input, one stem output of 2e-8 whose sign PyTorch's float32 sum and a float64 sum
disagree on moved ResNet-20's logits by 32%. The runtime's rounding is tested against PyTorch in
tests/deploy; this fixture checks that the network runs without PyTorch, so rounding must not decide it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from recu import models
from recu.deploy import export

def randomize_batch_norms(model: nn.Module, generator: torch.Generator) -> None:
    """Random running statistics and affines for every BatchNorm (a fresh one folds to the identity)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                c = m.num_features
                m.running_mean.copy_(0.5 * torch.randn(c, generator=generator))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=generator))
                if m.affine:
                    m.weight.copy_(1.0 + 0.5 * torch.randn(c, generator=generator))
                    m.bias.copy_(0.3 * torch.randn(c, generator=generator))


def dyadic(t: torch.Tensor, step: float, limit: float) -> torch.Tensor:
    """``t`` rounded to a multiple of ``step`` (a power of 2) within [-limit, limit]: few mantissa bits."""
    return (t / step).round().clamp(-limit / step, limit / step) * step


def make_fixture(out_dir: Path, model_name: str = "resnet20_1w1a", batch: int = 4, size: int = 32,
                 seed: int = 0) -> dict:
    """Export a random ``model_name`` to ``out_dir`` with ``batch`` ``size`` x ``size`` input images and the
    PyTorch model's logits on them; returns the file's metadata."""
    if batch < 1 or size < 1:
        raise ValueError(f"batch and size must be >= 1, got batch {batch}, size {size}")
    torch.manual_seed(seed)  # the model's own initialisation
    model = models.create(model_name)
    randomize_batch_norms(model, torch.Generator().manual_seed(seed + 1))
    model.eval()
    stem = next(m for m in model.modules() if isinstance(m, nn.Conv2d))  # the first, full-precision conv
    x = torch.randn(batch, stem.in_channels, size, size, generator=torch.Generator().manual_seed(seed + 2))
    x = dyadic(x, 1 / 8, 4.0)
    with torch.no_grad():
        stem.weight.copy_(dyadic(stem.weight, 1 / 64, 1.0))
        exact = torch.nn.functional.conv2d(x.double(), stem.weight.double(), None, stem.stride, stem.padding)
        if not torch.equal(stem(x).double(), exact + (0 if stem.bias is None else stem.bias.double()[:, None, None])):
            raise RuntimeError("the stem convolution is not exact in float32 on this PyTorch: the fixture "
                               "would depend on rounding")
    with torch.inference_mode():
        logits = model(x).float()
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = export(model, out_dir / "model.recu")
    np.save(out_dir / "input.npy", x.numpy())
    np.save(out_dir / "logits.npy", logits.numpy())
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="folder for model.recu, input.npy and logits.npy")
    parser.add_argument("--model", default="resnet20_1w1a", help="registry model name (default: resnet20_1w1a)")
    parser.add_argument("--batch", type=int, default=4, help="images in input.npy (default: 4)")
    parser.add_argument("--size", type=int, default=32, help="image height and width (default: 32)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, statistics and input (default: 0)")
    args = parser.parse_args(argv)
    meta = make_fixture(args.out_dir, args.model, args.batch, args.size, args.seed)
    graph = "with" if meta.get("graph") else "without"
    print(f"runtime fixture: {args.out_dir} ({args.model}, {len(meta['binary_layers'])} binary layers, "
          f"{graph} network graph, batch {args.batch})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
