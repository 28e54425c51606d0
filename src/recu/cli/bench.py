"""Latency and throughput of a deployed 1-bit model next to float baselines, and the hardware's limit.

What is timed (:func:`run_benchmark`), every side with the same thread count:

- ``packed``: the model as :func:`recu.deploy.load` returns it - the compiled plan
  (:class:`~recu.deploy.runtime.plan.CompiledModel`, numpy in and out) by default, or the per-layer PyTorch
  :class:`~recu.deploy.exporter.layers.PackedModel` (``engine="layers"``);
- float baselines, each eager and under ``torch.compile``: the *float twin*,
  :func:`float_reference` - the layers engine's network with every packed layer replaced by its
  float32 PyTorch equivalent ``F.conv2d(sign(x), w_sign) * scale + bias`` (the same function, so the
  benchmark checks the logits agree; it isolates the binary convolutions) - and any model passed in
  ``baselines``, e.g. the full-precision registry twin (:func:`fp_twin`: ``resnet20_fp`` for
  ``resnet20_1w1a``), which is what one would deploy without binarisation;
- any other path given as a function of a numpy batch in ``runners``, e.g. that twin in onnxruntime
  FP32 and INT8 (:mod:`recu.cli.bench_onnxruntime`).

Next to the measurements, the limit of the CPU (:func:`peak_times`): the model's multiply-accumulates
(:func:`count_ops`: binary MACs of the binary layers, float MACs of the float convs and linear layers,
counted from the file's graph) divided by the peak MACs per cycle of the kernel path each binary layer
runs (:data:`BINARY_MACS_PER_CYCLE`) and of float32 FMA (:func:`float_macs_per_cycle`), at the nominal
clock of ``/proc/cpuinfo`` (:func:`cpu_info`).
"""

from __future__ import annotations

import copy
import inspect
import os
import platform
import statistics
import time
import types
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import functional as RF
from ..deploy.runtime.kernels.cpu import layer_kernel
from ..deploy.runtime.pack import unpack_signs_numpy
from ..deploy.exporter.layers import PackedConv2d, PackedLinear, PackedModel

if TYPE_CHECKING:
    from ..deploy.runtime.plan import CompiledModel

__all__ = ["FloatSignConv2d", "float_reference", "time_call", "time_interleaved", "Timing", "layer_times", "BenchResult", "run_benchmark",
           "format_result", "format_summary", "CpuInfo", "parse_cpuinfo", "cpu_info", "OpCounts", "count_ops",
           "count_ops_graph", "count_ops_module", "BINARY_MACS_PER_CYCLE", "float_macs_per_cycle", "PeakTimes",
           "peak_times", "binary_layer_paths", "kernel_summary", "fp_twin_name", "fp_twin", "engine_of",
           "format_header"]

DeployedModel = Union["CompiledModel", PackedModel]


class FloatSignConv2d(nn.Module):
    """The float32 PyTorch twin of a :class:`PackedConv2d` or :class:`PackedLinear`:
    ``(conv2d(sign(x), w) * alpha + bias) * a + b``."""

    def __init__(self, packed: PackedConv2d) -> None:
        super().__init__()
        signs = unpack_signs_numpy(packed.weights.bits, packed.in_channels)  # (O, KH, KW, C)
        self.register_buffer("weight", torch.from_numpy(signs).permute(0, 3, 1, 2).float().contiguous())
        for k, v in packed.epilogue.items():
            self.register_buffer(k, torch.from_numpy(v.copy()).reshape(1, -1, 1, 1))
        self.stride = packed.stride
        self.padding = packed.padding
        self.linear = isinstance(packed, PackedLinear)

    def forward(self, x: Tensor) -> Tensor:
        if self.linear:  # (N, C) as a 1x1 image, like PackedLinear
            return self.forward_image(x[:, :, None, None]).flatten(1)
        return self.forward_image(x)

    def forward_image(self, x: Tensor) -> Tensor:
        y = F.conv2d(RF.sign(x), self.weight, None, self.stride, self.padding) * self.alpha + self.bias
        return y * self.bn_scale + self.bn_shift


def float_reference(packed: PackedModel) -> nn.Module:
    """A float32 PyTorch copy of ``packed`` (same function, binary convs as float convs of signs)."""
    net = copy.deepcopy(packed.model)
    for name, m in list(net.named_modules()):
        if isinstance(m, PackedConv2d):
            parent_name, _, child = name.rpartition(".")
            parent = net.get_submodule(parent_name) if parent_name else net
            setattr(parent, child, FloatSignConv2d(m))
    return net.eval()


@dataclass
class Timing:
    """Seconds per call: best and median of ``repeat`` timed calls."""

    best: float
    median: float


