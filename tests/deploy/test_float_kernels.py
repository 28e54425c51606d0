"""The compiled plan's float kernels (recu.deploy.runtime.kernels.float_ops) against PyTorch / float64 references.

Every kernel runs in both variants (``name``: numba parallel, ``name_serial``); activations are
NHWC arrays, references are computed on the NCHW tensors. Exact kernels are compared bit for bit
(NaN positions and the sign of zeros included); the float64-accumulating ones against float64.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("numba")

from recu.deploy.runtime.kernels import float_ops as FK  # noqa: E402
from recu.deploy.runtime.fma_numpy import conv2d_fma_chain  # noqa: E402

VARIANTS = ["parallel", "serial"]


def kernel(name: str, variant: str):  # type: ignore[no-untyped-def]
    """The compiled kernel ``name`` in the given variant."""
    return getattr(FK, name if variant == "parallel" else f"{name}_serial")


def nhwc(t: torch.Tensor) -> np.ndarray:
    """An NCHW tensor as the kernels' C-contiguous float32 NHWC array."""
    return np.ascontiguousarray(t.detach().float().permute(0, 2, 3, 1).numpy())


def nchw(a: np.ndarray) -> torch.Tensor:
    """A kernel's NHWC output as an NCHW tensor."""
    return torch.from_numpy(a).permute(0, 3, 1, 2)


def assert_same_floats(got: np.ndarray | torch.Tensor, want: np.ndarray | torch.Tensor) -> None:
    """Bit-level equality up to NaN payloads: same values, NaN at the same places, same zero signs."""
    got = np.asarray(got, dtype=np.float32)
    want = np.asarray(want, dtype=np.float32)
    assert got.shape == want.shape
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan], want[~nan])
    assert np.array_equal(np.signbit(got[~nan]), np.signbit(want[~nan]))


