"""Latency, throughput and per-layer timing of a packed model against the same model in PyTorch.

The float baseline, :func:`float_reference`, is the loaded network with every packed layer
replaced by its float32 PyTorch equivalent, ``F.conv2d(sign(x), w_sign) * scale + bias``: the same
function (the benchmark checks the logits agree) and the same float parts, so the comparison
isolates the binary convolutions. Both sides run with the same thread count.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import functional as RF
from .kernels import layer_kernel
from .pack import unpack_signs_numpy
from .runtime import PackedConv2d, PackedLinear, PackedModel

__all__ = ["FloatSignConv2d", "float_reference", "time_call", "Timing", "layer_times", "BenchResult", "run_benchmark",
           "format_result"]


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


@dataclass
class BenchResult:
    threads: int
    input_shape: tuple[int, ...]
    # batch -> {"packed" | "eager" | "compile": Timing}
    timings: dict[int, dict[str, Timing]] = field(default_factory=dict)
    compile_error: Optional[str] = None
    max_rel_diff: float = 0.0
    layers_packed: dict[str, float] = field(default_factory=dict)
    layers_eager: dict[str, float] = field(default_factory=dict)
    layer_types: dict[str, str] = field(default_factory=dict)
    eager_format: dict[int, str] = field(default_factory=dict)  # batch -> the faster input layout


def run_benchmark(packed: PackedModel, input_shape: tuple[int, ...], batches: tuple[int, ...] = (1, 8),
                  threads: Optional[int] = None, repeat: int = 20, use_compile: bool = True,
                  per_layer: bool = True) -> BenchResult:
    """Time ``packed`` against :func:`float_reference` (eager, and ``torch.compile`` where it works)."""
    threads = threads or torch.get_num_threads()
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    packed.num_threads = threads
    res = BenchResult(threads, tuple(input_shape))
    try:
        ref = float_reference(packed)
        compiled = None
        if use_compile:
            try:
                compiled = torch.compile(ref)
                with torch.inference_mode():
                    compiled(torch.randn(1, *input_shape).contiguous(memory_format=torch.channels_last))
            except Exception as e:  # noqa: BLE001 - no compiler toolchain, unsupported op ...
                compiled, res.compile_error = None, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        fmt = torch.contiguous_format
        for b in batches:
            x = torch.randn(b, *input_shape)
            xc = x.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                want = ref(x)
                got = packed(x)
                res.max_rel_diff = max(res.max_rel_diff,
                                       float((got - want).abs().max() / want.abs().max().clamp_min(1e-12)))
                row = {"packed": time_call(lambda x=x: packed(x), repeat)}
                # PyTorch gets its faster memory format (oneDNN prefers one or the other per shape).
                eager = {torch.contiguous_format: time_call(lambda x=x: ref(x), repeat),
                         torch.channels_last: time_call(lambda xc=xc: ref(xc), repeat)}
                fmt = min(eager, key=lambda f: eager[f].median)
                row["eager"] = eager[fmt]
                if compiled is not None:
                    xr = x if fmt == torch.contiguous_format else xc
                    row["compile"] = time_call(lambda xr=xr: compiled(xr), repeat)
            res.timings[b] = row
            res.eager_format[b] = "channels_last" if fmt == torch.channels_last else "NCHW"
        if per_layer:
            x = torch.randn(batches[0], *input_shape)
            xr = x.contiguous(memory_format=torch.channels_last) if res.eager_format[batches[0]] != "NCHW" else x
            with torch.inference_mode():
                res.layers_packed = layer_times(packed.model, lambda: packed(x), repeat=max(3, repeat // 2))
                res.layers_eager = layer_times(ref, lambda: ref(xr), repeat=max(3, repeat // 2))
            res.layer_types = {n: type(m).__name__ for n, m in packed.model.named_modules() if n}
            for n, m in packed.packed_layers():  # which kernel path each packed layer runs
                res.layer_types[n] += f"[{layer_kernel(m.impl, m.in_channels)}]"
    finally:
        torch.set_num_threads(old_threads)
    return res


def format_result(res: BenchResult, top: int = 0) -> str:
    """A plain-text report: one line per batch size, then the per-layer table (``top`` > 0 limits it)."""
    lines = [(f"threads {res.threads}, input {res.input_shape}, packed vs float max relative difference "
              f"{res.max_rel_diff:.2e}")]
    if res.compile_error:
        lines.append(f"torch.compile unavailable: {res.compile_error}")
    lines.append(f"{'batch':>5} {'path':>8} {'best ms':>9} {'median ms':>10} {'img/s':>9} {'speedup':>8}")
    for b, row in res.timings.items():
        lines.append(f"  (batch {b}: PyTorch input layout {res.eager_format.get(b, '?')})")
        for path, t in row.items():
            speed = t.median and row["eager"].median / t.median
            lines.append(f"{b:>5} {path:>8} {t.best * 1e3:>9.3f} {t.median * 1e3:>10.3f} {b / t.median:>9.1f} "
                         f"{speed:>7.2f}x")
    if res.layers_packed:
        lines.append("")
        lines.append(f"per layer, batch {next(iter(res.timings))} (median ms): packed vs eager")
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
