"""What engineers deploy today, next to the 1-bit plan: the float twin in onnxruntime, FP32 and static INT8.

:func:`prepare_onnxruntime` exports the full-precision twin of the binary model (``resnet20_fp`` for
``resnet20_1w1a``: :func:`recu.cli.bench.fp_twin`, the same weights PyTorch's baseline runs) with
:func:`recu.deploy.exporter.onnx_export.export_onnx` and quantises it with onnxruntime's ``quantize_static``;
:func:`onnxruntime_runners` gives its sessions to :func:`recu.cli.bench.run_benchmark`
(``runners=``), which times them in the same interleaved rounds as the plan and PyTorch;
:func:`format_comparison` prints the ratios and the file sizes. Needs onnx, onnxscript and
onnxruntime (``pip install 'recu-bnn[onnx]'``); :func:`missing_onnxruntime` says which is missing.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch import nn

from .bench import BenchResult, CpuInfo
from ..deploy.exporter.onnx_export import DEFAULT_OPSET, INPUT_NAME, export_onnx

__all__ = ["ORT_HINT", "FP32", "INT8", "missing_onnxruntime", "Int8Config", "has_vnni", "int8_config",
           "calibration_images", "OrtBaselines", "quantize_int8", "ort_session", "prepare_onnxruntime",
           "onnxruntime_runners", "int8_features", "format_comparison"]

ORT_HINT = "pip install 'recu-bnn[onnx]'"
FP32, INT8 = "onnxruntime fp32", "onnxruntime int8"  # the row labels in the benchmark's table


def missing_onnxruntime() -> Optional[str]:
    """None when onnx, onnxscript and onnxruntime import, else one line saying which does not and how to
    get it (the benchmark then runs without the onnxruntime rows)."""
    for name in ("onnxruntime", "onnx", "onnxscript"):
        try:
            importlib.import_module(name)
        except ImportError:
            return f"onnxruntime baselines skipped: {name} is not installed ({ORT_HINT})"
    return None


@dataclass(frozen=True)
class Int8Config:
    """How ``quantize_static`` quantises the float twin: QDQ format, MinMax calibration, int8 weights per
    output channel, activations ``uint8`` (U8S8) or ``int8`` (S8S8); ``reduce_range``: 7-bit weights."""

    activations: str = "uint8"
    reduce_range: bool = False

    def describe(self) -> str:
        act = "QUInt8 (U8S8)" if self.activations == "uint8" else "QInt8 (S8S8)"
        return (f"quantize_static QDQ, MinMax calibration, weights QInt8 per channel, activations {act}, "
                f"reduce_range {'on' if self.reduce_range else 'off'}")


def has_vnni(cpu: CpuInfo) -> bool:
    """The CPU has an int8 dot-product instruction (AVX-512 VNNI, AVX-VNNI or AMX-INT8)."""
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & cpu.flags)


def int8_config(cpu: CpuInfo, activations: str = "uint8") -> Int8Config:
    """onnxruntime's own CPU advice (``quantize_static``'s docstring, onnxruntime 1.32): on x86 U8S8 -
    VNNI's ``vpdpbusd`` multiplies unsigned by signed bytes - with full 8-bit weights where the CPU has
    VNNI, 7-bit ones (``reduce_range``) where it has not: its ``vpmaddubsw`` path sums pairs of
    products in saturating 16 bits, which 8-bit weights can overflow."""
    if activations not in ("uint8", "int8"):
        raise ValueError(f"activations must be 'uint8' or 'int8', got {activations!r}")
    return Int8Config(activations, reduce_range="sse2" in cpu.flags and not has_vnni(cpu))


def calibration_images(input_shape: Sequence[int], count: int = 32, *, data_dir: Optional[str] = None,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """``(calibration, held_out, source)``: ``count`` images each, float32 NCHW, and where they come from.

    A 3x32x32 model (the CIFAR ones) gets CIFAR-10 test images normalised as training normalises them,
    when the data set is at hand (``data_dir``, else ``RECU_CIFAR10_DIR``); anything else standard
    normal images: synthetic calibration, whose int8 ranges only approximate a deployment's (the
    speed does not depend on them). ``held_out`` (the next ``count`` images) checks the int8 model.
    """
    if count < 1:
        raise ValueError(f"the calibration needs at least one image, got {count}")
    shape = tuple(int(s) for s in input_shape)
    why = "no data set for this input shape"
    if shape == (3, 32, 32):
        root = data_dir or os.environ.get("RECU_CIFAR10_DIR")
        if root:
            try:
                from ..data.cifar import CIFAR10, load_cifar

                x, _ = load_cifar(root, "cifar10", train=False)
                x = x[: 2 * count].numpy().astype(np.float32) / 255.0
                mean, std = (np.asarray(v, np.float32).reshape(1, 3, 1, 1) for v in (CIFAR10.mean, CIFAR10.std))
                x = (x - mean) / std
                return x[:count], x[count:], f"{count} CIFAR-10 test images"
            except (OSError, RuntimeError, ValueError) as e:  # missing or damaged files: say so, go on
                why = f"CIFAR-10 unreadable: {str(e).splitlines()[0][:120]}"
        else:
            why = "RECU_CIFAR10_DIR is not set"
    x = np.random.default_rng(seed).standard_normal((2 * count, *shape)).astype(np.float32)
    return x[:count], x[count:], f"{count} random normal images (synthetic calibration: {why})"


@dataclass
class OrtBaselines:
    """The float twin's ONNX files and what :func:`prepare_onnxruntime` checked on them."""

    name: str  # the float twin, e.g. resnet20_fp
    fp32_path: Path
    int8_path: Path
    config: Int8Config
    calibration: str  # where the calibration images came from
    fp32_vs_torch: float  # max |onnxruntime fp32 - PyTorch| / max |PyTorch| on the held-out images
    int8_agreement: tuple[int, int]  # held-out images whose int8 top-1 is the fp32 top-1, of how many
    fp32_classes: int  # distinct fp32 top-1 classes on them (1: the agreement says nothing)
    version: str  # onnxruntime's

    def sizes(self) -> dict[str, int]:
        return {"onnx fp32": self.fp32_path.stat().st_size, "onnx int8": self.int8_path.stat().st_size}


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    """The quantiser logs warnings to the root logger (e.g. that BatchNorm1d has no axis 1 for per-channel
    scales); they are not the benchmark's business."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_int8(fp32_path: Path, int8_path: Path, images: np.ndarray, config: Int8Config, batch: int = 8) -> None:
    """Static INT8 quantisation of ``fp32_path`` into ``int8_path``, calibrated on ``images``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(images[i:i + batch] for i in range(0, len(images), batch))

        def get_next(self) -> Optional[dict]:
            x = next(self.batches, None)
            return None if x is None else {INPUT_NAME: x}

    # Shape inference and graph optimisation first (onnxruntime's recommended step): it folds each
    # BatchNorm into its conv, so the per-channel scales fit the weights that actually run.
    pre = int8_path.with_name(int8_path.stem + "_pre.onnx")
    with _quiet_logging():
        quant_pre_process(str(fp32_path), str(pre))
        act = QuantType.QUInt8 if config.activations == "uint8" else QuantType.QInt8
        quantize_static(str(pre), str(int8_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=config.reduce_range, activation_type=act, weight_type=QuantType.QInt8)
    pre.unlink()


def ort_session(path: Path, threads: int) -> Any:
    """A CPU session as a deployment configures one: graph optimisation ALL, ``threads`` intra-op
    threads, one inter-op thread, warnings off."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def prepare_onnxruntime(name: str, model: nn.Module, input_shape: Sequence[int], workdir: Path, *,
                        calibration: int = 32, config: Optional[Int8Config] = None, data_dir: Optional[str] = None,
                        images: Optional[tuple[np.ndarray, np.ndarray]] = None) -> OrtBaselines:
    """Export the float twin ``model`` (called ``name``) to ``workdir``/``name``.onnx and quantise it to
    ``name``_int8.onnx; check that onnxruntime FP32 gives PyTorch's logits and how often INT8 keeps
    FP32's top-1 (on held-out images; :func:`calibration_images`, or ``images`` = (calibration,
    held-out) given). ``config``: default :func:`int8_config` of this CPU.
    """
    import onnxruntime

    from .bench import cpu_info

    workdir = Path(workdir)
    fp32, int8 = workdir / f"{name}.onnx", workdir / f"{name}_int8.onnx"
    # opset 18: asked for 17, torch's exporter silently writes 18 (docs/deploy.md, "ONNX export")
    export_onnx(model, fp32, input_shape=tuple(input_shape), opset=DEFAULT_OPSET)
    if images is None:
        calib, held_out, source = calibration_images(input_shape, calibration, data_dir=data_dir)
    else:
        (calib, held_out), source = images, f"{len(images[0])} given images"
    config = config or int8_config(cpu_info())
    quantize_int8(fp32, int8, calib, config)
    with torch.inference_mode():
        want = model.eval()(torch.from_numpy(held_out)).numpy()
    got32 = ort_session(fp32, 1).run(None, {INPUT_NAME: held_out})[0]
    got8 = ort_session(int8, 1).run(None, {INPUT_NAME: held_out})[0]
    diff = float(np.abs(got32 - want).max() / max(float(np.abs(want).max()), 1e-12))
    same = int((got8.argmax(1) == got32.argmax(1)).sum())
    classes = len(np.unique(got32.argmax(1)))
    return OrtBaselines(name, fp32, int8, config, source, diff, (same, len(held_out)), classes, onnxruntime.__version__)


def onnxruntime_runners(ort: OrtBaselines, threads: int) -> dict[str, Callable[[np.ndarray], object]]:
    """The FP32 and INT8 sessions with ``threads`` intra-op threads, as ``run_benchmark``'s ``runners``."""
    sessions = {FP32: ort_session(ort.fp32_path, threads), INT8: ort_session(ort.int8_path, threads)}
    return {label: (lambda x, s=s: s.run(None, {INPUT_NAME: x})) for label, s in sessions.items()}


