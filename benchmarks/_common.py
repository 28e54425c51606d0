"""The driver shared by ``deploy_resnet20.py`` and ``deploy_resnet.py``: a registry binary model,
exported and loaded as a deployment would, timed against its full-precision registry twin.

The measuring, the CPU description, the op counts and the peak model live in
:mod:`recu.cli.bench`; this file only parses the command line and loops over thread counts.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Callable, Optional, Sequence

from recu import models
from recu.deploy import export, load
from recu.cli.bench import engine_of, format_result, format_summary, fp_twin, run_benchmark

# (kernel path most binary layers run, threads) -> the minimum batch-1 ratio, or None.
TargetFn = Callable[[Optional[str], int], Optional[float]]


def parse_args(description: str, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (default: 1 2)")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 64], help="batch sizes (default: 1 8 64)")
    ap.add_argument("--repeat", type=int, default=20,
                    help="timed calls per path at least, in 5 rounds alternating between the paths; a round times "
                         "each path for 0.1 s at least, after one untimed call (default: 20)")
    ap.add_argument("--engine", choices=["auto", "plan", "layers"], default="auto",
                    help="plan: the compiled whole-network call (auto's choice); layers: the per-layer PyTorch "
                         "model (the previous path)")
    ap.add_argument("--kernel", choices=["auto", "amx", "avx512", "avx2", "portable", "numpy"],
                    help="kernel path (default: RECU_DEPLOY_KERNEL, else auto); for the AVX2 path run "
                         "NUMBA_CPU_NAME=haswell ... --kernel avx2")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile baselines")
    ap.add_argument("--float-twin", action="store_true",
                    help="also time the float twin (the binary network with float convs of signs)")
    ap.add_argument("--per-layer", action="store_true", help="also print the layers engine's per-layer table")
    ap.add_argument("--fuse-float", action="store_true",
                    help="layers engine: fold BatchNorm into the float stem/downsample convs too")
    return ap.parse_args(argv)


def run(binary_name: str, input_shape: tuple[int, int, int], title: str, targets: TargetFn,
        args: argparse.Namespace) -> None:
    """Export ``binary_name`` (random weights: speed does not depend on them), load it with the chosen
    engine and print, per thread count, the full table and one summary line per batch."""
    model = models.create(binary_name).eval()
    twin = fp_twin(model.recu_spec)
    if twin is None:
        raise SystemExit(f"{binary_name} has no full-precision twin in the registry")
    fp_name, fp = twin
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{binary_name}.recu"
        export(model, path)
        deployed = load(path, impl=args.kernel, fuse_float=args.fuse_float, engine=args.engine)
        layers = deployed if engine_of(deployed) == "layers" else (
            load(path, impl=args.kernel, engine="layers") if args.float_twin or args.per_layer else None)
    for threads in args.threads:
        res = run_benchmark(deployed, input_shape, tuple(args.batch), threads=threads, repeat=args.repeat,
                            use_compile=not args.no_compile, per_layer=args.per_layer, layers=layers,
                            baselines={fp_name: fp}, twin=args.float_twin)
        print(f"\n=== {title}, threads {threads}")
        print(format_result(res))
        print(format_summary(res, fp_name, target=targets(res.main_path(), threads)))
