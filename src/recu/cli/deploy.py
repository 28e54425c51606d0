"""``recu export`` (checkpoint -> 1-bit deployment file) and ``recu bench`` (deployed model vs float PyTorch)."""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from torch import nn

    from .bench_onnxruntime import OrtBaselines


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("export", help="write a checkpoint as a 1-bit deployment file (safetensors + JSON) "
                                      "or as a standard-operator ONNX model")
    e.add_argument("checkpoint", help="a training checkpoint (dict with 'model' and 'model_spec')")
    e.add_argument("-o", "--output", required=True, help="output file, e.g. model.recu or model.onnx")
    e.add_argument("--format", choices=["recu", "onnx"], default="recu",
                   help="recu: 1-bit packed file for recu.deploy.load (default); onnx: float graph of standard "
                        "operators (sign as Where, +-1 constant weights) for onnxruntime and other runtimes")
    e.add_argument("--no-fold", action="store_true", help="do not fold BatchNorm into the binary layers (recu format)")
    e.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"),
                   help="onnx format: one sample's shape (default: C 224 224 for ImageNet models, else C 32 32, "
                        "C the model's in_channels, usually 3); the batch dim stays dynamic")
    e.add_argument("--opset", type=int, help="onnx format: ai.onnx opset (default and lowest: 18)")
    e.set_defaults(func=_export)

    b = sub.add_parser("bench", help="latency and throughput of the deployed 1-bit model (the compiled plan) next to "
                                     "float PyTorch baselines, eager and torch.compile, and the CPU's limit",
                       description="Time the deployed model (by default the compiled plan: the whole network in "
                                   "one numba call) against float32 PyTorch baselines with the same thread count: "
                                   "the float twin (the same network with each binary layer as a float conv of "
                                   "signs) and, for a registry model, its full-precision twin (e.g. resnet20_fp "
                                   "for resnet20_1w1a), each eager and under torch.compile. Prints the CPU "
                                   "(model, clock, avx2/avx512_vpopcntdq/amx_int8/bf16), the kernel path, the "
                                   "model's binary and float MACs, and per batch the latency (ms), the "
                                   "throughput (images/s), how many times faster the packed model is, and the "
                                   "time its MACs take at the CPU's peak. --onnxruntime adds that twin in "
                                   "onnxruntime FP32 and static INT8, what one deploys without binarisation.")
    b.add_argument("target", help="a deployment file, or a model name from `recu models` (random weights, "
                                  "or the shipped trained ones with --pretrained)")
    b.add_argument("--pretrained", action="store_true",
                   help="TARGET is a model name: bench its shipped trained 1-bit file (recu.pretrained)")
    b.add_argument("--engine", choices=["auto", "plan", "layers"], default="auto",
                   help="what to time: plan (the compiled whole-network call), layers (the per-layer PyTorch "
                        "model) or auto (default: plan when the file has a network graph and --fuse-float is "
                        "not given, else layers)")
    b.add_argument("--threads", type=int, help="threads for every side (default: torch's current count)")
    b.add_argument("--batch", type=int, nargs="+", default=[1, 8, 64], help="batch sizes (default: 1 8 64)")
    b.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"),
                   help="one sample's shape (default: C 224 224 for ImageNet models, 1 8 8 for the digits_cnn "
                        "and mlp quick-start models, else C 32 32; C the model's in_channels, usually 3)")
    b.add_argument("--num-classes", type=int, help="for a model name (default: the model's own, 1000 for ImageNet models, else 10)")
    b.add_argument("--repeat", type=int, default=20,
                   help="timed calls per path at least, in 5 rounds alternating between the paths; a round times each "
                        "path for 0.1 s at least, after one untimed call (default: 20)")
    b.add_argument("--kernel", choices=["auto", "amx", "avx512", "avx2", "portable", "numpy"],
                   help="kernel path (default: RECU_DEPLOY_KERNEL, else auto: amx where the CPU has it, except "
                        "layers under 64 input channels (in a compiled plan also 3x3 layers of 64), which take avx512; "
                        "else avx512, else avx2, else "
                        "portable, else numpy)")
    b.add_argument("--no-compile", action="store_true", help="skip the torch.compile baselines")
    b.add_argument("--no-fp-twin", action="store_true",
                   help="skip the full-precision registry twin (e.g. resnet20_fp) as a PyTorch baseline")
    b.add_argument("--onnxruntime", action="store_true",
                   help="also time the full-precision twin in onnxruntime, FP32 and static INT8 (QDQ, per-channel "
                        "weights; calibrated on CIFAR-10 test images from RECU_CIFAR10_DIR for 32x32 models, else "
                        "on random images), in the same interleaved rounds, and print the file sizes and how many "
                        "times faster the 1-bit model is (needs pip install 'recu-bnn[onnx]')")
    b.add_argument("--calibration", type=int, default=32,
                   help="--onnxruntime: calibration images for the INT8 model (default: 32)")
    b.add_argument("--fuse-float", action="store_true",
                   help="layers engine: fold BatchNorms into the full-precision convs too (faster; float rounding "
                        "differs)")
    b.add_argument("--per-layer", action="store_true",
                   help="also time each layer of the layers engine against its float twin (first batch size)")
    b.add_argument("--top", type=int, default=0,
                   help="per-layer table: show only the N slowest layers (default: all; implies --per-layer)")
    b.set_defaults(func=_bench)


