"""3x3 binary conv at ResNet-18 ImageNet shapes: the packed kernels vs float32 F.conv2d.

Batch 1, stride 1, padding 1, C_in = C_out. Both sides use the same thread count (``--threads``,
default: 1 and 2). The float baseline is the faster of NCHW and channels_last input. Each kernel
path (``--kernels``, default: every compiled path this CPU runs) is timed as a packed layer runs
it: from the float input (packing, or on ``amx`` writing int8 signs) to the output, and, for the
popcount paths, the kernel alone. Prints the ratio per shape and the achieved multiply-accumulates
per cycle next to this core's ceilings (``--ghz``, default 2.6 = the TSC rate this VM reports).
``RECU_DEPLOY_KERNEL`` (other than ``auto``) picks the path when ``--kernels`` is not given.

    python benchmarks/binary_conv.py [--threads 1 2] [--repeat 50] [--kernels amx avx512 avx2]

The ``avx2`` path as an AVX2-only CPU would run it, on a machine with AVX-512 (numba compiles for
Haswell; PyTorch, MKL and oneDNN are held to AVX2 so the float baseline is an AVX2 one too; see
docs/deploy.md, "The avx2 kernel")::

    NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES= NUMBA_CACHE_DIR=/tmp/nc_haswell \\
    ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 \\
    RECU_DEPLOY_KERNEL=avx2 python benchmarks/binary_conv.py --threads 1
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess

import numpy as np
import torch
import torch.nn.functional as F

from recu import functional as RF
from recu.deploy.runtime import kernels as K
from recu.deploy.runtime import pack as P
from recu.cli.bench import time_call

SHAPES = [(64, 56), (128, 28), (256, 14), (512, 7)]

# Per core per cycle on a Sapphire Rapids-class core (see docs/deploy.md):
# fp32: two 512-bit FMA ports x 16 lanes. Popcount: xor + vpopcntq + add per 512 bits, three
# 512-bit uops on the two vector ports (vpopcntq only on one): 512 / 1.5. AMX: one tdpbssd
# (16 x 16 x 64 int8 MACs) per 16 cycles.
FMA_MACS_PER_CYCLE = 32
POPCNT_BITMACS_PER_CYCLE = 512 / 1.5
AMX_MACS_PER_CYCLE = 1024
# On an AVX2 core (Haswell-Skylake client, Zen 2/3): fp32 two 256-bit FMA ports x 8 lanes. The avx2
# kernel issues 8 vector uops per 256 binary MACs (xor, the nibble lookup's and/shift/and and two
# vpshufb, two byte adds) on 3 vector ports: 256 / (8 / 3).
AVX2_FMA_MACS_PER_CYCLE = 16
AVX2_POPCNT_BITMACS_PER_CYCLE = 256 / (8 / 3)
CEILING = {"amx": AMX_MACS_PER_CYCLE, "avx512": POPCNT_BITMACS_PER_CYCLE, "avx2": AVX2_POPCNT_BITMACS_PER_CYCLE}


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name"))
    except (OSError, subprocess.SubprocessError, StopIteration):
        return platform.processor() or "unknown"


def bench_shape(c: int, hw: int, threads: int, repeat: int, kernels: list[str], ghz: float) -> dict:
    torch.set_num_threads(threads)
    K.set_num_threads(threads)
    x = torch.randn(1, c, hw, hw)
    xc = x.contiguous(memory_format=torch.channels_last)
    wf = RF.sign(torch.randn(c, c, 3, 3))
    with torch.inference_mode():
        t_nchw = time_call(lambda: F.conv2d(x, wf, padding=1), repeat, min_time=0.3)
        t_cl = time_call(lambda: F.conv2d(xc, wf, padding=1), repeat, min_time=0.3)
    t_float = min(t_nchw.median, t_cl.median)
    want = F.conv2d(RF.sign(x), wf, padding=1).round().int().permute(0, 2, 3, 1).numpy()
    weights = K.PackedConvWeights(P.pack_weights(wf), c)
    epi = K.epilogue_table(c)
    macs = hw * hw * c * c * 9
    cycles = ghz * 1e9 * threads
    row = {"shape": f"{c}@{hw}", "float_ms": t_float * 1e3,
           "float_mac_per_cycle": macs / (t_float * cycles)}
    for kernel in kernels:
        assert np.array_equal(K.binary_conv2d_float(xc, weights, 1, 1, impl=kernel), want), kernel
        out = np.empty((1, hw, hw, c), dtype=np.float32)
        t_layer = time_call(lambda: K.binary_conv2d_float(xc, weights, 1, 1, impl=kernel, epilogue=epi, out=out),
                            repeat, min_time=0.3).median
        row[kernel] = {"ms": t_layer * 1e3, "ratio": t_float / t_layer, "mac_per_cycle": macs / (t_layer * cycles)}
        if kernel != "amx":
            a = K.pack_activations(xc, kernel)
            t_kernel = time_call(lambda: K.binary_conv2d(a, weights, 1, 1, impl=kernel, epilogue=epi, out=out),
                                 repeat, min_time=0.3).median
            row[kernel]["kernel_ms"] = t_kernel * 1e3
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--kernels", nargs="+", choices=[k for k in K.KERNELS if k != "auto"],
                    help="kernel paths to time (default: RECU_DEPLOY_KERNEL when set, else amx and avx512 where this "
                         "CPU has them, else what auto picks: avx2 or portable)")
    ap.add_argument("--ghz", type=float, default=2.6, help="clock used for the per-cycle figures")
    args = ap.parse_args()
    chosen = os.environ.get(K.ENV_VAR, "auto").strip().lower()
    kernels = args.kernels or ([K.resolve_kernel(chosen)] if chosen != "auto" else None) or (
        [k for k in ("amx", "avx512") if (K.has_amx() if k == "amx" else K.has_vpopcntdq())]
        or [K.resolve_kernel("auto")])
    for k in kernels:
        K.resolve_kernel(k)  # refuse a path this CPU cannot run
    print(f"CPU: {cpu_model()}; torch {torch.__version__}; medians of >= {args.repeat} calls; "
          f"per-cycle figures at {args.ghz} GHz")
    print(f"ceilings per core per cycle: fp32 {FMA_MACS_PER_CYCLE} MACs (2 FMA zmm); popcount "
          f"{POPCNT_BITMACS_PER_CYCLE:.0f} binary MACs ({POPCNT_BITMACS_PER_CYCLE / FMA_MACS_PER_CYCLE:.1f}x fp32); "
          f"AMX-INT8 {AMX_MACS_PER_CYCLE} ({AMX_MACS_PER_CYCLE // FMA_MACS_PER_CYCLE}x fp32)")
    if "avx2" in kernels:
        print(f"on an AVX2 core: fp32 {AVX2_FMA_MACS_PER_CYCLE} MACs (2 FMA ymm); avx2 kernel "
              f"{AVX2_POPCNT_BITMACS_PER_CYCLE:.0f} binary MACs "
              f"({AVX2_POPCNT_BITMACS_PER_CYCLE / AVX2_FMA_MACS_PER_CYCLE:.1f}x fp32); PyTorch CPU capability here: "
              f"{torch.backends.cpu.get_cpu_capability()}")
    for threads in args.threads:
        print(f"\nthreads {threads}  (layer = from the float input to the float output; ratio = float / layer)")
        head = f"{'shape':>8} {'float ms':>9} {'fp32 MAC/c':>10}"
        for k in kernels:
            head += f" | {k + ' ms':>10} {'ratio':>6} {'MAC/c':>6}" + (f" {'kernel ms':>9}" if k != "amx" else "")
        print(head)
        ratios: dict[str, list[float]] = {k: [] for k in kernels}
        for c, hw in SHAPES:
            r = bench_shape(c, hw, threads, args.repeat, kernels, args.ghz)
            line = f"{r['shape']:>8} {r['float_ms']:>9.3f} {r['float_mac_per_cycle']:>10.1f}"
            for k in kernels:
                v = r[k]
                ratios[k].append(v["ratio"])
                line += f" | {v['ms']:>10.3f} {v['ratio']:>5.1f}x {v['mac_per_cycle']:>6.0f}"
                if k != "amx":
                    line += f" {v['kernel_ms']:>9.3f}"
            print(line)
        for k in kernels:
            gm = float(np.exp(np.mean(np.log(ratios[k]))))
            print(f"{k}: min ratio {min(ratios[k]):.1f}x, geometric mean {gm:.1f}x (target >= 10x at every shape)")


if __name__ == "__main__":
    main()
