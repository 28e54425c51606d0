"""No surprises for a PyTorch user (issue 10, section 4), and tau's precision in a cast model (section 3).

- A layer built and trained without a schedule clamps (tau starts at 0.85, the schedule's start).
- model.to(torch.bfloat16) / .half() keep tau, Q and the latent-weight path in float32.
- ``create()`` gives each model its own number of classes; ``binarize()`` keeps 1x1 downsample
  convolutions full precision; the preset that is not IR-Net no longer says it is.
- The default forward makes no finiteness pass and no more passes over the activations than the
  authors' layer needs for the same sign (their layer, written from reading their code, is below).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

import recu
from recu import ExponentialTau, ReCUConv1d, ReCUConv2d, ReCULinear, binarize, binary_layers, preset, set_tau
from recu.convert import is_downsample_conv
from recu.models import create


def _w1_float32(w: Tensor) -> Tensor:
    """Steps 1-2 in float32, written out: centre each filter, scale it to Laplace scale b* = 2."""
    w = w.float()
    dims = tuple(range(1, w.dim()))
    w0 = w - w.mean(dims, keepdim=True)
    return w0 * (math.sqrt(2.0) * 2.0) / torch.sqrt(w0.var(dims, keepdim=True, unbiased=True) + 1e-5)


# ---------------------------------------------------------------- tau: a default that clamps, an argument

def test_a_layer_without_a_schedule_clamps() -> None:
    assert recu.nn.DEFAULT_TAU == 0.85 == ExponentialTau()(0)
    torch.manual_seed(0)
    layer = ReCUConv2d(8, 16, 3)
    assert layer.tau.item() == pytest.approx(0.85)
    w1 = _w1_float32(layer.weight.detach())
    q = -w1.abs().mean() * math.log(2 - 2 * 0.85)  # Q(0.85) = 1.20 b_hat
    beyond = w1.abs() > q
    assert 0.1 < beyond.double().mean() < 0.5  # a Laplace-ish share 2 (1 - tau) = 30% lies beyond Q
    # W2 is W1 clamped to +-Q: the weights beyond Q sit at +-Q
    w2 = layer.clamped_weight().detach()
    torch.testing.assert_close(w2, w1.clamp(-q, q), rtol=1e-6, atol=1e-6)
    assert not torch.equal(w2, layer.standardized_weight().detach())
    # the same layer at tau = 1: no clamp, W2 = W1; the same forward (sign(clamp(W1)) = sign(W1)),
    # but another gradient: with the clamp, the weights beyond Q get none through W2
    unclamped = ReCUConv2d(8, 16, 3, tau=1.0)
    unclamped.load_state_dict({**layer.state_dict(), "tau": torch.tensor(1.0)})
    assert torch.equal(unclamped.clamped_weight(), unclamped.standardized_weight())
    x = torch.randn(2, 8, 6, 6)
    y_clamped, y_free = layer(x), unclamped(x)
    assert torch.equal(y_clamped, y_free)
    y_clamped.square().sum().backward()
    y_free.square().sum().backward()
    assert not torch.allclose(layer.weight.grad, unclamped.weight.grad)


@pytest.mark.parametrize("cls,args", [(ReCUConv2d, (3, 4, 3)), (ReCUConv1d, (3, 4, 3)), (ReCULinear, (3, 4))])
def test_tau_constructor_argument(cls: type, args: tuple) -> None:
    assert cls(*args, tau=0.9).tau.item() == pytest.approx(0.9)
    assert cls(*args, tau=1.0).tau.item() == 1.0
    assert cls(*args).tau.dtype == torch.float32
    for bad in (0.5, 1.2, -1.0, math.nan, "0.9", True, None):
        with pytest.raises(ValueError, match=r"tau must lie in \(0.5, 1\]"):
            cls(*args, tau=bad)


def test_binarize_sets_the_initial_tau() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 3))  # first and last stay FP
    assert [m.tau.item() for _, m in binary_layers(binarize(model))] == [pytest.approx(0.85)]
    assert [m.tau.item() for _, m in binary_layers(binarize(model, tau=0.95))] == [pytest.approx(0.95)]
    with pytest.raises(ValueError, match="tau must lie"):
        binarize(model, tau=0.4)


# ---------------------------------------------------------------- a cast model keeps tau and Q in float32

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_casting_keeps_tau_and_q_float32(dtype: torch.dtype) -> None:
    assert torch.tensor(0.9985).to(torch.bfloat16).item() == 1.0  # what a cast tau would become: no clamp
    torch.manual_seed(0)
    model = nn.Sequential(ReCUConv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), ReCUConv2d(8, 8, 3, padding=1))
    model.to(dtype)
    for _, layer in binary_layers(model):
        assert layer.weight.dtype == dtype and layer.tau.dtype == torch.float32
    set_tau(model, 0.9985)
    for _, layer in binary_layers(model):
        assert layer.tau.item() == torch.tensor(0.9985).item()  # exactly the float32 value
        w1 = layer.standardized_weight()
        q = layer.quantile(w1)
        assert w1.dtype == q.dtype == layer.clamped_weight().dtype == torch.float32
        # the float32 value: the same stored weights, tau as float32
        ref_w1 = _w1_float32(layer.weight.detach())
        ref_q = -ref_w1.abs().mean() * torch.log(2.0 - 2.0 * torch.tensor(0.9985))
        assert math.isfinite(q.item())
        torch.testing.assert_close(q, ref_q, rtol=1e-6, atol=0)
    y = model(torch.randn(2, 4, 5, 5).to(dtype))
    assert y.dtype == dtype and torch.isfinite(y.float()).all()
    # back to float32: tau is the float32 value it always was, not a rounded one
    assert [m.tau.item() for _, m in binary_layers(model.float())] == [torch.tensor(0.9985).item()] * 2


def test_the_schedule_is_no_staircase_in_a_bf16_model() -> None:
    model = nn.Sequential(ReCUConv2d(4, 4, 3)).to(torch.bfloat16)
    s = ExponentialTau(0.85, 0.99, 600)
    taus = []
    for epoch in (590, 595, 598, 599):
        s.apply(model, epoch)
        taus.append(model[0].tau.item())
    assert taus == [torch.tensor(s(e)).item() for e in (590, 595, 598, 599)]
    assert taus == sorted(set(taus))  # four distinct values (bfloat16 would give one: 0.98828125)


def test_double_keeps_float64_and_state_dict_round_trips() -> None:
    layer = ReCUConv2d(3, 4, 3, tau=0.9).double()
    assert layer.tau.dtype == torch.float64  # float64 references keep full precision
    half = ReCUConv2d(3, 4, 3, tau=0.9).to(torch.bfloat16)
    other = ReCUConv2d(3, 4, 3)
    other.load_state_dict({k: v.float() for k, v in half.state_dict().items()})
    assert half.state_dict()["tau"].dtype == torch.float32 and other.tau.item() == pytest.approx(0.9)


# ---------------------------------------------------------------- create(), binarize(), presets

@pytest.mark.parametrize("name,classes", [("resnet18_1w1a_imagenet", 1000), ("resnet18_fp_imagenet", 1000),
                                          ("reactnet_resnet18", 1000), ("resnet20_1w1a", 10),
                                          ("vgg_small_1w1a", 10), ("digits_cnn_1w1a", 10)])
def test_create_uses_the_models_own_number_of_classes(name: str, classes: int) -> None:
    model = create(name)
    assert model.recu_spec["num_classes"] == classes
    assert [m for m in model.modules() if isinstance(m, nn.Linear)][-1].out_features == classes
    assert create(name, num_classes=7).recu_spec["num_classes"] == 7


class _BiRealBlock(nn.Module):
    """A Bi-Real/ReActNet-style downsampling block: AvgPool + 1x1 stride-1 conv on the shortcut."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 16, 3, 2, 1, bias=False)
        self.downsample = nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16))

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x) + self.downsample(x)