def load_checkpoint_model(path: str):  # type: ignore[no-untyped-def]
    """The model of a training checkpoint, rebuilt from its spec, weights loaded (weights_only)."""
    return _checkpoint_model(path, _read_checkpoint(path))


def _read_checkpoint(path: str) -> dict:
    import torch

    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle errors, truncated files ...
        from ..train.checkpoint import error_line  # torch's messages run to many lines

        raise ValueError(f"{path} is not a loadable checkpoint (torch.load weights_only=True): "
                         f"{error_line(e)}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_spec" not in ckpt:
        keys = sorted(map(str, ckpt))[:5] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path} is not a recu checkpoint: need a dict with 'model' (state_dict) and "
                         f"'model_spec' (the model's recu_spec), got {keys}")
    return ckpt


def _checkpoint_model(path: str, ckpt: dict):  # type: ignore[no-untyped-def]
    from ..deploy.exporter.layers import build_model

    model = build_model(ckpt["model_spec"])
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: the state_dict does not fit model {ckpt['model_spec'].get('name')!r}: "
                         f"{str(e).splitlines()[0]}") from None
    model.recu_spec = ckpt["model_spec"]
    return model.eval()


def _export(args: argparse.Namespace) -> int:
    from ..deploy import export

    if args.format != "onnx" and (args.input_size or args.opset):
        raise ValueError("--input-size and --opset apply to --format onnx only")
    if args.format == "onnx" and args.no_fold:
        raise ValueError("--no-fold applies to --format recu only (the ONNX graph keeps every BatchNorm)")
    ckpt = _read_checkpoint(args.checkpoint)
    model = _checkpoint_model(args.checkpoint, ckpt)
    preprocessing = _preprocessing(ckpt.get("config") or {})
    if args.format == "onnx":
        if args.input_size is None and preprocessing:  # a folder data set's image size
            args.input_size = [preprocessing["in_channels"], preprocessing["image_size"], preprocessing["image_size"]]
        return _export_onnx(args, model)
    meta = export(model, args.output, fold_bn=not args.no_fold, class_names=ckpt.get("class_names"),
                  preprocessing=preprocessing)
    size = os.path.getsize(args.output)
    fp32 = sum(v.numel() * 4 for v in model.state_dict().values() if v.is_floating_point())
    print(f"wrote {args.output}: {len(meta['binary_layers'])} packed binary layers "
          f"({len(meta['folded_bn'])} with BatchNorm folded), {len(meta['float_layers'])} binary layers kept float; "
          f"{size / 1e6:.3f} MB, {fp32 / max(size, 1):.1f}x smaller than the float32 weights")
    return 0