def special_values(shape: tuple, seed: int) -> torch.Tensor:
    """Random normals with -0.0, 0.0, NaN, +-inf and values just around +-1 mixed in."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 2
    flat = x.view(-1)
    specials = torch.tensor([-0.0, 0.0, float("nan"), float("inf"), -float("inf"), 1.0, -1.0,
                             np.nextafter(np.float32(1), np.float32(2)), np.nextafter(np.float32(-1), np.float32(-2))])
    idx = torch.randperm(flat.numel(), generator=g)[: 3 * specials.numel()]
    flat[idx] = specials.repeat(3)
    return x


# ---------------------------------------------------------------------------------------------
# conv2d

CONV_CASES = [  # (N, C, H, W, O, kernel, stride, padding, bias)
    (1, 3, 12, 12, 16, (3, 3), (1, 1), (1, 1), True),    # the ResNet-20 stem, smaller
    (1, 3, 19, 17, 64, (7, 7), (2, 2), (3, 3), False),   # the ImageNet stem, smaller
    (2, 24, 5, 6, 48, (1, 1), (1, 1), (0, 0), True),     # a 1x1 downsample: blocks of 32 + 16 channels
    (2, 5, 9, 11, 17, (3, 5), (2, 1), (1, 2), True),     # 16 blocked channels + 1, asymmetric
    (1, 4, 3, 3, 16, (5, 5), (1, 1), (2, 2), True),      # every window clipped by the padding
    (1, 3, 10, 9, 112, (3, 3), (1, 1), (1, 1), True),    # 512-bit blocks of 64 + 32 + 16 channels
]
# "_wide": the 512-bit register blocks (what the plan uses where numba targets AVX-512; elsewhere LLVM
# splits the vectors, so the variant runs - slowly - on any CPU and must give the same bits).
CONV_VARIANTS = VARIANTS + ["parallel_wide", "serial_wide"]


def run_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: tuple, padding: tuple,
             variant: str) -> np.ndarray:
    n, _, h, w = x.shape
    o, _, kh, kw = weight.shape
    out = np.full((n, (h + 2 * padding[0] - kh) // stride[0] + 1, (w + 2 * padding[1] - kw) // stride[1] + 1, o),
                  np.nan, dtype=np.float32)
    w_hwio = np.ascontiguousarray(weight.permute(2, 3, 1, 0).numpy())  # (KH, KW, C, O)
    base, wide = variant.removesuffix("_wide"), variant.endswith("_wide")
    kernel("conv2d_nhwc", base)(nhwc(x), w_hwio, bias.numpy(), stride[0], stride[1], padding[0], padding[1], out,
                                wide)
    return out


@pytest.mark.parametrize("variant", CONV_VARIANTS)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_matches_float64_conv(case: tuple, variant: str) -> None:
    n, c, h, w, o, k, s, p, has_bias = case
    g = torch.Generator().manual_seed(hash(case) % 2**31)
    x, weight = torch.randn(n, c, h, w, generator=g), torch.randn(o, c, *k, generator=g)
    bias = torch.randn(o, generator=g) if has_bias else torch.zeros(o)
    got = run_conv(x, weight, bias, s, p, variant)
    want = F.conv2d(x.double(), weight.double(), bias.double(), s, p)
    np.testing.assert_allclose(nchw(got).numpy(), want.numpy(), rtol=1e-6, atol=1e-6 * want.abs().max().item())


# The full-precision convs of the registry models: ResNet-20 / CIFAR stems, the ImageNet stem,
# 1x1 downsample convs. (N, C, H, W, O, kernel, stride, padding)
TORCH_EXACT_CASES = [(2, 3, 32, 32, 16, 3, 1, 1), (2, 3, 32, 32, 128, 3, 1, 1), (1, 3, 64, 64, 64, 7, 2, 3),
                     (2, 16, 8, 8, 32, 1, 1, 0), (1, 64, 8, 8, 128, 1, 1, 0), (1, 256, 7, 7, 512, 1, 1, 0)]
U32 = 2.0 ** -24  # float32 unit roundoff


def conv_inputs(case: tuple, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    n, c, h, w, o, k, _, _ = case
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, h, w, generator=g), torch.randn(o, c, k, k, generator=g) * 0.2


def fma_chain(x: torch.Tensor, weight: torch.Tensor, s: int, p: int) -> torch.Tensor:
    """The plan's order, emulated with IEEE float64 operations: the same bits on every CPU."""
    return nchw(conv2d_fma_chain(nhwc(x), weight.numpy(), (s, s), (p, p)))


def assert_within_summation_bound(got: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, s: int, p: int) -> None:
    """|got - exact| <= gamma_K * sum |x| |w| per output (K products, any order, fma or not: Higham's bound)."""
    exact = F.conv2d(x.double(), weight.double(), None, s, p)
    magnitude = F.conv2d(x.double().abs(), weight.double().abs(), None, s, p)
    k = weight[0].numel()
    gamma = k * U32 / (1 - k * U32)
    assert ((got.double() - exact).abs() <= gamma * magnitude).all()


@pytest.mark.parametrize("variant", CONV_VARIANTS)
@pytest.mark.parametrize("case", TORCH_EXACT_CASES)
def test_conv2d_is_the_fma_chain_bit_for_bit(case: tuple, variant: str) -> None:
    """conv2d_nhwc sums each output as one float32 fma chain over (kh, kw, c) from 0 - on every CPU, since
    the chain is the kernel's own (llvm.fma, one rounding a step). The reference is that chain emulated
    with exact float64 steps (recu.deploy.runtime.fma_numpy), itself checked against the float64 convolution."""
    x, weight = conv_inputs(case, seed=7)
    s, p = case[6], case[7]
    want = fma_chain(x, weight, s, p)
    assert_within_summation_bound(want, x, weight, s, p)
    got = nchw(run_conv(x, weight, torch.zeros(case[4]), (s, s), (p, p), variant))
    assert torch.equal(got, want)


