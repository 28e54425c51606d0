"""Shared set-up of the deploy tests."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from recu import ReCUConv1d, ReCUConv2d, ReCULinear

_BINARY = (ReCUConv2d, ReCUConv1d, ReCULinear)


def randomize(model: nn.Module, seed: int = 1) -> nn.Module:
    """Non-trivial BatchNorm statistics and affines, random alphas and binary-layer biases (the init's
    are 0/1, which would let a wrong fold or scale pass), eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.randn(c, generator=g) * 0.5 + 1.0)
                m.bias.copy_(torch.randn(c, generator=g) * 0.3)
            if isinstance(m, _BINARY) and m.alpha is not None:
                m.alpha.copy_(torch.rand(m.alpha.shape, generator=g) + 0.1)
            if isinstance(m, _BINARY) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g))
    return model.eval()


def fixed_order_logits(model: nn.Module, x: "np.ndarray | torch.Tensor") -> np.ndarray:
    """``model``'s float32 output with its float convs summed in the plan's order (recu.deploy.exporter.fixed_order).

    PyTorch's own convs sum in an order oneDNN picks per CPU; where a value so computed sits within
    rounding of a binary activation's 0, the plan and PyTorch can take different signs on one CPU and
    not on another. This reference takes the plan's signs on every CPU (the rest of its float steps -
    exact +-1 sums, elementwise ops, pools - do not depend on the CPU); only the final linear layer
    rounds differently, which the logit tolerance covers.
    """
    from recu.deploy.exporter.fixed_order import fixed_order_float_convs

    with torch.no_grad():
        return fixed_order_float_convs(model)(torch.as_tensor(x)).numpy()


def assert_same_logits(got: np.ndarray, want: np.ndarray, rtol: float = 1e-5) -> None:
    """Each row within ``rtol`` of its largest |logit|, and got's top-1 a top-1 of ``want`` at that
    precision (equal, or a logit within 2 * rtol of the maximum: a tie no float32 order can break)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == np.float32
    scale = np.abs(want).max(axis=1, keepdims=True)
    worst = float((np.abs(got - want) / scale).max())
    assert worst <= rtol, f"logits differ by {worst:.2e} of the row's largest"
    top = want[np.arange(len(want)), got.argmax(1)]
    assert (top >= want.max(1) - 2 * rtol * scale[:, 0]).all()


def dyadic(t: torch.Tensor, step: float, limit: float) -> torch.Tensor:
    """``t`` rounded to a multiple of ``step`` (a power of 2) within [-limit, limit]: few mantissa bits."""
    return (t / step).round().clamp(-limit / step, limit / step) * step


def make_float_convs_exact(model: nn.Module, seed: int = 0) -> nn.Module:
    """Full-precision convs whose float32 sums are exact in any order, for inputs of multiples of 1/8 in
    [-4, 4] (``dyadic(x, 1 / 8, 4)``): the stem's weights become multiples of 1/64 in [-1, 1]; a 1x1
    conv (a downsample, fed arbitrary floats) gets one +-2^k weight per output channel at a random input
    channel, zeros elsewhere. For comparisons with an engine whose summation order is not PyTorch's
    (onnxruntime's MLAS): then no value feeding a sign depends on the order, on any CPU."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if not isinstance(m, nn.Conv2d) or isinstance(m, _BINARY):
                continue
            if m.kernel_size == (1, 1):
                o, c = m.weight.shape[:2]
                w = torch.zeros(o, c)
                sign = torch.randint(0, 2, (o,), generator=g) * 2 - 1
                w[torch.arange(o), torch.randint(0, c, (o,), generator=g)] = sign * 2.0 ** torch.randint(
                    -2, 2, (o,), generator=g)
                m.weight.copy_(w.reshape(o, c, 1, 1))
            else:
                m.weight.copy_(dyadic(m.weight, 1 / 64, 1.0))
    return model