def time_call(fn: Callable[[], object], repeat: int = 20, warmup: int = 3, min_time: float = 0.0) -> Timing:
    """Time ``fn()``; repeats until both ``repeat`` calls and ``min_time`` seconds are done."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeat or time.perf_counter() - start < min_time:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return Timing(min(times), statistics.median(times))


def time_interleaved(fns: Mapping[str, Callable[[], object]], repeat: int = 20, rounds: int = 5,
                     round_seconds: float = 0.1) -> dict[str, Timing]:
    """Time each ``fns[name]()`` (already warmed up) in ``rounds`` alternating rounds: every round calls
    each function in turn once untimed, then times it for at least ``repeat / rounds`` calls and at
    least ``round_seconds``. A machine whose speed drifts over seconds (a shared VM: up to 2x here)
    then slows every path alike, instead of whichever ran during a slow spell, so the ratios mean
    something. Each path is timed in its own steady state, as a deployment running one model sees
    it: the first calls after another path ran are slower (its data evicted ours from the caches,
    its threads may still spin; ResNet-18's plan took 5.4 ms on the first call after PyTorch's float
    model and 4.9 ms by the sixth), so a fast path gets more calls per round than a slow one."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    per_round = max(1, -(-repeat // rounds))
    for _ in range(rounds):
        for name, fn in fns.items():
            fn()
            start = time.perf_counter()
            calls = 0
            while calls < per_round or time.perf_counter() - start < round_seconds:
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
                calls += 1
    return {name: Timing(min(v), statistics.median(v)) for name, v in times.items()}


def layer_times(model: nn.Module, run: Callable[[], object], repeat: int = 10) -> dict[str, float]:
    """Median seconds per call of every leaf module of ``model`` while ``run()`` executes it."""
    samples: dict[str, list[float]] = {}
    starts: dict[str, float] = {}
    hooks = []
    for name, m in model.named_modules():
        if not name or any(True for _ in m.children()):
            continue

        def pre(mod: nn.Module, args: tuple, name: str = name) -> None:
            starts[name] = time.perf_counter()

        def post(mod: nn.Module, args: tuple, out: object, name: str = name) -> None:
            samples.setdefault(name, []).append(time.perf_counter() - starts[name])

        hooks += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    try:
        run()
        samples.clear()
        for _ in range(repeat):
            run()
    finally:
        for h in hooks:
            h.remove()
    return {n: statistics.median(v) * len(v) / repeat for n, v in samples.items()}


# -- the CPU ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CpuInfo:
    """The CPU as the benchmark reports it: model name, nominal clock (MHz), logical CPUs, ISA flags
    (``/proc/cpuinfo`` names: ``avx2``, ``avx512f``, ``avx512_vpopcntdq``, ``amx_int8``, ...)."""

    model: str
    mhz: Optional[float]
    logical_cpus: int
    flags: frozenset = frozenset()

    def describe(self) -> str:
        """One line: name, clock, CPUs and the flags that decide the kernel path and the peak."""
        clock = f"{self.mhz:.0f} MHz nominal" if self.mhz else "clock unknown"
        parts = [f"{f} {'yes' if f in self.flags else 'no'}" for f in ("avx2", "avx512_vpopcntdq", "amx_int8")]
        bf16 = [f for f in ("avx512_bf16", "amx_bf16") if f in self.flags]
        parts.append(f"bf16 yes ({', '.join(bf16)})" if bf16 else "bf16 no")
        return f"CPU: {self.model}, {clock}, {self.logical_cpus} logical CPUs; {', '.join(parts)}"


def _nominal_mhz(model: str, cpu_mhz: Optional[str]) -> Optional[float]:
    """The clock in the model name (``... @ 2.60GHz``), else ``cpu MHz`` (a VM reports the nominal
    TSC clock there; bare metal may report the momentary one)."""
    at = model.rpartition("@")[2].strip().lower()
    if at.endswith("ghz"):
        try:
            return float(at[:-3]) * 1000.0
        except ValueError:
            pass
    try:
        return float(cpu_mhz) if cpu_mhz else None
    except ValueError:
        return None


def parse_cpuinfo(text: str) -> CpuInfo:
    """:class:`CpuInfo` of the first processor listed in the text of Linux's ``/proc/cpuinfo``."""
    fields: dict[str, str] = {}
    processors = 0
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip()
        processors += key == "processor"
        fields.setdefault(key, value.strip())
    model = fields.get("model name") or fields.get("Hardware") or "unknown CPU"
    flags = frozenset((fields.get("flags") or fields.get("Features") or "").split())
    return CpuInfo(model, _nominal_mhz(model, fields.get("cpu MHz")), processors or (os.cpu_count() or 1), flags)


# LLVM's feature names -> /proc/cpuinfo's, for systems without /proc/cpuinfo.
_LLVM_FLAGS = {"avx2": "avx2", "fma": "fma", "avx512f": "avx512f", "avx512vpopcntdq": "avx512_vpopcntdq",
               "amx-int8": "amx_int8", "amx-tile": "amx_tile", "avx512bf16": "avx512_bf16", "amx-bf16": "amx_bf16"}