def int8_features(cpu: CpuInfo) -> str:
    """The CPU's int8 and popcount instructions, e.g. ``avx512_vnni yes, avx_vnni no, amx_int8 no, ...``."""
    names = ("avx512_vnni", "avx_vnni", "amx_int8", "avx512_vpopcntdq", "avx2")
    return ", ".join(f"{f} {'yes' if f in cpu.flags else 'no'}" for f in names)


def _mb(n: int) -> str:
    return f"{n / 1e6:.3f} MB"


def format_comparison(res: BenchResult, ort: OrtBaselines, recu_bytes: int) -> str:
    """The lines under the benchmark's table: the setup, the checks, file sizes, and per batch how many
    times faster the plan is than onnxruntime INT8 and FP32 (their median time / the plan's)."""
    cpu = res.cpu.model if res.cpu else "unknown CPU"
    sizes = ort.sizes()
    same, total = ort.int8_agreement
    lines = [
        f"onnxruntime {ort.version}: {ort.name} exported with torch.onnx (opset {DEFAULT_OPSET}, dynamic batch), "
        f"CPUExecutionProvider, graph optimisation ALL, intra-op threads {res.threads}, inter-op 1",
        f"int8: {ort.config.describe()}; calibrated on {ort.calibration}",
        f"CPU {cpu}: {int8_features(res.cpu) if res.cpu else 'flags unknown'}; recu {res.engine} engine, "
        f"kernel path {res.kernel}",
        f"checks: onnxruntime fp32 vs PyTorch {ort.name} max relative difference {ort.fp32_vs_torch:.1e}; "
        f"int8 top-1 = fp32 top-1 on {same}/{total} held-out images (fp32 predicts {ort.fp32_classes} distinct "
        f"class{'es' if ort.fp32_classes != 1 else ''})",
        f"files: recu {_mb(recu_bytes)}; onnx fp32 {_mb(sizes['onnx fp32'])} "
        f"({sizes['onnx fp32'] / recu_bytes:.1f}x recu); onnx int8 {_mb(sizes['onnx int8'])} "
        f"({sizes['onnx int8'] / recu_bytes:.1f}x recu)",
    ]
    for b, row in res.timings.items():
        packed = row["packed"].median
        parts = [f"batch {b}: recu {packed * 1e3:.3f} ms ({b / packed:.0f} img/s)"]
        for label, short in ((INT8, "INT8"), (FP32, "FP32")):
            t = row.get(label)
            if t is not None:
                parts.append(f"recu vs onnxruntime {short} {t.median / packed:.2f}x ({t.median * 1e3:.3f} ms, "
                             f"{b / t.median:.0f} img/s)")
        lines.append("; ".join(parts))
    return "\n".join(lines)