@pytest.mark.parametrize("case", TORCH_EXACT_CASES)
def test_pytorch_conv_is_the_plan_bit_for_bit_where_onednn_sums_in_its_order(case: tuple) -> None:
    """Bit-identity with PyTorch's float32 conv holds per CPU, not on every CPU: oneDNN picks its summation
    order per CPU and shape (on AMD EPYC the 256 -> 512 1x1 conv sums in another order). On every CPU
    PyTorch's result is within the rounding bound of the exact one; where it is the fma chain, the
    kernel (test above) is PyTorch bit for bit, which keeps every first-layer sign PyTorch's."""
    x, weight = conv_inputs(case, seed=7)
    s, p = case[6], case[7]
    want = fma_chain(x, weight, s, p)
    same = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        torch_out = F.conv2d(x.contiguous(memory_format=fmt), weight, None, s, p).contiguous()
        assert_within_summation_bound(torch_out, x, weight, s, p)
        same.append(torch.equal(torch_out, want))
    if not all(same):
        pytest.skip(f"oneDNN sums this conv in another order on this CPU (NCHW, NHWC bit-identical: {same})")


@pytest.mark.parametrize("variant", CONV_VARIANTS)
@pytest.mark.parametrize("case", [c for c in TORCH_EXACT_CASES if c[7] > 0])
def test_conv2d_on_an_input_padded_by_the_input_row_is_the_padded_conv(case: tuple, variant: str) -> None:
    """The plan's input row writes the stem's zero columns (``nchw_to_nhwc(x, out, pw)``) and the stem
    runs without horizontal padding (register blocks only): the padding taps then add exact zeros, so
    the outputs are the padded conv's fma chain bit for bit."""
    n, c, h, w, o, k, s, p = case
    x, weight = conv_inputs(case, seed=8)
    x[0, :, :, :3] = -0.0  # zeros of both signs next to the padding
    padded = np.full((n, h, w + 2 * p, c), np.nan, np.float32)
    base, wide = variant.removesuffix("_wide"), variant.endswith("_wide")
    kernel("nchw_to_nhwc", base)(x.numpy(), padded, p)
    assert_same_floats(padded, nhwc(F.pad(x, (p, p))))
    out = np.full((n, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1, o), np.nan, np.float32)
    w_hwio = np.ascontiguousarray(weight.permute(2, 3, 1, 0).numpy())
    kernel("conv2d_nhwc", base)(padded, w_hwio, np.zeros(o, np.float32), s, s, p, 0, out, wide)
    assert torch.equal(nchw(out), fma_chain(x, weight, s, p))


def test_conv2d_register_blocked_and_per_pixel_paths_agree() -> None:
    # O = 16 runs every pixel through the register-blocked kernel; O = 15 runs all of them through
    # the per-pixel loop. Same sum order in both, so the same 15 channels are the same bits.
    g = torch.Generator().manual_seed(3)
    x, weight, bias = torch.randn(1, 6, 9, 10, generator=g), torch.randn(16, 6, 3, 3, generator=g), torch.randn(16)
    blocked = run_conv(x, weight, bias, (2, 1), (1, 1), "serial")
    per_pixel = run_conv(x, weight[:15], bias[:15], (2, 1), (1, 1), "serial")
    assert_same_floats(blocked[..., :15], per_pixel)
    assert_same_floats(run_conv(x, weight, bias, (2, 1), (1, 1), "serial_wide"), blocked)


@pytest.mark.parametrize("variant", VARIANTS)
def test_conv2d_rejects_mismatched_shapes(variant: str) -> None:
    x = np.zeros((1, 8, 8, 3), np.float32)
    w = np.zeros((3, 3, 3, 16), np.float32)
    with pytest.raises(ValueError, match="spatial size"):
        kernel("conv2d_nhwc", variant)(x, w, np.zeros(16, np.float32), 1, 1, 0, 0, np.zeros((1, 8, 8, 16), np.float32))
    with pytest.raises(ValueError, match="input channels"):
        kernel("conv2d_nhwc", variant)(x, np.zeros((3, 3, 4, 16), np.float32), np.zeros(16, np.float32), 1, 1, 1, 1,
                                       np.zeros((1, 8, 8, 16), np.float32))


