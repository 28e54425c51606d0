"""A Larq-style model summary: parameters, memory, binary and float operations per layer.

Conventions (those of the BNN literature: XNOR-Net, Bi-Real, ReCU):
- Operations are counted for convolutions and linear layers only, as multiply-accumulates
  for one input sample: a layer with binary weights *and* binary activations contributes
  BOPs, any other one FLOPs. OPs = FLOPs + BOPs / 64.
- Memory counts parameters (not buffers): 1 bit for each weight of a binary layer, 32 bits
  for everything else (alpha, biases, BatchNorm, full-precision layers).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from .nn import BinaryLayer

__all__ = ["LayerSummary", "ModelSummary", "summary"]


@dataclass
class LayerSummary:
    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    binary_params: int
    memory_bytes: float
    bops: int
    flops: int

    @property
    def bits_per_weight(self) -> int:
        return 1 if self.binary_params else 32


@dataclass
class ModelSummary:
    """The per-layer rows and the totals; ``str()`` gives the table."""

    layers: list[LayerSummary] = field(default_factory=list)
    input_size: tuple[int, ...] = ()

    @property
    def total_params(self) -> int:
        return sum(r.params for r in self.layers)

    @property
    def binary_params(self) -> int:
        return sum(r.binary_params for r in self.layers)

    @property
    def float_params(self) -> int:
        return self.total_params - self.binary_params

    @property
    def bops(self) -> int:
        return sum(r.bops for r in self.layers)

    @property
    def flops(self) -> int:
        return sum(r.flops for r in self.layers)

    @property
    def ops(self) -> float:
        """FLOPs + BOPs / 64, the usual single figure of BNN papers."""
        return self.flops + self.bops / 64

    @property
    def memory_bytes(self) -> float:
        """Size of the parameters stored with 1-bit binary weights."""
        return sum(r.memory_bytes for r in self.layers)

    @property
    def float32_bytes(self) -> int:
        return 4 * self.total_params

    @property
    def compression(self) -> float:
        """float32 size / 1-bit size."""
        return self.float32_bytes / self.memory_bytes if self.memory_bytes else 1.0

    def __str__(self) -> str:
        head = ("layer", "type", "output", "params", "bits", "memory", "BOPs", "FLOPs")
        rows = [head]
        for r in self.layers:
            rows.append((r.name, r.kind, "x".join(map(str, r.output_shape)) or "-", f"{r.params:,}",
                         str(r.bits_per_weight) if r.params else "-", _bytes(r.memory_bytes),
                         _count(r.bops), _count(r.flops)))
        widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
        line = "  ".join("-" * w for w in widths)
        fmt = lambda row: "  ".join(c.ljust(w) if i < 3 else c.rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(row, widths)))
        out = [fmt(head), line] + [fmt(r) for r in rows[1:]] + [line]
        out += [
            f"input: {'x'.join(map(str, self.input_size))}",
            f"parameters: {self.total_params:,} ({self.binary_params:,} binary, {self.float_params:,} float)",
            f"BOPs: {_count(self.bops)}   FLOPs: {_count(self.flops)}   OPs = FLOPs + BOPs/64: {_count(self.ops)}",
            f"size with 1-bit weights: {_bytes(self.memory_bytes)}   float32: {_bytes(self.float32_bytes)}"
            f"   compression: {self.compression:.2f}x",
        ]
        return "\n".join(out)


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def _count(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3f}{unit}"
    return f"{n:.0f}"


def _macs(module: nn.Module, out: torch.Tensor) -> int:
    if isinstance(module, nn.Linear):
        # out[0] is (..., out_features): a Linear applied to a sequence counts once per position.
        return out[0].numel() * module.in_features
    assert isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
    per_output = (module.in_channels // module.groups) * int(torch.tensor(module.kernel_size).prod())
    return out[0].numel() * per_output


def summary(model: nn.Module, input_size: Sequence[int]) -> ModelSummary:
    """Summarise ``model`` for one input sample of shape ``input_size`` (no batch dim, e.g. (3, 32, 32)).

    Runs one forward pass in eval mode without gradients on the model's device.
    """
    message = "input_size must be positive integer sizes without the batch dim, e.g. (3, 32, 32)"
    try:
        sizes = tuple(input_size)
    except TypeError:
        raise ValueError(f"{message}; got {input_size!r}") from None
    if not sizes or any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s <= 0 for s in sizes):
        raise ValueError(f"{message}; got {input_size!r}")
    input_size = tuple(int(s) for s in sizes)
    rows: dict[str, LayerSummary] = {}
    hooks = []

    def hook(name: str):
        def fn(module: nn.Module, inputs, out) -> None:  # type: ignore[no-untyped-def]
            row = rows[name]
            if isinstance(out, torch.Tensor):
                row.output_shape = tuple(out.shape[1:])
            if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
                macs = _macs(module, out)
                if isinstance(module, BinaryLayer) and module.config.fully_binary:
                    row.bops += macs
                else:
                    row.flops += macs
        return fn

    for name, module in model.named_modules():
        own = list(module.parameters(recurse=False))
        is_op = isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))
        if not own and not is_op:
            continue
        binary = module.weight.numel() if isinstance(module, BinaryLayer) and module.config.binary_weights else 0
        params = sum(p.numel() for p in own)
        rows[name] = LayerSummary(name or "(root)", type(module).__name__, (), params, binary,
                                  binary / 8 + 4 * (params - binary), 0, 0)
        hooks.append(module.register_forward_hook(hook(name)))

    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            with torch.no_grad():
                model(torch.zeros((1,) + input_size, device=device, dtype=dtype))
        finally:
            for m, mode in modes:  # each module's own mode (a frozen BatchNorm stays in eval)
                m.training = mode
    finally:
        for h in hooks:
            h.remove()
    return ModelSummary(list(rows.values()), input_size)
