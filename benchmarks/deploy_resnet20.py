"""End-to-end ResNet-20 (CIFAR-10, 32x32): the deployed 1-bit model vs the full-precision ResNet-20.

The deployed model is ``resnet20_1w1a`` exported and loaded with :func:`recu.deploy.load` - the
compiled plan, the whole network in one numba call (``--engine layers``: the per-layer PyTorch
model). The baseline is ``resnet20_fp`` as a user would run it: PyTorch float32 eager (the faster of
NCHW and channels_last) and under ``torch.compile``, with the same thread count. Issue 11's targets at
batch 1: at least 10x faster than the faster float on 1 thread, at least 8x on 2 threads.

Each line is printed next to the CPU's limit: the model's MACs (counted from the exported graph)
at the peak rate of each binary layer's kernel path and of float32 FMA, at the nominal clock
(``recu.cli.bench``; docs/deploy.md).

    python benchmarks/deploy_resnet20.py [--threads 1 2] [--batch 1 8 64] [--repeat 20] [--no-compile]
        [--engine plan|layers] [--kernel amx|avx512|avx2|portable] [--float-twin] [--per-layer]
"""

from __future__ import annotations

from typing import Optional

from _common import parse_args, run


def target(path: Optional[str], threads: int) -> Optional[float]:
    """Issue 11: >= 10x on 1 thread, >= 8x on 2 (batch 1); it sets none for the AVX2 path on ResNet-20."""
    if path == "avx2":
        return None
    return {1: 10.0, 2: 8.0}.get(threads)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    run("resnet20_1w1a", (3, 32, 32), "ResNet-20 CIFAR-10 32x32", target, args)


if __name__ == "__main__":
    main()
