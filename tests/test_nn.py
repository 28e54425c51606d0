"""recu.nn layers against the formula of the method document, written out in float64."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import recu
from recu import BinaryConfig, ReCUConv1d, ReCUConv2d, ReCULinear, preset

D = torch.float64


# ---------------------------------------------------------------- float64 reference of every variant

def _pm1(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def _ste(x: torch.Tensor, grad_factor: torch.Tensor | None = None) -> torch.Tensor:
    """Forward sign(x) (+1 at 0); backward multiplies by grad_factor (1 if None)."""
    g = torch.ones_like(x) if grad_factor is None else grad_factor
    return _pm1(x).detach() + (x * g - (x * g).detach())


def reference(layer: recu.nn.BinaryLayer, a: torch.Tensor, training: bool):
    """The layer's output from its float64 weight, alpha and tau, built from plain torch ops.

    Returns (y, w, a, alpha) with w, a, alpha leaves requiring grad.
    """
    cfg = layer.config
    w = layer.weight.detach().to(D).clone().requires_grad_(True)
    a = a.detach().to(D).clone().requires_grad_(True)
    alpha = None if layer.alpha is None else layer.alpha.detach().to(D).clone().requires_grad_(True)
    tau = float(layer.tau)
    dims = tuple(range(1, w.dim()))
    w1 = w
    if cfg.center:
        w1 = w1 - w1.mean(dims, keepdim=True)
    if cfg.standardize:
        w1 = w1 * math.sqrt(2) * cfg.b_star / torch.sqrt(w1.var(dims, keepdim=True) + cfg.eps)
    b = w1.abs().mean(dims, keepdim=True) if cfg.scale_estimate == "channel" else w1.abs().mean()
    q = (-b * math.log(2 - 2 * tau)).detach() if tau < 1 else torch.full_like(b, math.inf)
    inside = (w1.abs() <= q).to(D)
    clamped = torch.maximum(torch.minimum(w1, q), -q)
    if cfg.clamp == "clamp":
        w2 = clamped
    elif cfg.clamp == "mask":
        w2 = w1.detach() + (w1 - w1.detach()) * inside
    elif cfg.clamp == "clamp_ste":
        w2 = clamped.detach() + (w1 - w1.detach())
    else:
        w2 = w1
    wb = _ste(w2) if cfg.binary_weights else w2
    a0 = a
    if cfg.binary_activations:
        if cfg.act_norm and training:
            a0 = a / torch.sqrt(a.var(tuple(range(1, a.dim())), keepdim=True) + cfg.eps)
        if cfg.act_grad == "approx_sign":
            factor = torch.clamp(2 - 2 * a0.detach().abs(), min=0)
        elif cfg.act_grad == "clipped":
            factor = (a0.detach().abs() <= 1).to(D)
        else:
            factor = None
        ab = _ste(a0, factor)
    else:
        ab = a
    if isinstance(layer, nn.Conv2d):
        y = F.conv2d(ab, wb, None, layer.stride, layer.padding, layer.dilation, layer.groups)
    elif isinstance(layer, nn.Conv1d):
        y = F.conv1d(ab, wb, None, layer.stride, layer.padding, layer.dilation, layer.groups)
    else:
        y = F.linear(ab, wb)
    shape = (w.shape[0],) + (1,) * (w.dim() - 2)
    if cfg.scale == "learned":
        y = y * alpha
    elif cfg.scale == "analytic":
        y = y * w2.abs().mean(dims).reshape(shape)
    elif cfg.scale == "mean_abs":
        wc = w - w.mean(dims, keepdim=True) if cfg.center else w
        y = y * wc.abs().mean(dims).reshape(shape)
    if layer.bias is not None:
        y = y + layer.bias.detach().to(D).reshape(shape)
    return y, w, a, alpha


def layer_grads(layer, x, gy):
    layer.zero_grad()
    x = x.clone().requires_grad_(True)
    y = layer(x)
    y.backward(gy)
    return y, layer.weight.grad, x.grad, None if layer.alpha is None else layer.alpha.grad


def check_against_reference(layer, x, training=True, rtol=1e-9, atol=1e-10):
    layer = layer.double().train(training)
    x = x.double()
    y, gw, gx, galpha = layer_grads(layer, x, gy := torch.randn_like(layer(x)))
    yr, w, a, alpha = reference(layer, x, training)
    yr.backward(gy)
    assert torch.allclose(y, yr, rtol=rtol, atol=atol)
    assert torch.allclose(gw, w.grad, rtol=rtol, atol=atol)
    assert torch.allclose(gx, a.grad, rtol=rtol, atol=atol)
    if alpha is not None:
        assert torch.allclose(galpha, alpha.grad, rtol=rtol, atol=atol)
    return layer, w.grad, a.grad


def simple_formula(x, weight, alpha, conv=F.conv2d, **kw):
    """conv(sign(A), sign(W - mean_c W)) * alpha."""
    dims = tuple(range(1, weight.dim()))
    return conv(_pm1(x), _pm1(weight - weight.mean(dims, keepdim=True)), **kw) * alpha


def make_conv(cfg=None, tau=0.85, **kw):
    args = dict(in_channels=4, out_channels=6, kernel_size=3, padding=1)
    args.update(kw)
    layer = ReCUConv2d(**args, config=cfg)
    recu.set_tau(layer, tau)
    return layer


# ---------------------------------------------------------------- forward = conv(sign A, sign(W - mean W)) * alpha

@pytest.mark.parametrize("tau", [0.6, 0.85, 0.99, 1.0])
@pytest.mark.parametrize("b_star", [0.2, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("training", [True, False])
def test_forward_equals_sign_formula(tau: float, b_star: float, training: bool) -> None:
    layer = make_conv(BinaryConfig(b_star=b_star), tau, stride=2).train(training)
    x = torch.randn(3, 4, 9, 9)
    x[0, 0, 0, :3] = 0.0  # sign(0) = +1
    with torch.no_grad():
        y = layer(x)
    expected = simple_formula(x, layer.weight, layer.alpha, stride=2, padding=1)
    assert y.shape == (3, 6, 5, 5)
    assert torch.allclose(y, expected, rtol=1e-6, atol=1e-6)
    # the output is alpha times an integer count
    counts = y / layer.alpha
    assert torch.allclose(counts, counts.round(), atol=1e-4)


def test_forward_uses_plus_one_at_zero_and_zero_padding() -> None:
    layer = ReCUConv2d(1, 1, 3, padding=1)
    with torch.no_grad():
        layer.weight.copy_(torch.arange(9.0).view(1, 1, 3, 3))  # centred: 4 negatives, 5 non-negatives
        layer.alpha.fill_(1.0)
    y = layer.eval()(torch.zeros(1, 1, 3, 3))
    wb = torch.tensor([-1.0, -1, -1, -1, 1, 1, 1, 1, 1]).view(1, 1, 3, 3)
    assert torch.equal(y, F.conv2d(torch.ones(1, 1, 3, 3), wb, padding=1))
    assert y[0, 0, 1, 1].item() == 1.0  # centre: 5 - 4
    assert y[0, 0, 0, 0].item() == 4.0  # corner: 4 real inputs times w[4], w[5], w[7], w[8] = +1; padding adds 0


# ---------------------------------------------------------------- gradients

@pytest.mark.parametrize("tau", [0.6, 0.85, 0.99, 1.0])
@pytest.mark.parametrize("training", [True, False])
def test_default_layer_matches_float64_reference(tau: float, training: bool) -> None:
    check_against_reference(make_conv(None, tau), torch.randn(2, 4, 6, 6), training)


def test_weight_gradient_by_hand_through_the_standardisation() -> None:
    """dL/dW1 = (conv weight-gradient of sign A) masked at |W1| > Q, then back through centring/standardising."""
    layer = make_conv(None, 0.7).double()
    x = torch.randn(2, 4, 6, 6, dtype=D)
    gy = torch.randn(2, 6, 6, 6, dtype=D)
    _, gw, _, _ = layer_grads(layer.train(), x, gy)

    w = layer.weight.detach().clone().requires_grad_(True)
    w0 = w - w.mean((1, 2, 3), keepdim=True)
    w1 = w0 * 2 * math.sqrt(2) / torch.sqrt(w0.var((1, 2, 3), keepdim=True) + 1e-5)
    q = -w1.detach().abs().mean() * math.log(2 - 2 * 0.7)
    ab = _pm1(x / torch.sqrt(x.var((1, 2, 3), keepdim=True) + 1e-5))
    g_wb = torch.nn.grad.conv2d_weight(ab, w.shape, gy * layer.alpha.detach(), padding=1)
    beyond = w1.detach().abs() > q
    assert 0.2 < beyond.double().mean().item() < 0.9  # many weights clamped at tau = 0.7
    g_w1 = torch.where(beyond, 0.0, g_wb)
    (expected,) = torch.autograd.grad(w1, w, g_w1)
    assert torch.allclose(gw, expected, rtol=1e-10, atol=1e-12)


def test_weights_beyond_q_get_zero_gradient_without_standardisation() -> None:
    cfg = BinaryConfig(center=False, standardize=False)
    layer = make_conv(cfg, 0.8).double()
    x = torch.randn(2, 4, 5, 5, dtype=D)
    gy = torch.randn(2, 6, 5, 5, dtype=D)
    _, gw, _, _ = layer_grads(layer, x, gy)
    w = layer.weight.detach()
    q = -w.abs().mean() * math.log(2 - 1.6)
    ab = _pm1(x / torch.sqrt(x.var((1, 2, 3), keepdim=True) + 1e-5))
    g_wb = torch.nn.grad.conv2d_weight(ab, w.shape, gy * layer.alpha.detach(), padding=1)
    beyond = w.abs() > q
    assert beyond.any() and (~beyond).any()
    assert torch.all(gw[beyond] == 0)
    assert torch.allclose(gw[~beyond], g_wb[~beyond], rtol=1e-12)


def test_tau_one_clamps_nothing() -> None:
    x = torch.randn(2, 4, 6, 6, dtype=D)
    gy = torch.randn(2, 6, 6, 6, dtype=D)
    a = make_conv(None, 1.0).double()
    b = make_conv(BinaryConfig(clamp="none"), 1.0).double()
    b.load_state_dict(a.state_dict())
    ya, gwa, gxa, _ = layer_grads(a, x, gy)
    yb, gwb, gxb, _ = layer_grads(b, x, gy)
    assert torch.equal(ya, yb) and torch.equal(gwa, gwb) and torch.equal(gxa, gxb)
    assert torch.equal(a.clamped_weight(), a.standardized_weight())


# ---------------------------------------------------------------- variants

VARIANTS = [
    BinaryConfig(),
    BinaryConfig(clamp="mask"),
    BinaryConfig(clamp="clamp_ste"),
    BinaryConfig(clamp="none"),
    BinaryConfig(scale_estimate="channel"),
    BinaryConfig(center=False),
    BinaryConfig(standardize=False),
    BinaryConfig(b_star=0.5),
    BinaryConfig(scale="analytic"),
    BinaryConfig(scale="mean_abs"),
    BinaryConfig(scale="mean_abs", center=False),
    BinaryConfig(scale="none"),
    BinaryConfig(act_grad="clipped"),
    BinaryConfig(act_grad="identity"),
    BinaryConfig(act_norm=False),
    BinaryConfig(binary_weights=False),
    BinaryConfig(binary_weights=False, clamp="mask"),
    BinaryConfig(binary_weights=False, clamp="clamp_ste"),
    BinaryConfig(binary_activations=False),
]


@pytest.mark.parametrize("cfg", VARIANTS, ids=lambda c: c.__repr__()[13:60])
@pytest.mark.parametrize("training", [True, False])
def test_variant_matches_reference(cfg: BinaryConfig, training: bool) -> None:
    check_against_reference(make_conv(cfg, 0.75, bias=True), torch.randn(2, 4, 5, 5), training)


def _grads_for(cfg, x, gy, state):
    layer = make_conv(cfg, 0.75).double()
    layer.load_state_dict(state, strict=False)
    return layer_grads(layer, x, gy)


def test_clamp_modes_same_forward_expected_gradients() -> None:
    x = torch.randn(2, 4, 5, 5, dtype=D)
    gy = torch.randn(2, 6, 5, 5, dtype=D)
    state = make_conv(None, 0.75).double().state_dict()
    out = {m: _grads_for(BinaryConfig(clamp=m), x, gy, state) for m in ("clamp", "mask", "clamp_ste", "none")}
    for m in out:
        assert torch.equal(out[m][0], out["clamp"][0])  # same forward
        assert torch.equal(out[m][2], out["clamp"][2])  # same input gradient
    assert torch.allclose(out["mask"][1], out["clamp"][1], rtol=1e-12)  # ReCU = gradient masking here
    assert torch.allclose(out["clamp_ste"][1], out["none"][1], rtol=1e-12)  # gradient passes the clamp
    assert not torch.allclose(out["clamp"][1], out["none"][1])


def test_real_weight_clamp_modes_forward() -> None:
    layer = make_conv(BinaryConfig(binary_weights=False), 0.7).double()
    w1 = layer.standardized_weight()
    q = -w1.abs().mean() * math.log(0.6)
    assert torch.allclose(layer.clamped_weight(), w1.clamp(-q, q))
    for mode, expected in (("mask", w1), ("clamp_ste", w1.clamp(-q, q)), ("none", w1)):
        other = make_conv(BinaryConfig(binary_weights=False, clamp=mode), 0.7).double()
        other.load_state_dict(layer.state_dict())
        assert torch.allclose(other.clamped_weight(), expected)
    x = torch.randn(2, 4, 5, 5, dtype=D)
    y = layer.eval()(x)
    assert torch.allclose(y, F.conv2d(_pm1(x), w1.clamp(-q, q), padding=1) * layer.alpha)


def test_scale_modes() -> None:
    x = torch.randn(2, 4, 5, 5, dtype=D)
    base = make_conv(BinaryConfig(scale="none"), 0.9).double().eval()
    conv = base(x)
    assert torch.allclose(conv, simple_formula(x, base.weight, 1.0, padding=1))
    assert base.alpha is None and "alpha" not in base.state_dict()
    for mode in ("analytic", "mean_abs"):
        layer = make_conv(BinaryConfig(scale=mode), 0.9).double().eval()
        layer.load_state_dict(base.state_dict())
        w = layer.weight
        if mode == "analytic":
            w1 = layer.standardized_weight()
            q = -w1.abs().mean() * math.log(0.2)
            s = w1.clamp(-q, q).abs().mean((1, 2, 3))
            assert torch.all(s < w1.abs().mean((1, 2, 3)))  # the clamp lowers E|W|
        else:
            s = (w - w.mean((1, 2, 3), keepdim=True)).abs().mean((1, 2, 3))
        assert torch.allclose(layer(x), conv * s.view(6, 1, 1))


def test_act_grad_variants_input_gradient() -> None:
    x = torch.tensor([[[[-1.5]], [[-0.75]], [[0.0]], [[0.25]], [[0.5]], [[1.0]], [[2.0]], [[-0.2]]]], dtype=D)
    expected = {
        "approx_sign": [0.0, 0.5, 2.0, 1.5, 1.0, 0.0, 0.0, 1.6],
        "clipped": [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0],
        "identity": [1.0] * 8,
    }
    for mode, g in expected.items():
        layer = ReCUConv2d(8, 1, 1, config=BinaryConfig(act_grad=mode), dtype=D).eval()  # eval: A0 = A
        with torch.no_grad():
            layer.weight.fill_(1.0)
            layer.weight[0, 0] = 2.0  # centred: +1 for channel 0, -1 for others ... any fixed signs
            layer.alpha.fill_(1.0)
        wb = _pm1(layer.weight - layer.weight.mean()).flatten()
        xx = x.clone().requires_grad_(True)
        layer(xx).sum().backward()
        assert xx.grad.flatten().tolist() == pytest.approx((torch.tensor(g, dtype=D) * wb).tolist())


def test_act_norm_only_in_training_and_switchable() -> None:
    x = torch.randn(2, 4, 5, 5, dtype=D) * 0.2
    gy = torch.randn(2, 6, 5, 5, dtype=D)
    on = make_conv(None, 0.9).double()
    off = make_conv(BinaryConfig(act_norm=False), 0.9).double()
    off.load_state_dict(on.state_dict())
    y1, _, gx_on, _ = layer_grads(on.train(), x, gy)
    y2, _, gx_off, _ = layer_grads(off.train(), x, gy)
    _, _, gx_eval, _ = layer_grads(on.eval(), x, gy)
    assert torch.equal(y1, y2)
    assert torch.allclose(gx_off, gx_eval)  # act_norm off in training = eval behaviour
    assert not torch.allclose(gx_on, gx_off)


def test_binary_activations_off_uses_real_input() -> None:
    layer = make_conv(BinaryConfig(binary_activations=False), 0.9).double()
    x = torch.randn(2, 4, 5, 5, dtype=D)
    y = layer.train()(x)
    w = layer.weight
    assert torch.allclose(y, F.conv2d(x, _pm1(w - w.mean((1, 2, 3), keepdim=True)), padding=1) * layer.alpha)


# ---------------------------------------------------------------- presets

def test_presets() -> None:
    assert set(recu.PRESETS) >= {"recu", "balanced", "xnor", "bnn"}
    assert preset("recu") == BinaryConfig()
    ir = preset("balanced")
    assert ir.clamp == "none" and ir.b_star == pytest.approx(2 ** -0.5) and ir.center and ir.standardize
    xn = preset("xnor")
    assert (xn.center, xn.standardize, xn.clamp, xn.scale, xn.act_grad, xn.act_norm) == (
        False, False, "none", "mean_abs", "clipped", False)
    bnn = preset("bnn")
    assert (bnn.center, bnn.standardize, bnn.clamp, bnn.scale, bnn.act_grad, bnn.act_norm) == (
        False, False, "none", "none", "clipped", False)
    assert len({preset(n) for n in ("recu", "balanced", "xnor", "bnn")}) == 4
    assert preset("recu", b_star=1.0).b_star == 1.0 and preset("recu").b_star == 2.0
    with pytest.raises(ValueError, match="unknown preset"):
        preset("birealnet")


def test_xnor_preset_output() -> None:
    layer = ReCUConv2d(4, 6, 3, padding=1, config=preset("xnor"), dtype=D).eval()
    x = torch.randn(2, 4, 5, 5, dtype=D)
    w = layer.weight
    assert torch.allclose(layer(x), F.conv2d(_pm1(x), _pm1(w), padding=1) * w.abs().mean((1, 2, 3)).view(6, 1, 1))


# ---------------------------------------------------------------- Conv1d and Linear

@pytest.mark.parametrize("training", [True, False])
def test_conv1d_equals_formula(training: bool) -> None:
    layer = ReCUConv1d(3, 5, 3, stride=2, padding=1)
    recu.set_tau(layer, 0.8)
    x = torch.randn(2, 3, 11)
    y = layer.train(training)(x)
    assert layer.alpha.shape == (5, 1)
    assert torch.allclose(y, simple_formula(x, layer.weight, layer.alpha, F.conv1d, stride=2, padding=1), atol=1e-6)
    check_against_reference(layer, x, training)


@pytest.mark.parametrize("training", [True, False])
def test_linear_equals_formula(training: bool) -> None:
    layer = ReCULinear(7, 4, bias=True)
    recu.set_tau(layer, 0.8)
    x = torch.randn(3, 7)
    y = layer.train(training)(x)
    assert layer.alpha.shape == (4,)
    w = layer.weight
    expected = F.linear(_pm1(x), _pm1(w - w.mean(1, keepdim=True))) * layer.alpha + layer.bias
    assert torch.allclose(y, expected, atol=1e-6)
    check_against_reference(layer, x, training)


# ---------------------------------------------------------------- constructor

def test_constructor_matches_conv2d() -> None:
    ref = inspect.signature(nn.Conv2d.__init__).parameters
    ours = inspect.signature(ReCUConv2d.__init__).parameters
    assert list(ours)[: len(ref)] == list(ref)
    assert ours["bias"].default is False
    for name in ref:
        if name not in ("self", "bias"):
            assert ours[name].default == ref[name].default, name
    layer = ReCUConv2d(3, 8, 3, 2, 1, 1, 1, True, "zeros", None, torch.float64)
    plain = nn.Conv2d(3, 8, 3, 2, 1, 1, 1, True, "zeros", None, torch.float64)
    for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups"):
        assert getattr(layer, attr) == getattr(plain, attr)
    assert layer.weight.shape == plain.weight.shape and layer.weight.dtype == torch.float64
    assert layer.bias is not None
    assert ReCUConv2d(3, 8, 3).bias is None
    assert layer.alpha.dtype == torch.float64  # alpha follows the layer's dtype


def test_constructor_signatures_conv1d_linear() -> None:
    for ours, ref in ((ReCUConv1d, nn.Conv1d), (ReCULinear, nn.Linear)):
        p, r = inspect.signature(ours.__init__).parameters, inspect.signature(ref.__init__).parameters
        assert list(p)[: len(r)] == list(r)
        assert p["bias"].default is False
    assert ReCULinear(3, 2).bias is None and ReCUConv1d(3, 2, 1).bias is None


def test_alpha_and_tau() -> None:
    layer = ReCUConv2d(16, 4096, 1)
    assert layer.alpha.shape == (4096, 1, 1)
    assert layer.alpha.requires_grad
    assert 0.0 <= layer.alpha.min().item() and layer.alpha.max().item() < 1.0
    assert layer.alpha.mean().item() == pytest.approx(0.5, abs=0.03)
    assert layer.alpha.std().item() == pytest.approx(1 / math.sqrt(12), abs=0.02)
    # the layer clamps from the start: tau = 0.85, the paper's schedule start (1.0 would not clamp)
    assert layer.tau.dim() == 0 and layer.tau.item() == pytest.approx(0.85) and layer.tau.dtype == torch.float32
    assert not isinstance(layer.tau, nn.Parameter)
    sd = layer.state_dict()
    assert "tau" in sd and "alpha" in sd
    other = ReCUConv2d(16, 4096, 1)
    recu.set_tau(layer, 0.9)
    other.load_state_dict(layer.state_dict())
    assert other.tau.item() == pytest.approx(0.9)


# ---------------------------------------------------------------- errors

def test_wrong_input_shape_or_channels() -> None:
    layer = ReCUConv2d(4, 6, 3)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\) or unbatched \(C, H, W\) with C = 4.*\(3, 8, 8\)"):
        layer(torch.randn(3, 8, 8))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\).* with C = 4.*\(1, 3, 8, 8\)"):
        layer(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"with C = 4.*\(8, 8\)"):
        layer(torch.randn(8, 8))
    with pytest.raises(ValueError, match=r"\(N, C, L\) or unbatched \(C, L\) with C = 3"):
        ReCUConv1d(3, 2, 1)(torch.randn(1, 2, 5))
    with pytest.raises(ValueError, match=r"\(\*, C\).* with C = 7"):
        ReCULinear(7, 2)(torch.randn(2, 6))
    with pytest.raises(ValueError, match=r"with C = 7.*\(2, 7, 3\)"):
        ReCULinear(7, 2)(torch.randn(2, 7, 3))
    g = ReCUConv2d(4, 6, 3, groups=2)
    assert g(torch.randn(1, 4, 5, 5)).shape == (1, 6, 3, 3)


@pytest.mark.parametrize("training", [False, True])
def test_unbatched_and_extra_dims_like_the_nn_parents(training: bool) -> None:
    """(C, H, W) / (C, L) / (C,) are one sample, as for nn.Conv2d / Conv1d / Linear; Linear takes (N, *, C)."""
    torch.manual_seed(0)
    for layer, x, parent in ((ReCUConv2d(4, 6, 3, padding=1), torch.randn(4, 5, 5), nn.Conv2d(4, 6, 3, padding=1)),
                             (ReCUConv1d(3, 5, 3), torch.randn(3, 7), nn.Conv1d(3, 5, 3)),
                             (ReCULinear(7, 2), torch.randn(7), nn.Linear(7, 2))):
        layer.train(training)
        y = layer(x)
        assert y.shape == parent(x).shape
        torch.testing.assert_close(y, layer(x.unsqueeze(0))[0], rtol=0, atol=0)
    lin = ReCULinear(7, 3, bias=True).train(training)
    with torch.no_grad():
        lin.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    x = torch.randn(2, 4, 7)
    y = lin(x)
    assert y.shape == (2, 4, 3)
    # the formula, written out: each sample's (L, C) block normalised by its own std in training
    a = x / torch.sqrt(x.var(dim=(1, 2), keepdim=True) + 1e-5) if training else x
    w = lin.weight
    w1 = (w - w.mean(1, keepdim=True)) * (math.sqrt(2) * 2.0) / torch.sqrt(w.var(1, keepdim=True) + 1e-5)
    q = -w1.abs().mean() * math.log(2 - 2 * 0.85)
    expected = _pm1(a) @ _pm1(w1.clamp(-q, q)).T * lin.alpha + lin.bias
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_weights_are_caught_when_the_check_is_on(bad: float) -> None:
    layer = ReCUConv2d(4, 6, 3)
    with torch.no_grad():
        layer.weight[0, 0, 0, 0] = bad
    layer(torch.randn(1, 4, 5, 5))  # off by default: no pass over the weights, no host sync
    assert not recu.nn.finite_check_enabled()
    recu.nn.set_finite_check(True)
    try:
        with pytest.raises(ValueError, match="non-finite"):
            layer(torch.randn(1, 4, 5, 5))
    finally:
        recu.nn.set_finite_check(False)
    with pytest.raises(ValueError, match="True or False"):
        recu.nn.set_finite_check(1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "field,value",
    [("clamp", "clip"), ("scale", "learnt"), ("act_grad", "ste"), ("scale_estimate", "filter"),
     ("b_star", 0.0), ("b_star", -1.0), ("b_star", math.nan), ("b_star", math.inf), ("b_star", "2"),
     ("eps", 0.0), ("eps", -1e-5), ("eps", None), ("center", "yes"), ("standardize", None),
     ("act_norm", 1), ("binary_weights", "False"), ("binary_activations", 0)],
)
def test_bad_config_values(field: str, value) -> None:
    with pytest.raises(ValueError, match=f"BinaryConfig.{field}"):
        BinaryConfig(**{field: value})
    with pytest.raises(ValueError, match=f"BinaryConfig.{field}"):
        BinaryConfig().replace(**{field: value})


def test_config_type_and_frozen() -> None:
    with pytest.raises(TypeError):
        ReCUConv2d(2, 2, 1, config={"clamp": "none"})
    with pytest.raises(Exception):
        BinaryConfig().clamp = "none"  # type: ignore[misc]
    assert BinaryConfig(b_star=1).b_star == 1


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_padding_mode(mode: str) -> None:
    with pytest.raises(ValueError, match="padding_mode"):
        ReCUConv2d(2, 2, 3, padding=1, padding_mode=mode)
    with pytest.raises(ValueError, match="padding_mode"):
        ReCUConv1d(2, 2, 3, padding=1, padding_mode=mode)


# ---------------------------------------------------------------- property: any shape, tau, b*

from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=25, deadline=None)
@given(
    c_in=st.integers(1, 4), c_out=st.integers(1, 4), k=st.integers(1, 3), stride=st.integers(1, 2),
    padding=st.integers(0, 1), tau=st.floats(0.5001, 1.0), b_star=st.floats(0.05, 10.0),
    training=st.booleans(), seed=st.integers(0, 2 ** 16),
)
def test_forward_formula_property(c_in, c_out, k, stride, padding, tau, b_star, training, seed) -> None:
    if c_in * k * k < 2:
        return  # one-element filters have no unbiased variance
    torch.manual_seed(seed)
    layer = ReCUConv2d(c_in, c_out, k, stride, padding, config=BinaryConfig(b_star=b_star), dtype=D)
    recu.set_tau(layer, tau)
    x = torch.randn(2, c_in, 5, 5, dtype=D)
    y = layer.train(training)(x)
    assert torch.allclose(y, simple_formula(x, layer.weight, layer.alpha, stride=stride, padding=padding))
    check_against_reference(layer, x, training)


def test_bfloat16_operands_give_the_float32_dot_products_up_to_bf16_rounding():
    torch.manual_seed(0)
    exact = recu.ReCUConv2d(16, 8, 3, padding=1)  # K = 144 <= 256: every dot product is exact in bf16
    fast = recu.ReCUConv2d(16, 8, 3, padding=1, config=recu.BinaryConfig(compute_dtype="bfloat16"))
    fast.load_state_dict(exact.state_dict())
    x = torch.randn(2, 16, 6, 6, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    torch.testing.assert_close(fast(x2), exact(x), rtol=0, atol=0)
    exact(x).square().sum().backward()
    fast(x2).square().sum().backward()
    # the backward convolutions run in bf16 too: gradients agree to bf16 precision
    scale = x.grad.abs().max()
    assert (x2.grad - x.grad).abs().max() <= 2 ** -6 * scale

    # K = 1024 with inputs aligned to filter 0: dot products (even) above 512 round to 8 significant bits
    big = recu.ReCUConv2d(1024, 4, 1)
    big_fast = recu.ReCUConv2d(1024, 4, 1, config=recu.BinaryConfig(compute_dtype="bfloat16"))
    big_fast.load_state_dict(big.state_dict())
    with torch.no_grad():
        big.alpha.fill_(1.0)
        big_fast.alpha.fill_(1.0)
        w0 = recu.functional.sign(recu.functional.center_filters(big.weight))[0, :, 0, 0]
        agree = torch.where(torch.rand(2, 1024, 3, 3) < 0.9, 1.0, -1.0)
        xb = w0[None, :, None, None] * agree
        ref, got = big.eval()(xb), big_fast.eval()(xb)
    assert ref.abs().max() > 600
    assert not torch.equal(got, ref)
    assert torch.all((got - ref).abs() <= ref.abs() * 2 ** -8)
    assert torch.equal(got, ref.to(torch.bfloat16).float())  # exactly the bf16 rounding of each dot product