def cpu_info(path: str = "/proc/cpuinfo") -> CpuInfo:
    """This machine's :class:`CpuInfo`: from ``path`` on Linux, else Python's processor name and the
    flags LLVM (numba's llvmlite) reports, with no clock."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return parse_cpuinfo(f.read())
    except OSError:
        pass
    flags: set[str] = set()
    try:
        import llvmlite.binding as llvm

        features = llvm.get_host_cpu_features()
        flags = {ours for theirs, ours in _LLVM_FLAGS.items() if features.get(theirs, False)}
    except (ImportError, RuntimeError):
        pass
    return CpuInfo(platform.processor() or platform.machine() or "unknown CPU", None, os.cpu_count() or 1,
                   frozenset(flags))


# -- operation counts -----------------------------------------------------------------------------------


@dataclass
class OpCounts:
    """Multiply-accumulates for ONE image: per binary layer (by name), and of the float convs and
    linear layers together. ``source``: ``graph`` (the file's graph) or ``modules`` (PyTorch hooks)."""

    binary_macs: dict[str, int]
    float_macs: int
    source: str

    @property
    def total_binary(self) -> int:
        return sum(self.binary_macs.values())


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, (int, np.integer)) else (int(v[0]), int(v[1]))


def _out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _sample_shape(input_shape: Any) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be one image's (C, H, W), positive; got {tuple(input_shape)}")
    return shape  # type: ignore[return-value]


Shape = tuple[int, int, int]  # (C, H, W) of one image; an (N, C) value is (C, 1, 1)


def _node_ops(node: Mapping, ins: list[Shape], layers: Mapping[str, Mapping]) -> tuple[Shape, int, int]:
    """(output shape, binary MACs, float MACs) of one graph node for one image."""
    op, attrs, name = node["op"], node.get("attrs") or {}, node["name"]
    c, h, w = ins[0]
    if op in ("binary_conv2d", "binary_linear"):
        layer = layers.get(attrs.get("layer"))
        if layer is None:
            raise ValueError(f"graph node {name}: no binary layer {attrs.get('layer')!r} in the metadata")
        (kh, kw), (sh, sw), (ph, pw) = (_pair(layer[k]) for k in ("kernel_size", "stride", "padding"))
        c_in, c_out = int(layer["in_channels"]), int(layer["out_channels"])
        if c != c_in or (op == "binary_linear" and (h, w) != (1, 1)):
            raise ValueError(f"graph node {name}: input {(c, h, w)} does not fit layer {layer['name']} "
                             f"({c_in} input channels)")
        oh, ow = _out_size(h, kh, sh, ph), _out_size(w, kw, sw, pw)
        return (c_out, oh, ow), c_out * oh * ow * c_in * kh * kw, 0
    if op == "conv2d":
        (kh, kw), (sh, sw), (ph, pw) = (_pair(attrs.get(k, d)) for k, d in (("kernel", None), ("stride", 1),
                                                                            ("padding", 0)))
        c_out = int(attrs["out_channels"])
        oh, ow = _out_size(h, kh, sh, ph), _out_size(w, kw, sw, pw)
        return (c_out, oh, ow), 0, c_out * oh * ow * c * kh * kw
    if op == "linear":
        i, o = int(attrs["in_features"]), int(attrs["out_features"])
        if c * h * w != i or (h, w) != (1, 1):
            raise ValueError(f"graph node {name}: linear layer of {i} inputs on a {(c, h, w)} value")
        return (o, 1, 1), 0, o * i
    if op in ("batch_norm", "hardtanh", "relu", "prelu", "channel_bias"):
        return ins[0], 0, 0
    if op == "add":
        if ins[1] != ins[0]:
            raise ValueError(f"graph node {name}: adds {ins[1]} to {ins[0]}")
        return ins[0], 0, 0
    if op in ("avg_pool2d", "max_pool2d"):
        (kh, kw) = _pair(attrs["kernel"])
        (sh, sw), (ph, pw) = _pair(attrs.get("stride") or attrs["kernel"]), _pair(attrs.get("padding", 0))
        return (c, _out_size(h, kh, sh, ph), _out_size(w, kw, sw, pw)), 0, 0
    if op == "global_avg_pool":
        return (c, 1, 1), 0, 0
    if op == "pad_channels":
        return (c + int(attrs["before"]) + int(attrs["after"]), h, w), 0, 0
    if op == "flatten":
        return (c * h * w, 1, 1), 0, 0
    raise ValueError(f"graph node {name}: operation {op!r} is unknown to the op counter")


def count_ops_graph(meta: Mapping, input_shape: Any) -> OpCounts:
    """MACs of one ``input_shape`` (C, H, W) image, from the graph in a deployment file's metadata.

    Binary MACs: each ``binary_conv2d`` / ``binary_linear`` node, ``C_out * OH * OW * C_in * KH * KW``
    (padded taps included, as the kernels' work is); float MACs: each ``conv2d`` and ``linear``
    node. BatchNorm, activations, adds and pooling are not MACs and are not counted.
    """
    graph = meta.get("graph")
    if not graph:
        raise ValueError(f"no graph to count operations in ({meta.get('graph_unsupported') or 'not in the file'})")
    shapes: dict[str, Shape] = {graph["input"]["name"]: _sample_shape(input_shape)}
    layers = {layer["name"]: layer for layer in meta.get("binary_layers", [])}
    binary: dict[str, int] = {}
    float_macs = 0
    for node in graph["nodes"]:
        missing = [i for i in node["inputs"] if i not in shapes]
        if missing or not node["inputs"]:
            raise ValueError(f"graph node {node['name']}: input {missing or '(none)'} is not an earlier node")
        shapes[node["name"]], b, f = _node_ops(node, [shapes[i] for i in node["inputs"]], layers)
        if node["op"] in ("binary_conv2d", "binary_linear"):
            layer = node["attrs"]["layer"]
            binary[layer] = binary.get(layer, 0) + b
        float_macs += f
    return OpCounts(binary, float_macs, "graph")


