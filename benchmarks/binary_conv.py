"""3x3 binary conv at ResNet-18 ImageNet shapes: packed XNOR-popcount kernel vs float32 F.conv2d.

Batch 1, stride 1, padding 1, C_in = C_out. Both sides use the same thread count (``--threads``,
default: 1 and 2). The float baseline is the faster of NCHW and channels_last input; the packed
time includes packing the float input (the layer's real cost) and, separately, the kernel alone.
Prints the ratio per shape and the achieved multiply-accumulates per cycle against this CPU's
per-core limits (``--ghz``, default 2.6 = the TSC rate this VM reports).

    python benchmarks/binary_conv.py [--threads 1 2] [--repeat 50] [--kernel avx512]
"""

from __future__ import annotations

import argparse
import platform
import subprocess

import numpy as np
import torch
import torch.nn.functional as F

from recu import functional as RF
from recu.deploy import kernels as K
from recu.deploy import pack as P
from recu.deploy.bench import time_call

SHAPES = [(64, 56), (128, 28), (256, 14), (512, 7)]

# Per core per cycle: AVX-512 VPOPCNTQ zmm issues on one port (1/cycle) and counts 512 bits;
# fp32 FMA zmm issues on two ports (2/cycle) x 16 lanes.
POPCNT_BITMACS_PER_CYCLE = 512
FMA_MACS_PER_CYCLE = 2 * 16


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name"))
    except (OSError, subprocess.SubprocessError, StopIteration):
        return platform.processor() or "unknown"


def bench_shape(c: int, hw: int, threads: int, repeat: int, kernel: str, ghz: float) -> dict:
    torch.set_num_threads(threads)
    K.set_num_threads(threads)
    x = torch.randn(1, c, hw, hw)
    xc = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(c, c, 3, 3)
    wf = RF.sign(w)
    with torch.inference_mode():
        t_nchw = time_call(lambda: F.conv2d(x, wf, padding=1), repeat, min_time=0.3)
        t_cl = time_call(lambda: F.conv2d(xc, wf, padding=1), repeat, min_time=0.3)
    t_float = min(t_nchw.median, t_cl.median)
    weights = K.PackedConvWeights(P.pack_weights(wf), c)
    weights.blocked()
    a = P.pack_activations(xc, kernel)
    out = np.empty((1, hw, hw, c), dtype=np.int32)
    assert np.array_equal(K.binary_conv2d(a, weights, 1, 1, impl=kernel),
                          F.conv2d(RF.sign(x), wf, padding=1).round().int().permute(0, 2, 3, 1).numpy())
    t_kernel = time_call(lambda: K.binary_conv2d(a, weights, 1, 1, impl=kernel, out=out), repeat, min_time=0.3)
    t_packed = time_call(lambda: K.binary_conv2d(P.pack_activations(xc, kernel), weights, 1, 1, impl=kernel, out=out),
                         repeat, min_time=0.3)
    macs = hw * hw * c * c * 9
    cycles = ghz * 1e9 * threads
    return {
        "shape": f"{c}@{hw}", "float_ms": t_float * 1e3, "packed_ms": t_packed.median * 1e3,
        "kernel_ms": t_kernel.median * 1e3, "ratio": t_float / t_packed.median,
        "float_mac_per_cycle": macs / (t_float * cycles),
        "bitmac_per_cycle": macs / (t_kernel.median * cycles),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--kernel", default="auto", choices=K.KERNELS)
    ap.add_argument("--ghz", type=float, default=2.6, help="clock used for the per-cycle figures")
    args = ap.parse_args()
    kernel = K.resolve_kernel(args.kernel)
    print(f"CPU: {cpu_model()}; kernel {kernel}; torch {torch.__version__}; medians of >= {args.repeat} calls")
    print(f"limits per core per cycle: {POPCNT_BITMACS_PER_CYCLE} binary MACs (1 vpopcntq zmm) vs "
          f"{FMA_MACS_PER_CYCLE} fp32 MACs (2 FMA zmm) -> at most {POPCNT_BITMACS_PER_CYCLE // FMA_MACS_PER_CYCLE}x")
    for threads in args.threads:
        print(f"\nthreads {threads}")
        print(f"{'shape':>8} {'float ms':>9} {'packed ms':>10} {'kernel ms':>10} {'ratio':>7} "
              f"{'fp32 MAC/cyc':>13} {'bin MAC/cyc':>12}")
        ratios = []
        for c, hw in SHAPES:
            r = bench_shape(c, hw, threads, args.repeat, kernel, args.ghz)
            ratios.append(r["ratio"])
            print(f"{r['shape']:>8} {r['float_ms']:>9.3f} {r['packed_ms']:>10.3f} {r['kernel_ms']:>10.3f} "
                  f"{r['ratio']:>6.1f}x {r['float_mac_per_cycle']:>13.1f} {r['bitmac_per_cycle']:>12.1f}")
        print(f"geometric mean ratio {float(np.exp(np.mean(np.log(ratios)))):.1f}x (target >= 10x)")


if __name__ == "__main__":
    main()
