"""End-to-end ResNet-18 (ImageNet, 224x224): packed 1-bit model vs the same model in PyTorch float32.

Baselines, all with the same thread count (``--threads``, default 1 and 2):

- ``eager``: the loaded network with each packed layer replaced by its float32 twin
  ``conv2d(sign(x), w) * scale + bias`` (same function, same float parts; PyTorch gets its faster
  memory format) - the like-for-like comparison;
- ``compile``: ``torch.compile`` of that twin, where a compiler toolchain is available;
- ``fp_resnet18``: the full-precision ``resnet18_fp_imagenet`` in eager mode (what one would deploy
  without binarisation).

    python benchmarks/deploy_resnet.py [--threads 1 2] [--batch 1] [--repeat 20] [--no-compile] [--fuse-float]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from recu import models
from recu.deploy import export, load
from recu.deploy.bench import format_result, run_benchmark, time_call

SHAPE = (3, 224, 224)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch", type=int, nargs="+", default=[1])
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--per-layer", action="store_true", help="print the per-layer table")
    ap.add_argument("--fuse-float", action="store_true",
                    help="load with fuse_float=True (BN folded into the float stem/downsample convs too)")
    args = ap.parse_args()

    model = models.create("resnet18_1w1a_imagenet", num_classes=1000).eval()
    fp = models.create("resnet18_fp_imagenet", num_classes=1000).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r18.recu"
        export(model, path)
        packed = load(path, fuse_float=args.fuse_float)
    for threads in args.threads:
        res = run_benchmark(packed, SHAPE, tuple(args.batch), threads=threads, repeat=args.repeat,
                            use_compile=not args.no_compile, per_layer=args.per_layer)
        torch.set_num_threads(threads)
        print(f"\n=== ResNet-18 ImageNet 224x224, threads {threads}")
        text = format_result(res)
        print(text if args.per_layer else text.split("\n\n")[0])
        for b in args.batch:
            x = torch.randn(b, *SHAPE)
            with torch.inference_mode():
                xc = x.contiguous(memory_format=torch.channels_last)
                t_fp = min(time_call(lambda x=x: fp(x), args.repeat).median,
                           time_call(lambda xc=xc: fp(xc), args.repeat).median)
            t_packed = res.timings[b]["packed"].median
            print(f"batch {b}: packed {t_packed * 1e3:.2f} ms; float twin {res.timings[b]['eager'].median * 1e3:.2f} ms "
                  f"({res.timings[b]['eager'].median / t_packed:.2f}x); resnet18_fp_imagenet {t_fp * 1e3:.2f} ms "
                  f"({t_fp / t_packed:.2f}x) (target >= 3x)")


if __name__ == "__main__":
    main()