def count_ops_module(model: nn.Module, input_shape: Any) -> OpCounts:
    """MACs of one ``input_shape`` image, counted by running a PyTorch model (a :class:`PackedModel`
    or any ``nn.Module``) once on zeros with hooks on its layers.

    Binary: packed layers and ReCU layers with binary weights and activations; float: every other
    conv and linear layer. Each output value costs ``C_in / groups * prod(kernel)`` MACs.
    """
    from ..nn import BinaryLayer

    net = model.model if isinstance(model, PackedModel) else model
    binary: dict[str, int] = {}
    float_macs = [0]
    hooks = []

    def macs_per_output(m: nn.Module) -> int:
        if isinstance(m, PackedConv2d):
            kh, kw = m.weights.bits.shape[1:3]
            return int(kh * kw * m.in_channels)
        return int(m.weight[0].numel())

    for name, m in net.named_modules():
        is_binary = isinstance(m, PackedConv2d) or (isinstance(m, BinaryLayer) and m.config.fully_binary)
        if not (is_binary or isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))):
            continue

        def count(mod: nn.Module, args: tuple, out: Tensor, name: str = name, is_binary: bool = is_binary) -> None:
            macs = out.numel() * macs_per_output(mod)
            if is_binary:
                binary[name] = binary.get(name, 0) + macs
            else:
                float_macs[0] += macs

        hooks.append(m.register_forward_hook(count))
    try:
        with torch.no_grad():
            model(torch.zeros(1, *_sample_shape(input_shape)))
    finally:
        for h in hooks:
            h.remove()
    return OpCounts(binary, float_macs[0], "modules")


def count_ops(model: Any, input_shape: Any) -> OpCounts:
    """MACs of one image: from the model's graph (``model.metadata["graph"]``) when it has one, else
    by running it (PyTorch models only)."""
    meta = getattr(model, "metadata", None) or {}
    if meta.get("graph"):
        return count_ops_graph(meta, input_shape)
    if isinstance(model, nn.Module):
        return count_ops_module(model, input_shape)
    raise ValueError("cannot count operations: the model has no graph and is not a PyTorch model")


# -- the hardware's limit ----------------------------------------------------------------------------

# Peak binary MACs per cycle per core of each kernel path (docs/deploy.md derives them):
# - amx: one tdpbssd (16 x 16 x 64 int8 MACs) per 16 cycles = 1024;
# - avx512: per 512 bits one vpxorq, one vpopcntq (port 5 only) and one vpaddq on the two 512-bit
#   ports: 3 uops in 1.5 cycles = 512 / 1.5 = 341;
# - avx2: per 256 bits vpxor, the nibble-lookup popcount (vpand, vpsrlw, vpand, 2 x vpshufb, vpaddb)
#   and one vpaddb into the byte accumulators (its vpsadbw amortised over many words) = 8 vector
#   uops on the 3 vector ALU ports of Haswell to Alder Lake (vpshufb on one or two of them): 8 / 3
#   = 2.67 cycles, 256 / 2.67 = 96 (an estimate from uop counts, not a measurement);
# - portable / numpy: scalar 64-bit popcnt, one per cycle = 64.
BINARY_MACS_PER_CYCLE = {"amx": 1024.0, "avx512": 512 / 1.5, "avx2": 96.0, "portable": 64.0, "numpy": 64.0}


def float_macs_per_cycle(cpu: CpuInfo, kernel: Optional[str] = None) -> float:
    """Peak float32 MACs per cycle per core: two FMA units x 16 lanes = 32 with AVX-512, 2 x 8 = 16
    with AVX2 + FMA, else 4 (SSE: a multiply and an add port, 4 lanes). ``kernel="avx2"`` counts
    the AVX2 figure on any CPU: that path is benchmarked as on an AVX2-only CPU
    (``NUMBA_CPU_NAME=haswell``), where the plan's float parts are compiled for AVX2 too."""
    if kernel != "avx2" and "avx512f" in cpu.flags:
        return 32.0
    if "avx2" in cpu.flags and "fma" in cpu.flags:
        return 16.0
    return 4.0


@dataclass
class PeakTimes:
    """The time the model's MACs take at the hardware's peak: binary part, float part (seconds)."""

    binary_s: float
    float_s: float
    mhz: float
    cores: int

    @property
    def total_s(self) -> float:
        return self.binary_s + self.float_s