class _Bottleneck(nn.Module):
    """1x1 convolutions in the main path (binarised) and a strided 1x1 shortcut named ``proj`` (kept)."""

    def __init__(self) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(16, 4, 1, bias=False)
        self.conv = nn.Conv2d(4, 4, 3, 2, 1, bias=False)
        self.expand = nn.Conv2d(4, 16, 1, bias=False)
        self.proj = nn.Conv2d(16, 16, 1, 2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.expand(self.conv(self.reduce(x))) + self.proj(x)


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), _BiRealBlock(), _Bottleneck(),
                         nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 16, 1)),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def test_binarize_keeps_downsample_convolutions_full_precision() -> None:
    net = _net()
    kept = binarize(net)
    names = {n for n, _ in binary_layers(kept)}
    # binarised: the 3x3 convs and the 1x1 convs of the main path (stride 1, not on a shortcut)
    assert names == {"1.conv", "2.reduce", "2.conv", "2.expand", "3.0", "3.1"}
    assert type(kept[1].downsample[1]) is nn.Conv2d and type(kept[2].proj) is nn.Conv2d
    everything = binarize(net, keep_downsample=False)
    assert {n for n, _ in binary_layers(everything)} == names | {"1.downsample.1", "2.proj"}
    x = torch.randn(2, 3, 8, 8)
    assert kept(x).shape == everything(x).shape == (2, 10)