def _preprocessing(cfg: dict) -> Optional[dict]:
    """What a folder data set's images went through before the model, for the deployment file."""
    if cfg.get("dataset") != "folder" or cfg.get("mean") is None:
        return None
    from ..train import TrainConfig

    options = TrainConfig.from_dict(cfg).folder_options()
    return {"image_size": options.image_size, "in_channels": options.in_channels, "resize": options.stored_size,
            "scale": 1 / 255, "mean": list(options.mean), "std": list(options.std)}


def _export_onnx(args: argparse.Namespace, model) -> int:  # type: ignore[no-untyped-def]
    from ..deploy import export_onnx
    from ..deploy.exporter.onnx_export import DEFAULT_OPSET

    try:
        info = export_onnx(model, args.output, input_shape=args.input_size,
                           opset=DEFAULT_OPSET if args.opset is None else args.opset)
    except ImportError as e:  # a missing optional package: one line, not a traceback
        raise RuntimeError(str(e)) from None
    size = os.path.getsize(args.output)
    print(f"wrote {args.output}: ONNX opset {info['opset']}, input (batch, {', '.join(map(str, info['input_shape']))}), "
          f"{info['binary_layers']} binary layers as sign + +-1 weight subgraphs, {info['nodes']} nodes; "
          f"{size / 1e6:.3f} MB")
    return 0


def _is_imagenet(name: str) -> bool:
    return "imagenet" in name or name.startswith("reactnet")


def _bench(args: argparse.Namespace) -> int:
    if args.fuse_float and args.engine == "plan":
        raise ValueError("--fuse-float belongs to the layers engine; use --engine layers or auto")
    bench_file = _bench_file if importlib.util.find_spec("torch") is not None else _bench_without_torch
    if args.pretrained:
        from ..pretrained import path as pretrained_path

        return bench_file(args, pretrained_path(args.target, "deploy"))
    if os.path.isfile(args.target):
        return bench_file(args, args.target)
    from ..deploy import export
    from ..models import available, create

    name = args.target
    if name not in available():
        raise ValueError(f"{name!r} is neither a file nor a model name; models: {', '.join(available())}")
    model = create(name, num_classes=args.num_classes).eval()  # None: the model's own
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.recu"
        export(model, path)
        return _bench_file(args, path)


def _bench_input_shape(args: argparse.Namespace, spec: dict, meta: Optional[dict] = None) -> tuple[int, int, int]:
    """--input-size, else the file's preprocessing image size (a folder data set's), else (C, 224, 224)
    for ImageNet models, the 8x8 digits for the tiny quick-start models (an MLP of F inputs: 1 x 8 x 8
    for 64, else 1 x 1 x F) and (C, 32, 32) otherwise, C from the spec (default 3, 1 for the tiny models)."""
    if args.input_size:
        return tuple(args.input_size)  # type: ignore[return-value]
    pre = (meta or {}).get("preprocessing") or {}
    if pre.get("image_size") and pre.get("in_channels"):
        return (int(pre["in_channels"]), int(pre["image_size"]), int(pre["image_size"]))
    name, kwargs = str(spec.get("name", "")), spec.get("kwargs") or {}
    if name.startswith("mlp"):
        features = int(kwargs.get("in_features", 64))
        return (1, 8, 8) if features == 64 else (1, 1, features)
    if name.startswith("digits_cnn"):
        return (int(kwargs.get("in_channels", 1)), 8, 8)
    channels = int(kwargs.get("in_channels", 3))
    size = 224 if _is_imagenet(name) else 32
    return (channels, size, size)