# ---------------------------------------------------------------------------------------------
# Elementwise: BatchNorm, activations, add, channel bias, PReLU


def eval_batchnorm(c: int, seed: int) -> torch.nn.BatchNorm2d:
    g = torch.Generator().manual_seed(seed)
    bn = torch.nn.BatchNorm2d(c, eps=1e-5)
    with torch.no_grad():
        bn.weight.copy_(torch.randn(c, generator=g))
        bn.bias.copy_(torch.randn(c, generator=g))
        bn.running_mean.copy_(torch.randn(c, generator=g))
        bn.running_var.copy_(torch.rand(c, generator=g) * 3 + 0.01)
    return bn.eval()


def batchnorm_scale_shift(bn: torch.nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    """a = gamma * rsqrt(var + eps), b = fma(-mean, a, beta), as recu.deploy.exporter.packable.epilogue_vectors builds them."""
    a = bn.weight.detach() * torch.rsqrt(bn.running_var + bn.eps)
    b = (bn.bias.detach().double() - bn.running_mean.double() * a.double()).float()
    return a.contiguous().numpy(), b.contiguous().numpy()


ACTS = [  # (act code, lo, hi, the PyTorch op)
    (FK.ACT_NONE, 0.0, 0.0, lambda t: t),
    (FK.ACT_CLAMP, -1.0, 1.0, lambda t: F.hardtanh(t)),
    (FK.ACT_CLAMP, 0.0, 6.0, lambda t: F.hardtanh(t, 0.0, 6.0)),
    (FK.ACT_CLAMP, -0.1, 0.3, lambda t: F.hardtanh(t, -0.1, 0.3)),  # bounds not representable in float32
    (FK.ACT_RELU, 0.0, 0.0, lambda t: F.relu(t)),
]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("act", ACTS, ids=["none", "hardtanh", "hardtanh06", "hardtanh_odd", "relu"])
def test_affine_act_is_eval_batchnorm_bit_for_bit(act: tuple, memory_format: torch.memory_format,
                                                  variant: str) -> None:
    code, lo, hi, torch_act = act
    bn = eval_batchnorm(37, seed=1)
    x = special_values((2, 37, 5, 7), seed=2).contiguous(memory_format=memory_format)
    with torch.no_grad():
        want = torch_act(bn(x))
    scale, shift = batchnorm_scale_shift(bn)
    xs = nhwc(x)
    out = np.empty_like(xs)
    kernel("affine_act", variant)(xs, scale, shift, code, lo, hi, out)
    assert_same_floats(out, nhwc(want))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("act", ACTS, ids=["none", "hardtanh", "hardtanh06", "hardtanh_odd", "relu"])
def test_act_only_add_act_bias_act_match_torch(act: tuple, variant: str) -> None:
    code, lo, hi, torch_act = act
    x, y = special_values((2, 19, 3, 5), seed=3), special_values((2, 19, 3, 5), seed=4)
    bias = torch.randn(19)
    xs, ys = nhwc(x), nhwc(y)

    out = np.empty_like(xs)
    kernel("act_only", variant)(xs, code, lo, hi, out)
    assert_same_floats(out, nhwc(torch_act(x)))

    out = np.empty_like(xs)
    kernel("add_act", variant)(xs, ys, code, lo, hi, out)
    assert_same_floats(out, nhwc(torch_act(x + y)))

    out = np.empty_like(xs)
    kernel("bias_act", variant)(xs, bias.numpy(), code, lo, hi, out)
    assert_same_floats(out, nhwc(torch_act(x + bias.view(1, -1, 1, 1))))


@pytest.mark.parametrize("variant", VARIANTS)
def test_act_in_place_and_bad_code(variant: str) -> None:
    x = special_values((1, 4, 3, 3), seed=5)
    xs = nhwc(x)
    kernel("act_only", variant)(xs, FK.ACT_CLAMP, -1.0, 1.0, xs)  # out aliasing x, as the plan does
    assert_same_floats(xs, nhwc(F.hardtanh(x)))
    with pytest.raises(ValueError, match="activation code"):
        kernel("act_only", variant)(xs, 3, 0.0, 0.0, np.empty_like(xs))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("channels", [11, 1])
def test_prelu_matches_torch(channels: int, variant: str) -> None:
    x = special_values((2, 11, 4, 3), seed=6)
    weight = torch.randn(channels)
    xs = nhwc(x)
    out = np.empty_like(xs)
    kernel("prelu", variant)(xs, weight.numpy(), out)
    assert_same_floats(out, nhwc(F.prelu(x, weight)))


# ---------------------------------------------------------------------------------------------
# Pooling

POOLS = [(2, 2, 0), (3, 2, 1), (3, 1, 1)]  # (kernel, stride, padding)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("channels", [37, 32])  # scalar; 16-lane vectors (divisors 9, 6, 4, 2: divide or multiply)
def test_avg_pool2d_is_torch_bit_for_bit(pool: tuple, count_include_pad: bool, memory_format: torch.memory_format,
                                        variant: str, channels: int) -> None:
    k, s, p = pool
    x = (torch.randn(2, channels, 9, 11, generator=torch.Generator().manual_seed(7)) * 10)
    want = F.avg_pool2d(x.contiguous(memory_format=memory_format), k, s, p, count_include_pad=count_include_pad)
    out = np.full(nhwc(want).shape, np.nan, np.float32)
    kernel("avg_pool2d_nhwc", variant)(nhwc(x), k, k, s, s, p, p, count_include_pad, out)
    assert_same_floats(out, nhwc(want))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("channels,before,after", [(16, 8, 8), (32, 0, 16), (5, 3, 0), (16, 0, 0)])
def test_avg_pool2d_with_channel_padding_is_pad_of_the_pool(channels: int, before: int, after: int,
                                                           variant: str) -> None:
    """The option-A shortcut in one pass: ``F.pad`` of ``F.avg_pool2d`` bit for bit, every padded channel
    written (the output starts as NaN), on the vector path (16k channels) and the scalar one."""
    x = torch.randn(2, channels, 10, 10, generator=torch.Generator().manual_seed(9)) * 5
    want = F.pad(F.avg_pool2d(x, 2), (0, 0, 0, 0, before, after))
    out = np.full(nhwc(want).shape, np.nan, np.float32)
    kernel("avg_pool2d_nhwc", variant)(nhwc(x), 2, 2, 2, 2, 0, 0, True, out, before, after)
    assert_same_floats(out, nhwc(want))
    with pytest.raises(ValueError, match="batch size and channels"):
        kernel("avg_pool2d_nhwc", variant)(nhwc(x), 2, 2, 2, 2, 0, 0, True, out, before, after + 1)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("channels", [37, 32, 80])  # scalar; 16-lane vectors; 64 in 4 chains + 16
def test_max_pool2d_is_torch_bit_for_bit(pool: tuple, memory_format: torch.memory_format, variant: str,
                                         channels: int) -> None:
    k, s, p = pool
    x = special_values((2, channels, 9, 11), seed=8)
    x[0, :, :4, :4] = -torch.inf  # whole windows of -inf next to the padding
    ties = x[1, ::3].shape[0]  # every 16-channel group, in every accumulator of the 4-chain path
    x[1, ::3, :, :] = torch.where(torch.rand(ties, 9, 11) < 0.5, 0.0, -0.0)  # ties of +0.0 and -0.0
    want = F.max_pool2d(x.contiguous(memory_format=memory_format), k, s, p)
    out = np.full(nhwc(want).shape, np.nan, np.float32)
    kernel("max_pool2d_nhwc", variant)(nhwc(x), k, k, s, s, p, p, out)
    assert_same_floats(out, nhwc(want))


@pytest.mark.parametrize("variant", VARIANTS)
def test_pooling_rejects_wrong_output_size(variant: str) -> None:
    x = np.zeros((1, 8, 8, 4), np.float32)
    with pytest.raises(ValueError, match="spatial size"):
        kernel("max_pool2d_nhwc", variant)(x, 2, 2, 2, 2, 0, 0, np.zeros((1, 3, 4, 4), np.float32))
    with pytest.raises(ValueError, match="batch size and channels"):
        kernel("avg_pool2d_nhwc", variant)(x, 2, 2, 2, 2, 0, 0, True, np.zeros((1, 4, 4, 5), np.float32))


@pytest.mark.parametrize("variant", VARIANTS)
def test_global_avg_pool_is_the_float64_mean(variant: str) -> None:
    x = torch.randn(3, 70, 7, 5) * 4 + 1
    out = np.full((3, 1, 1, 70), np.nan, np.float32)
    kernel("global_avg_pool_nhwc", variant)(nhwc(x), out)
    want = x.double().mean(dim=(2, 3)).numpy()
    np.testing.assert_allclose(out.reshape(3, 70), want, rtol=1e-7, atol=0)


# ---------------------------------------------------------------------------------------------
# linear, layout


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("shape", [(1, 512, 100), (3, 37, 70), (2, 5, 3)])  # (N, I, O): tails of I and O
def test_linear_matches_float64(shape: tuple, variant: str) -> None:
    n, i, o = shape
    g = torch.Generator().manual_seed(i)
    x, weight, bias = torch.randn(n, i, generator=g), torch.randn(o, i, generator=g), torch.randn(o, generator=g)
    out = np.full((n, 1, 1, o), np.nan, np.float32)
    kernel("linear_nhwc", variant)(x.numpy().reshape(n, 1, 1, i), weight.numpy(), bias.numpy(), out)
    want = F.linear(x.double(), weight.double(), bias.double())
    np.testing.assert_allclose(out.reshape(n, o), want.numpy(), rtol=1e-6, atol=1e-6 * want.abs().max().item())


@pytest.mark.parametrize("variant", VARIANTS)
def test_flatten_nchw_is_torch_flatten(variant: str) -> None:
    x = torch.randn(2, 5, 3, 4)
    out = np.full((2, 1, 1, 60), np.nan, np.float32)
    kernel("flatten_nchw", variant)(nhwc(x), out)
    assert_same_floats(out.reshape(2, 60), torch.flatten(x, 1))


@pytest.mark.parametrize("variant", VARIANTS)
def test_nchw_to_nhwc_and_pad_channels(variant: str) -> None:
    x = special_values((2, 3, 5, 7), seed=9)
    out = np.full((2, 5, 7, 3), np.nan, np.float32)
    kernel("nchw_to_nhwc", variant)(x.numpy(), out)
    assert_same_floats(out, x.permute(0, 2, 3, 1))
    # RGB rows of 16-pixel shuffles and a scalar tail (37 = 2 * 16 + 5), with zero columns each side
    wide = special_values((2, 3, 4, 37), seed=10)
    padded_cols = np.full((2, 4, 37 + 2 * 2, 3), np.nan, np.float32)
    kernel("nchw_to_nhwc", variant)(wide.numpy(), padded_cols, 2)
    assert_same_floats(padded_cols, nhwc(F.pad(wide, (2, 2))))

    padded = np.full((2, 5, 7, 3 + 4 + 2), np.nan, np.float32)
    kernel("pad_channels_nhwc", variant)(out, 4, 2, padded)
    assert_same_floats(padded, nhwc(F.pad(x, (0, 0, 0, 0, 4, 2))))


def test_module_imports_without_torch() -> None:
    # The compiled plan must run where torch is not installed: block it and import the kernels.
    code = "import sys\nsys.modules['torch'] = None\nimport recu.deploy.runtime.kernels.float_ops\n"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert res.returncode == 0, res.stderr[-2000:]