def test_is_downsample_conv() -> None:
    assert is_downsample_conv("layer2.0.downsample.0", nn.Conv2d(4, 8, 1, 2))
    assert is_downsample_conv("block.shortcut.0", nn.Conv2d(4, 8, 1))
    assert is_downsample_conv("proj", nn.Conv1d(4, 8, 1, 2))
    assert not is_downsample_conv("layer1.0.conv1", nn.Conv2d(4, 8, 1))  # 1x1 in the main path
    assert not is_downsample_conv("layer2.0.downsample.0", nn.Conv2d(4, 8, 3, 2))  # not 1x1
    assert not is_downsample_conv("fc", nn.Linear(4, 8))


def test_the_preset_that_was_not_irnet_is_renamed() -> None:
    assert "irnet" not in recu.PRESETS
    with pytest.raises(ValueError, match=r"renamed 'balanced'.*EDE backward.*power-of-two scale"):
        preset("irnet")
    balanced = preset("balanced")
    assert balanced.clamp == "none" and balanced.b_star == pytest.approx(2 ** -0.5)


# ---------------------------------------------------------------- the eager layer's cost

class _AuthorsSign(torch.autograd.Function):
    """sign in forward; backward: identity (weights) or the ApproxSign window (activations)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, window: bool) -> Tensor:
        ctx.save_for_backward(x)
        ctx.window = window
        return torch.sign(x)

    @staticmethod
    def backward(ctx: Any, g: Tensor):  # type: ignore[no-untyped-def]
        (x,) = ctx.saved_tensors
        return (g * (2 - (2 * x).abs()).clamp(min=0) if ctx.window else g), None


class _AuthorsConv2d(nn.Conv2d):
    """The authors' BinarizeConv2d forward: standardise, Q read back as a Python number, clamp,
    per-sample activation scaling in training, sign, conv, times alpha."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.alpha = nn.Parameter(torch.rand(self.out_channels, 1, 1))
        self.register_buffer("tau", torch.tensor(0.85))

    def forward(self, a: Tensor) -> Tensor:
        w = self.weight
        w0 = w - w.mean([1, 2, 3], keepdim=True)
        w1 = w0 / (torch.sqrt(w0.var([1, 2, 3], keepdim=True) + 1e-5) / 2 / math.sqrt(2))
        q = float(-(w1.abs().mean() * torch.log(2 - 2 * self.tau)))
        w2 = torch.clamp(w1, -q, q)
        if self.training:
            a = a / torch.sqrt(a.var([1, 2, 3], keepdim=True) + 1e-5)
        return F.conv2d(_AuthorsSign.apply(a, True), _AuthorsSign.apply(w2, False), None, self.stride,
                        self.padding) * self.alpha


class _Passes(TorchDispatchMode):
    """Ops whose output has as many elements as the activations (a full pass over them)."""

    def __init__(self, numel: int) -> None:
        super().__init__()
        self.numel, self.ops = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if isinstance(out, Tensor) and out.numel() == self.numel and name not in ("detach", "view", "expand"):
            self.ops.append(name)
        return out


@pytest.mark.parametrize("training", [False, True])
def test_the_default_forward_makes_no_extra_pass_over_the_activations(training: bool) -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 16, 12, 12)  # 16 -> 32 channels: the output has another size than x
    ours, authors = ReCUConv2d(16, 32, 3, padding=1).train(training), _AuthorsConv2d(16, 32, 3, padding=1).train(training)
    counts = {}
    for key, layer in (("ours", ours), ("authors", authors)):
        with torch.no_grad(), _Passes(x.numel()) as passes:
            layer(x)
        counts[key] = passes.ops
    assert "where" not in counts["ours"]  # torch.where's CPU kernel made the layer 2x slower than the authors'
    # the authors' torch.sign is one pass; recu's sign with sign(0) = +1 and nan -> -1 is nan_to_num,
    # sign, add 1/2, sign: three more
    assert len(counts["ours"]) <= len(counts["authors"]) + 3, counts
    # the finiteness check (isfinite: abs, ne, eq ... over the weights) runs only when asked for
    weight_passes = {}
    for enabled in (False, True):
        recu.nn.set_finite_check(enabled)
        try:
            with torch.no_grad(), _Passes(ours.weight.numel()) as passes:
                ours(x)
        finally:
            recu.nn.set_finite_check(False)
        weight_passes[enabled] = passes.ops
    assert len(weight_passes[True]) >= len(weight_passes[False]) + 2