def peak_times(counts: OpCounts, paths: Mapping[str, str], cpu: CpuInfo, threads: int = 1, batch: int = 1,
               kernel: Optional[str] = None) -> Optional[PeakTimes]:
    """``batch`` images' MACs at peak on ``threads`` cores (at most the logical CPUs), at ``cpu.mhz``.

    Each binary layer counts at the rate of its own kernel path (``paths[name]``, else ``kernel``, else
    ``portable``); the float MACs at :func:`float_macs_per_cycle`. None when the clock is unknown.
    """
    if not cpu.mhz:
        return None
    cores = max(1, min(int(threads), cpu.logical_cpus))
    hz = cpu.mhz * 1e6 * cores
    default = kernel or "portable"
    binary_cycles = sum(macs / BINARY_MACS_PER_CYCLE[paths.get(name, default)]
                        for name, macs in counts.binary_macs.items())
    float_cycles = counts.float_macs / float_macs_per_cycle(cpu, kernel)
    return PeakTimes(batch * binary_cycles / hz, batch * float_cycles / hz, cpu.mhz, cores)


# -- the deployed model -----------------------------------------------------------------------------


def engine_of(model: Any) -> str:
    """``layers`` for a :class:`PackedModel`, ``plan`` for a compiled model."""
    return "layers" if isinstance(model, PackedModel) else "plan"


def binary_layer_paths(model: Any) -> dict[str, str]:
    """The kernel path (``amx``, ``avx512``, ``avx2``, ``portable``, ``numpy``) of each binary layer,
    by layer name, as the model runs it (the per-layer ``auto`` choice included)."""
    if isinstance(model, PackedModel):
        return {n: layer_kernel(m.impl, m.in_channels) for n, m in model.packed_layers()}
    from ..deploy.runtime.plan import _pair, plan_layer_kernel

    impl = getattr(model, "impl", None)
    return {layer["name"]: plan_layer_kernel(impl, int(layer["in_channels"]), _pair(layer["kernel_size"])[1])
            for layer in model.metadata.get("binary_layers", [])}


def tap_packed_layers(model: Any) -> int:
    """How many of a compiled plan's avx512 binary conv layers pack a kernel row's taps together
    (:mod:`recu.deploy.runtime.kernels.taps`; 0 for the per-layer engine, which does not)."""
    if isinstance(model, PackedModel) or not hasattr(model, "metadata"):
        return 0
    from ..deploy.runtime.plan import _pair, packs_taps

    paths = binary_layer_paths(model)
    return sum(packs_taps(paths[layer["name"]], int(layer["in_channels"]), _pair(layer["kernel_size"])[1])
               for layer in model.metadata.get("binary_layers", []))


def kernel_summary(model: Any) -> str:
    """The kernel paths of the model's binary layers, e.g. ``amx (12 layers), avx512 (6 layers)``
    (``avx512 (13 layers, 13 tap-packed)`` where the plan packs narrow layers' taps)."""
    counts = Counter(binary_layer_paths(model).values())
    if not counts:
        return "no binary layers"
    taps = tap_packed_layers(model)

    def one(kind: str, n: int) -> str:
        extra = f", {taps} tap-packed" if kind == "avx512" and taps else ""
        return f"{kind} ({n} layer{'s' if n != 1 else ''}{extra})"

    return ", ".join(one(k, n) for k, n in counts.most_common())


def fp_twin_name(name: str) -> Optional[str]:
    """The registry's full-precision twin of binary model ``name`` (``resnet20_1w1a`` ->
    ``resnet20_fp``, ``resnet18_1w1a_imagenet`` -> ``resnet18_fp_imagenet``, ``reactnet_resnet18`` ->
    ``reactnet_resnet18_fp``), or None when the registry has none."""
    from ..models import available

    twin = name.replace("_1w1a", "_fp") if "_1w1a" in name else f"{name}_fp"
    return twin if twin != name and twin in available() else None


def fp_twin(spec: Optional[Mapping]) -> Optional[tuple[str, nn.Module]]:
    """(name, model) of the full-precision twin of the model a ``recu_spec`` describes, in eval mode
    with random weights (only its speed is used): same ``num_classes``, and those of the spec's
    options the twin takes (``in_channels``; not e.g. ReActNet's training ``stage``); for a user's
    model, its factory's model without binarisation. None without a spec or a twin."""
    from .. import models

    if not spec or not spec.get("name"):
        return None
    if isinstance(spec.get("binarize"), Mapping):  # a user's model (recu.models.user): its factory's, as built
        plain = {k: v for k, v in spec.items() if k != "config"}
        plain["binarize"] = {**spec["binarize"], "enabled": False}
        return f"{spec['name']} (full precision)", models.from_spec(plain).eval()
    name = fp_twin_name(str(spec["name"]))
    if name is None:
        return None
    # the builder function, for the options it takes: the package's, or its family module's (tiny)
    builder = getattr(models, name, None) or next(getattr(m, name) for m in vars(models).values()
                                                  if isinstance(m, types.ModuleType) and hasattr(m, name))
    params = inspect.signature(builder).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in (spec.get("kwargs") or {}).items() if takes_any or k in params}
    return name, models.create(name, num_classes=spec.get("num_classes"), **kwargs).eval()


