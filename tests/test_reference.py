"""The authors' ReCU layer re-implemented in float64 straight from the method document (section 1).

Written independently of ``recu.functional``: BinaryQuantizer (sign with identity backward),
ApproxSign (Bi-Real) for activations, Q detached, sign(0) = +1, zero padding. The default
``ReCUConv2d`` converted with ``.double()`` must agree in outputs and in the gradients for
input, weight and alpha, in train and eval mode. With ``sign_at_zero="zero"`` the layer must
agree with the same reference using the authors' ``torch.sign`` (0 at 0).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import recu
from recu import ReCUConv2d


def reference_sign(x, at_zero: str):  # type: ignore[no-untyped-def]
    out = torch.ones_like(x)
    out[x < 0] = -1.0
    if at_zero == "zero":
        out[x == 0] = 0.0
    return out


class BinaryQuantizer(torch.autograd.Function):
    """Weights: forward sign (+1 at 0, or 0 at 0), backward identity (straight-through, no window)."""

    @staticmethod
    def forward(ctx, x, at_zero="plus_one"):  # type: ignore[no-untyped-def]
        return reference_sign(x, at_zero)

    @staticmethod
    def backward(ctx, g):  # type: ignore[no-untyped-def]
        return g, None


class ApproxSign(torch.autograd.Function):
    """Activations: forward sign (+1 at 0, or 0 at 0), backward dL/dx = dL/dy * max(0, 2 - 2|x|)."""

    @staticmethod
    def forward(ctx, x, at_zero="plus_one"):  # type: ignore[no-untyped-def]
        ctx.save_for_backward(x)
        return reference_sign(x, at_zero)

    @staticmethod
    def backward(ctx, g):  # type: ignore[no-untyped-def]
        (x,) = ctx.saved_tensors
        factor = torch.zeros_like(x)
        inner = x.abs() < 1
        factor[inner] = 2.0 - 2.0 * x[inner].abs()
        return g * factor, None


def authors_forward(x, weight, alpha, tau: float, training: bool, stride, padding, at_zero="plus_one"):
    w = weight
    w0 = w - w.mean([1, 2, 3], keepdim=True)                                        # 1. centre
    w1 = w0 / (torch.sqrt(w0.var([1, 2, 3], keepdim=True) + 1e-5) / 2 / math.sqrt(2))  # 2. b* = 2
    ew = torch.mean(torch.abs(w1))                                                   # 3. b_hat, one scalar
    q_tau = (-ew * math.log(2 - 2 * tau)).detach() if tau < 1 else torch.tensor(math.inf, dtype=w.dtype)  # 4.
    w2 = torch.max(torch.min(w1, q_tau), -q_tau)                                     # 5. clamp
    if training:                                                                     # 7. activation std
        a0 = x / torch.sqrt(x.var([1, 2, 3], keepdim=True) + 1e-5)
    else:
        a0 = x
    bw = BinaryQuantizer.apply(w2, at_zero)                                          # 6.
    ba = ApproxSign.apply(a0, at_zero)                                               # 7.
    out = F.conv2d(ba, bw, None, stride, padding)                                   # 8.
    return out * alpha


@pytest.mark.parametrize("tau", [0.6, 0.85, 0.99, 1.0])
@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 1), (1, 0), (2, 2)])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("at_zero", ["plus_one", "zero"])
def test_default_layer_equals_authors_layer(tau: float, stride: int, padding: int, training: bool,
                                            at_zero: str) -> None:
    torch.manual_seed(int(tau * 100) + 10 * stride + padding)
    config = recu.BinaryConfig(sign_at_zero=at_zero)
    layer = ReCUConv2d(5, 7, 3, stride=stride, padding=padding, config=config).double().train(training)
    with torch.no_grad():
        layer.weight.normal_(0.0, 0.1)  # Kaiming-normal-like latent weights
    recu.set_tau(layer, tau)
    x = torch.randn(3, 5, 8, 8, dtype=torch.float64) * 0.7
    x[0, :, :2, :2] = 0.0  # exercises sign(0): +1, or 0 with at_zero="zero"

    xr = x.clone().requires_grad_(True)
    wr = layer.weight.detach().clone().requires_grad_(True)
    ar = layer.alpha.detach().clone().requires_grad_(True)
    yr = authors_forward(xr, wr, ar, tau, training, stride, padding, at_zero)
    gy = torch.randn_like(yr)
    yr.backward(gy)

    xl = x.clone().requires_grad_(True)
    y = layer(xl)
    y.backward(gy)

    assert y.shape == yr.shape
    assert torch.allclose(y, yr, rtol=1e-12, atol=1e-12)
    assert torch.allclose(xl.grad, xr.grad, rtol=1e-10, atol=1e-12)
    assert torch.allclose(layer.weight.grad, wr.grad, rtol=1e-10, atol=1e-12)
    assert torch.allclose(layer.alpha.grad, ar.grad, rtol=1e-10, atol=1e-12)
    if tau < 0.9:  # the clamp is active: some weights get no task gradient beyond the std coupling
        w1 = layer.standardized_weight().detach()
        q = -w1.abs().mean() * math.log(2 - 2 * tau)
        assert (w1.abs() > q).any()


def test_sign_at_zero_changes_the_reference_output() -> None:
    # The zero patch of the test above reaches the output, so at_zero="zero" is really compared.
    torch.manual_seed(0)
    x = torch.randn(3, 5, 8, 8, dtype=torch.float64)
    x[0, :, :2, :2] = 0.0
    w = torch.randn(7, 5, 3, 3, dtype=torch.float64)
    alpha = torch.rand(7, 1, 1, dtype=torch.float64)
    plus = authors_forward(x, w, alpha, 0.9, False, 1, 1, "plus_one")
    zero = authors_forward(x, w, alpha, 0.9, False, 1, 1, "zero")
    assert (plus - zero).abs().max() > 0.5
    assert torch.equal(plus[1:], zero[1:])