def _bench_without_torch(args: argparse.Namespace, path: "str | os.PathLike") -> int:
    """``recu bench`` on a runtime-only install (no PyTorch): the compiled plan alone, numpy input,
    latency and throughput per batch; the float baselines need PyTorch."""
    import statistics
    import time

    import numpy as np

    from .._lazy import TORCH_HINT
    from ..deploy import load

    if args.engine == "layers" or args.fuse_float:
        raise ValueError(f"the layers engine runs in PyTorch, which is not installed: {TORCH_HINT}")
    model = load(path, impl=args.kernel, engine="plan")
    if args.threads:
        model.set_num_threads(args.threads)
    shape = _bench_input_shape(args, model.metadata.get("model_spec") or {}, model.metadata)
    print(f"recu bench {args.target}")
    print(f"PyTorch is not installed: the 1-bit model alone, no float baseline ({TORCH_HINT} to compare)")
    if args.onnxruntime:  # the onnxruntime baselines are the float twin exported from PyTorch
        print(f"--onnxruntime skipped: exporting the float twin to ONNX needs PyTorch ({TORCH_HINT})")
    print(f"engine plan, kernel {model.kernel}, threads {args.threads or 'numba default'}, input {shape}")
    print("batch    best ms  median ms      img/s")
    rng = np.random.default_rng(0)
    for batch in args.batch:
        x = rng.standard_normal((batch, *shape)).astype(np.float32)
        model(x)  # builds the plan for this shape (and compiles on a cold cache)
        times = []
        for _ in range(max(1, args.repeat)):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        print(f"{batch:5d} {min(times) * 1e3:10.3f} {median * 1e3:10.3f} {batch / median:10.1f}")
    return 0


def _bench_file(args: argparse.Namespace, path: "str | os.PathLike") -> int:
    import torch

    from ..deploy import load
    from .bench import engine_of, format_result, fp_twin, run_benchmark

    model = load(path, impl=args.kernel, fuse_float=args.fuse_float, engine=args.engine)
    # The layers engine of the same file gives the float twin, the agreement check and the per-layer table.
    layers = model if engine_of(model) == "layers" else load(path, impl=args.kernel, engine="layers")
    spec = model.metadata.get("model_spec") or {}
    twin = None if args.no_fp_twin and not args.onnxruntime else fp_twin(spec)
    shape = _bench_input_shape(args, spec, model.metadata)
    threads = args.threads or torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        ort, note = _onnxruntime_baselines(args, twin, shape, Path(tmp)) if args.onnxruntime else (None, None)
        runners = None
        if ort is not None:
            from .bench_onnxruntime import onnxruntime_runners

            runners = onnxruntime_runners(ort, threads)
        res = run_benchmark(model, shape, tuple(args.batch), threads=threads, repeat=args.repeat,
                            use_compile=not args.no_compile, per_layer=args.per_layer or args.top > 0, layers=layers,
                            baselines=dict([twin]) if twin and not args.no_fp_twin else None, runners=runners)
        print(f"recu bench {args.target}")
        print(format_result(res, top=args.top))
        if ort is not None:
            from .bench_onnxruntime import format_comparison

            print(format_comparison(res, ort, os.path.getsize(path)))
    if note:
        print(note)
    return 0


def _onnxruntime_baselines(args: argparse.Namespace, twin: Optional[tuple[str, "nn.Module"]],
                           shape: tuple[int, int, int], workdir: Path) -> tuple[Optional["OrtBaselines"], Optional[str]]:
    """(the float twin's onnxruntime files, None), or (None, the line that says why there are none)."""
    from .bench_onnxruntime import missing_onnxruntime, prepare_onnxruntime

    if twin is None:
        return None, "onnxruntime baselines skipped: the model has no full-precision twin (recu.cli.bench.fp_twin)"
    missing = missing_onnxruntime()
    if missing:
        return None, missing
    return prepare_onnxruntime(twin[0], twin[1], shape, workdir, calibration=args.calibration), None