# -- the benchmark -------------------------------------------------------------------------------------


@dataclass
class BenchResult:
    """What :func:`run_benchmark` measured; :func:`format_result` prints it."""

    threads: int
    input_shape: tuple[int, ...]
    engine: str = "layers"
    kernel: str = ""  # kernel_summary of the timed model
    # batch -> row label -> Timing: "packed" first, then "<baseline> eager" and "<baseline> compile"
    timings: dict[int, dict[str, Timing]] = field(default_factory=dict)
    compile_errors: dict[str, str] = field(default_factory=dict)  # baseline -> why torch.compile failed
    max_rel_diff: Optional[float] = None  # packed vs the float twin, over all batches (None: no twin)
    layers_packed: dict[str, float] = field(default_factory=dict)
    layers_eager: dict[str, float] = field(default_factory=dict)
    layer_types: dict[str, str] = field(default_factory=dict)
    eager_format: dict[int, dict[str, str]] = field(default_factory=dict)  # batch -> baseline -> faster layout
    baselines: list[str] = field(default_factory=list)
    cpu: Optional[CpuInfo] = None
    paths: dict[str, str] = field(default_factory=dict)  # binary layer -> kernel path
    counts: Optional[OpCounts] = None
    count_error: Optional[str] = None

    @property
    def compile_error(self) -> Optional[str]:
        """The first torch.compile failure, if any."""
        return next(iter(self.compile_errors.values()), None)

    def main_path(self) -> Optional[str]:
        """The kernel path most binary layers run (None without binary layers)."""
        counts = Counter(self.paths.values())
        return counts.most_common(1)[0][0] if counts else None

    def peak(self, batch: int) -> Optional[PeakTimes]:
        """:func:`peak_times` of ``batch`` images on this result's threads (None: no counts or clock)."""
        if self.counts is None or self.cpu is None:
            return None
        return peak_times(self.counts, self.paths, self.cpu, self.threads, batch, self.main_path())


def _error_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else type(e).__name__


def _set_threads(model: Any, threads: int) -> None:
    if isinstance(model, PackedModel):
        model.num_threads = threads
    else:
        model.set_num_threads(threads)


def _faster_layout(module: nn.Module, x: Tensor, repeat: int) -> str:
    """``NCHW`` or ``channels_last``: the faster input layout of ``module`` on ``x`` (oneDNN prefers one
    or the other per shape; PyTorch gets its better one), from interleaved calls of both."""
    xc = x.contiguous(memory_format=torch.channels_last)
    for _ in range(3):
        module(x), module(xc)
    t = time_interleaved({"NCHW": lambda: module(x), "channels_last": lambda: module(xc)}, repeat)
    return "channels_last" if t["channels_last"].median < t["NCHW"].median else "NCHW"


def run_benchmark(model: DeployedModel, input_shape: tuple[int, ...], batches: tuple[int, ...] = (1, 8, 64),
                  threads: Optional[int] = None, repeat: int = 20, use_compile: bool = True,
                  per_layer: bool = False, *, layers: Optional[PackedModel] = None,
                  baselines: Optional[Mapping[str, nn.Module]] = None, twin: bool = True,
                  runners: Optional[Mapping[str, Callable[[np.ndarray], object]]] = None) -> BenchResult:
    """Time a deployed model against float baselines, each eager and under ``torch.compile``.

    Args:
        model: what :func:`recu.deploy.load` returned: a compiled plan (fed numpy arrays) or a
            :class:`PackedModel` (fed tensors).
        input_shape: one image's (C, H, W).
        batches: batch sizes; each gets one row per path.
        threads: threads for every side (default: PyTorch's current count).
        repeat: timed calls per measurement (best and median reported).
        use_compile: also time ``torch.compile`` of each baseline (a failure is recorded, not raised).
        per_layer: time every leaf module of the layers engine and of the float twin at ``batches[0]``.
        layers: the layers engine of the same file, for the float twin, the agreement check and the
            per-layer table; defaults to ``model`` when that is a :class:`PackedModel`.
        baselines: more float models by label, e.g. ``{"resnet20_fp": fp}`` (:func:`fp_twin`).
        twin: time the float twin :func:`float_reference` (needs ``layers``).
        runners: more paths by label, each called with the batch as a float32 NCHW numpy array, e.g.
            onnxruntime sessions (:func:`recu.cli.bench_onnxruntime.onnxruntime_runners`, made for
            ``threads``); timed in the same interleaved rounds as the others.
    """
    batches = tuple(int(b) for b in batches)
    if not batches or min(batches) < 1:
        raise ValueError(f"batch sizes must be positive ints, got {batches}")
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, got {repeat}")
    if layers is None and isinstance(model, PackedModel):
        layers = model
    if per_layer and layers is None:
        raise ValueError("per_layer needs the layers engine of the file (layers=...)")
    threads = threads or torch.get_num_threads()
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    engine = engine_of(model)
    res = BenchResult(threads, tuple(input_shape), engine=engine, kernel=kernel_summary(model), cpu=cpu_info(),
                      paths=binary_layer_paths(model))
    try:
        for m in {id(model): model, id(layers): layers}.values():
            if m is not None:
                _set_threads(m, threads)
        try:
            res.counts = count_ops(model, input_shape)
        except ValueError as e:
            res.count_error = str(e)
        floats: dict[str, nn.Module] = {}
        if twin and layers is not None:
            floats["float twin"] = float_reference(layers)
        floats.update(baselines or {})
        res.baselines = list(floats)
        compiled = {label: torch.compile(m) for label, m in floats.items()} if use_compile else {}
        for b in batches:
            res.timings[b] = _time_batch(model, engine, floats, compiled, b, input_shape, repeat, res, runners or {})
        if per_layer:
            _time_layers(layers, floats.get("float twin") or float_reference(layers), batches[0], input_shape,
                         repeat, res)
    finally:
        torch.set_num_threads(old_threads)
    return res


