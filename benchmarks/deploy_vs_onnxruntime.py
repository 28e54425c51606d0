"""The deployed 1-bit plan against what engineers deploy today: the float twin in onnxruntime, FP32 and INT8.

For each binary registry model (default ResNet-20 CIFAR-10 and ResNet-18 ImageNet 224x224), exported
and loaded as a deployment would (the compiled plan), the full-precision twin (``resnet20_fp``,
``resnet18_fp_imagenet``; random weights - speed does not depend on them - or ``--fp-checkpoint``) is
timed in PyTorch float32 (eager, and ``torch.compile`` unless ``--no-compile``), in onnxruntime FP32 and
in onnxruntime static INT8 (QDQ, int8 per-channel weights, uint8 activations; calibrated on CIFAR-10
test images from RECU_CIFAR10_DIR for ResNet-20, else on random images). All paths run in interleaved
rounds in one process with the same thread count (``recu.cli.bench``; docs/deploy.md, "Against
onnxruntime FP32 and INT8").

    python benchmarks/deploy_vs_onnxruntime.py [--model resnet20_1w1a ...] [--threads 1 2] [--batch 1 8 64]
        [--repeat 20] [--calibration 32] [--int8-activations uint8|int8] [--no-compile] [--kernel ...]
        [--fp-checkpoint PATH]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from recu import models
from recu.deploy import export, load
from recu.cli.bench import cpu_info, format_result, fp_twin, run_benchmark
from recu.cli.bench_onnxruntime import (format_comparison, int8_config, missing_onnxruntime, onnxruntime_runners,
                                           prepare_onnxruntime)
from recu.deploy.exporter.onnx_export import default_input_shape


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", nargs="+", default=["resnet20_1w1a", "resnet18_1w1a_imagenet"],
                    help="binary registry models (default: resnet20_1w1a resnet18_1w1a_imagenet)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (default: 1 2)")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 64], help="batch sizes (default: 1 8 64)")
    ap.add_argument("--repeat", type=int, default=20, help="timed calls per path at least (default: 20)")
    ap.add_argument("--calibration", type=int, default=32, help="INT8 calibration images (default: 32)")
    ap.add_argument("--int8-activations", choices=["uint8", "int8"], default="uint8",
                    help="uint8 (U8S8, onnxruntime's advice for x86; default) or int8 (S8S8)")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile of the PyTorch float twin")
    ap.add_argument("--kernel", choices=["auto", "amx", "avx512", "avx2", "portable", "numpy"],
                    help="the plan's kernel path (default: RECU_DEPLOY_KERNEL, else auto)")
    ap.add_argument("--fp-checkpoint", help="a training checkpoint of the full-precision twin (one --model only)")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    if args.fp_checkpoint and len(args.model) != 1:
        raise SystemExit("--fp-checkpoint names the twin of one model: give one --model")
    missing = missing_onnxruntime()
    if missing:
        print(missing)  # the plan and PyTorch are still timed
    for name in args.model:
        binary = models.create(name).eval()
        twin = fp_twin(binary.recu_spec)
        if twin is None:
            raise SystemExit(f"{name} has no full-precision twin in the registry")
        fp_name, fp = twin
        label = fp_name
        if args.fp_checkpoint:
            from recu.cli.deploy import load_checkpoint_model

            fp, label = load_checkpoint_model(args.fp_checkpoint), f"{fp_name} (checkpoint)"
        shape = default_input_shape(binary)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{name}.recu"
            export(binary, path)
            plan = load(path, impl=args.kernel)
            ort = None if missing else prepare_onnxruntime(
                fp_name, fp, shape, Path(tmp), calibration=args.calibration,
                config=int8_config(cpu_info(), args.int8_activations))
            for threads in args.threads:
                res = run_benchmark(plan, shape, tuple(args.batch), threads=threads, repeat=args.repeat,
                                    use_compile=not args.no_compile, baselines={label: fp}, twin=False,
                                    runners=onnxruntime_runners(ort, threads) if ort else None)
                print(f"\n=== {name} {shape}, threads {threads}")
                print(format_result(res))
                if ort:
                    print(format_comparison(res, ort, os.path.getsize(path)))


if __name__ == "__main__":
    main()