def _time_batch(model: DeployedModel, engine: str, floats: dict[str, nn.Module], compiled: dict[str, Any], b: int,
                input_shape: tuple[int, ...], repeat: int, res: BenchResult,
                runners: Mapping[str, Callable[[np.ndarray], object]]) -> dict[str, Timing]:
    """One batch size's row of timings (and the agreement with the float twin)."""
    x = torch.randn(b, *input_shape)
    arg = x.numpy() if engine == "plan" else x  # the plan takes numpy as a deployment would
    row: dict[str, Timing] = {}
    with torch.inference_mode():
        got = model(arg)
        got = torch.from_numpy(got) if isinstance(got, np.ndarray) else got
        if "float twin" in floats:
            want = floats["float twin"](x)
            diff = float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))
            res.max_rel_diff = max(res.max_rel_diff or 0.0, diff)
        fns: dict[str, Callable[[], object]] = {"packed": lambda: model(arg)}
        for label, module in floats.items():
            layout = _faster_layout(module, x, repeat)
            res.eager_format.setdefault(b, {})[label] = layout
            xr = x if layout == "NCHW" else x.contiguous(memory_format=torch.channels_last)
            fns[f"{label} eager"] = lambda module=module, xr=xr: module(xr)
            if label not in compiled or label in res.compile_errors:
                continue
            try:
                compiled[label](xr)  # compiles (or fails) here; warmed up with the others below
            except Exception as e:  # noqa: BLE001 - no compiler toolchain, unsupported op ...
                res.compile_errors[label] = _error_line(e)
                continue
            fns[f"{label} compile"] = lambda fn=compiled[label], xr=xr: fn(xr)
        xn = x.numpy()  # the same images, as a runtime outside PyTorch takes them
        for label, run in runners.items():
            fns[label] = lambda run=run: run(xn)
        for fn in fns.values():
            for _ in range(3):
                fn()
        row.update(time_interleaved(fns, repeat))
    return row


def _time_layers(layers: PackedModel, ref: nn.Module, batch: int, input_shape: tuple[int, ...], repeat: int,
                 res: BenchResult) -> None:
    """The per-layer table: every leaf module of the layers engine and of its float twin."""
    x = torch.randn(batch, *input_shape)
    xr = x.contiguous(memory_format=torch.channels_last) if \
        res.eager_format.get(batch, {}).get("float twin") == "channels_last" else x
    with torch.inference_mode():
        res.layers_packed = layer_times(layers.model, lambda: layers(x), repeat=max(3, repeat // 2))
        res.layers_eager = layer_times(ref, lambda: ref(xr), repeat=max(3, repeat // 2))
    res.layer_types = {n: type(m).__name__ for n, m in layers.model.named_modules() if n}
    for n, m in layers.packed_layers():  # which kernel path each packed layer runs
        res.layer_types[n] += f"[{layer_kernel(m.impl, m.in_channels)}]"


_ENGINE_TEXT = {"plan": "plan (the whole network in one compiled call)",
                "layers": "layers (per-layer PyTorch model with packed binary layers)"}


def _fmt_us(seconds: float) -> str:
    us = seconds * 1e6
    return f"{us:.2f} us" if us < 10 else f"{us:.1f} us"


def format_header(res: BenchResult) -> list[str]:
    """The lines above the timings: CPU, engine and kernel path, op counts, the peak rates."""
    lines = [res.cpu.describe() if res.cpu else "CPU: unknown",
             f"engine {_ENGINE_TEXT.get(res.engine, res.engine)}; kernel path {res.kernel}; threads {res.threads}; "
             f"input {res.input_shape}"]
    if res.counts is not None:
        c = res.counts
        source = "the file's graph" if c.source == "graph" else "the PyTorch modules"
        lines.append(f"MACs per image: {c.total_binary / 1e6:.3f} M binary in {len(c.binary_macs)} binary layers, "
                     f"{c.float_macs / 1e6:.3f} M float (counted from {source})")
    elif res.count_error:
        lines.append(f"MACs per image: not counted ({res.count_error})")
    if res.cpu is not None:
        paths = sorted(set(res.paths.values()), key=lambda p: -BINARY_MACS_PER_CYCLE[p])
        rates = ", ".join(f"{p} {BINARY_MACS_PER_CYCLE[p]:.0f}" for p in paths) or "-"
        clock = f"{res.cpu.mhz:.0f} MHz" if res.cpu.mhz else "unknown clock"
        lines.append(f"peak per core at {clock}: binary MACs/cycle {rates}; float32 FMA "
                     f"{float_macs_per_cycle(res.cpu, res.main_path()):.0f} MACs/cycle")
    if res.max_rel_diff is not None:
        lines.append(f"packed vs float twin max relative difference {res.max_rel_diff:.2e}")
    for label, err in res.compile_errors.items():
        lines.append(f"torch.compile unavailable for {label}: {err}")
    return lines


def format_result(res: BenchResult, top: int = 0) -> str:
    """A plain-text report: the header, one row per batch and path (latency, images/s, how many times
    faster the packed model is), the peak line per batch, then the per-layer table if it was timed
    (``top`` > 0 limits it to the slowest layers)."""
    lines = format_header(res)
    width = max([len("packed")] + [len(p) for row in res.timings.values() for p in row])
    lines.append(f"{'batch':>5}  {'path':<{width}} {'best ms':>9} {'median ms':>10} {'img/s':>10} "
                 f"{'packed speedup':>15}")
    for b, row in res.timings.items():
        packed = row["packed"].median
        for path, t in row.items():
            speed = "-" if path == "packed" else f"{t.median / packed:.2f}x"
            lines.append(f"{b:>5}  {path:<{width}} {t.best * 1e3:>9.3f} {t.median * 1e3:>10.3f} {b / t.median:>10.1f} "
                         f"{speed:>15}")
        layouts = res.eager_format.get(b, {})
        if layouts:
            lines.append(f"{'':>5}  PyTorch input layout: " + ", ".join(f"{k} {v}" for k, v in layouts.items()))
        peak = res.peak(b)
        if peak is not None:
            lines.append(f"{'':>5}  at peak ({peak.cores} core{'s' if peak.cores > 1 else ''}): binary part "
                         f"{_fmt_us(peak.binary_s)}, float part {_fmt_us(peak.float_s)}; packed takes "
                         f"{packed / peak.total_s:.1f}x that")
    if res.layers_packed:
        lines.append("")
        lines.append(f"per layer, layers engine, batch {next(iter(res.timings))} (median ms): packed vs eager "
                     "float twin")
        lines.append(f"{'layer':<28} {'type':<22} {'packed':>8} {'eager':>8} {'ratio':>7}")
        order = sorted(res.layers_packed, key=lambda n: -res.layers_eager.get(n, 0.0))
        if top:
            order = order[:top]
        for n in order:
            p, e = res.layers_packed[n], res.layers_eager.get(n, float("nan"))
            lines.append(f"{n:<28} {res.layer_types.get(n, '?'):<22} {p * 1e3:>8.3f} {e * 1e3:>8.3f} "
                         f"{e / p if p else float('nan'):>6.1f}x")
        lines.append(f"{'total (hooked layers)':<51} {sum(res.layers_packed.values()) * 1e3:>8.3f} "
                     f"{sum(res.layers_eager.values()) * 1e3:>8.3f}")
    return "\n".join(lines)


def format_summary(res: BenchResult, baseline: str, target: Optional[float] = None, target_batch: int = 1) -> str:
    """One line per batch: ``packed X ms``, then ``<baseline> eager Y ms, ratio R`` and the same under
    torch.compile, whether the faster float is at least ``target`` times slower (at ``target_batch``),
    and the time of the model's MACs at the CPU's peak with the ratio the faster float would have
    against that (the ceiling of the ratio on this CPU)."""
    lines = []
    for b, row in res.timings.items():
        packed = row["packed"].median
        parts = [f"batch {b}: packed {packed * 1e3:.3f} ms ({b / packed:.0f} img/s)"]
        floats = []
        for mode in ("eager", "compile"):
            t = row.get(f"{baseline} {mode}")
            if t is not None:
                floats.append(t.median)
                parts.append(f"{baseline} {mode} {t.median * 1e3:.3f} ms, ratio {t.median / packed:.2f}x")
        if target is not None and floats and b == target_batch:
            met = min(floats) / packed >= target
            parts.append(f"target >= {target:g}x vs the faster float: {'met' if met else 'NOT met'}")
        peak = res.peak(b)
        if peak is not None:
            ceiling = f" (faster float / peak = {min(floats) / peak.total_s:.0f}x)" if floats else ""
            parts.append(f"at peak: binary part {_fmt_us(peak.binary_s)}, float part {_fmt_us(peak.float_s)}{ceiling}")
        lines.append("; ".join(parts))
    return "\n".join(lines)
