"""recu.functional against closed forms, float64 references and hand-checked values."""

from __future__ import annotations

import math

import pytest
import scipy.stats
import torch

from recu import functional as RF


def _grad(fn, x: torch.Tensor, *args) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    fn(x, *args).sum().backward()
    return x.grad


# --- steps 1-2: centring and standardisation -------------------------------------------------

def test_center_filters_gives_zero_filter_means() -> None:
    w = torch.randn(8, 4, 3, 3, dtype=torch.float64) + torch.arange(8.0, dtype=torch.float64).view(8, 1, 1, 1)
    w0 = RF.center_filters(w)
    assert torch.allclose(w0.mean(dim=(1, 2, 3)), torch.zeros(8, dtype=torch.float64), atol=1e-12)
    # only a per-filter constant is removed
    assert torch.allclose(w - w0, (w - w0)[:, :1, :1, :1].expand_as(w), atol=1e-12)


@pytest.mark.parametrize("b_star", [0.2, 2 ** -0.5, 1.0, 2.0, 5.0])
def test_standardized_filter_std_is_sqrt2_bstar(b_star: float) -> None:
    w0 = RF.center_filters(torch.randn(6, 5, 3, 3, dtype=torch.float64) * 0.05)
    eps = 1e-5
    w1 = RF.standardize_filters(w0, b_star, eps)
    var = w0.var(dim=(1, 2, 3), unbiased=True)
    expected = math.sqrt(2) * b_star * torch.sqrt(var / (var + eps))  # = sqrt(2) b* up to eps
    std = w1.std(dim=(1, 2, 3), unbiased=True)
    assert torch.allclose(std, expected, rtol=1e-10)
    assert torch.allclose(std, torch.full_like(std, math.sqrt(2) * b_star), rtol=1e-2)
    # with eps -> 0 exactly sqrt(2) b*
    std0 = RF.standardize_filters(w0, b_star, 1e-300).std(dim=(1, 2, 3))
    assert torch.allclose(std0, torch.full_like(std0, math.sqrt(2) * b_star), rtol=1e-12)


def test_standardize_2d_weight_rows() -> None:
    w = torch.randn(3, 50, dtype=torch.float64)
    w1 = RF.standardize_filters(RF.center_filters(w), 1.0, 1e-300)
    assert torch.allclose(w1.std(dim=1), torch.full((3,), math.sqrt(2), dtype=torch.float64))


def test_filter_functions_reject_1d() -> None:
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        RF.center_filters(torch.randn(5))


# --- steps 3-4: Laplace scale and quantile --------------------------------------------------

def test_laplace_scale_layer_and_channel() -> None:
    w = torch.tensor([[1.0, -3.0], [-2.0, 6.0]], dtype=torch.float64)
    assert RF.laplace_scale(w).shape == ()
    assert RF.laplace_scale(w).item() == pytest.approx(3.0)
    ch = RF.laplace_scale(w, per_channel=True)
    assert ch.shape == (2, 1)
    assert ch.flatten().tolist() == pytest.approx([2.0, 4.0])
    w4 = torch.randn(4, 3, 2, 2)
    assert RF.laplace_scale(w4, per_channel=True).shape == (4, 1, 1, 1)


def test_laplace_scale_is_mle_on_a_sample() -> None:
    x = torch.distributions.Laplace(0.0, 1.7).sample((200_000,)).double()
    assert RF.laplace_scale(x.view(1, -1)).item() == pytest.approx(1.7, rel=0.01)


@pytest.mark.parametrize("tau", [0.51, 0.6, 0.85, 0.9, 0.99, 0.999])
@pytest.mark.parametrize("b", [0.3, 1.0, 2.5])
def test_laplace_quantile_matches_scipy(tau: float, b: float) -> None:
    q = RF.laplace_quantile(tau, torch.tensor(b, dtype=torch.float64)).item()
    assert q == pytest.approx(-b * math.log(2 - 2 * tau), rel=1e-12)
    # Q is the tau-quantile of La(0, b) itself, so P(|X| <= Q) = 2 tau - 1 (not tau)
    assert q == pytest.approx(scipy.stats.laplace.ppf(tau, scale=b), rel=1e-9)
    assert scipy.stats.laplace.cdf(q, scale=b) == pytest.approx(tau, rel=1e-9)
    p_inside = scipy.stats.laplace.cdf(q, scale=b) - scipy.stats.laplace.cdf(-q, scale=b)
    assert p_inside == pytest.approx(2 * tau - 1, abs=1e-9)
    # and |X| has the tau' = 2 tau - 1 quantile there (folded Laplace = exponential)
    assert q == pytest.approx(scipy.stats.expon.ppf(2 * tau - 1, scale=b), rel=1e-9)


def test_laplace_quantile_share_clamped_monte_carlo() -> None:
    x = torch.distributions.Laplace(0.0, 1.0).sample((400_000,)).double()
    q = RF.laplace_quantile(0.85, torch.tensor(1.0, dtype=torch.float64))
    assert (x.abs() > q).double().mean().item() == pytest.approx(2 * (1 - 0.85), abs=0.005)


def test_laplace_quantile_tau_one_is_inf_and_tensor_forms() -> None:
    b = torch.tensor(1.3)
    assert math.isinf(RF.laplace_quantile(1.0, b).item()) and RF.laplace_quantile(1.0, b).item() > 0
    assert math.isinf(RF.laplace_quantile(torch.tensor(1.0), b).item())
    assert math.isinf(RF.laplace_quantile(1.0, torch.tensor(0.0)).item())  # no 0 * inf = nan
    qf = RF.laplace_quantile(0.9, b)
    qt = RF.laplace_quantile(torch.tensor(0.9, dtype=torch.float64), b)
    assert qt.dtype == b.dtype
    assert qf.item() == pytest.approx(-1.3 * math.log(0.2), rel=1e-6)
    assert qt.item() == pytest.approx(qf.item(), rel=1e-6)
    per_ch = RF.laplace_quantile(0.9, torch.tensor([[1.0], [2.0]]))
    assert per_ch.shape == (2, 1)
    assert per_ch.flatten().tolist() == pytest.approx([-math.log(0.2), -2 * math.log(0.2)], rel=1e-6)


def test_laplace_quantile_is_detached() -> None:
    b = torch.tensor(1.0, requires_grad=True)
    q = RF.laplace_quantile(0.9, b * 2)
    assert not q.requires_grad


@pytest.mark.parametrize(
    "tau", [0.5, 0.3, 1.01, float("nan"), -1.0, torch.tensor(0.5), torch.tensor(1.2), torch.tensor([0.9]),
            torch.tensor(float("nan")), "abc"],
)
def test_tau_outside_range_raises(tau) -> None:
    with pytest.raises(ValueError, match=r"\(0\.5, 1\]"):
        RF.check_tau(tau)
    with pytest.raises(ValueError, match=r"\(0\.5, 1\]"):
        RF.laplace_quantile(tau, torch.tensor(1.0))


@pytest.mark.parametrize("tau", [0.5000001, 0.85, 1.0, 1, torch.tensor(0.99), torch.tensor(1.0, dtype=torch.float64)])
def test_tau_inside_range_accepted(tau) -> None:
    RF.check_tau(tau)


# --- step 5: clamp and its ablations --------------------------------------------------------

W = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0], dtype=torch.float64)
Q = torch.tensor(1.0, dtype=torch.float64)
INSIDE = torch.tensor([0.0, 1, 1, 1, 1, 1, 0], dtype=torch.float64)


def test_recu_clamp_values_and_gradient() -> None:
    assert RF.recu_clamp(W, Q).tolist() == [-1.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.0]
    assert torch.equal(_grad(RF.recu_clamp, W, Q), INSIDE)  # identity inside (incl. |w| = Q), 0 beyond
    assert torch.equal(RF.recu_clamp(W, torch.tensor(math.inf, dtype=torch.float64)), W)


def test_recu_mask_identity_forward_masked_gradient() -> None:
    assert torch.equal(RF.recu_mask(W, Q), W)
    assert torch.equal(_grad(RF.recu_mask, W, Q), INSIDE)


def test_recu_clamp_ste_clamps_forward_identity_gradient() -> None:
    assert torch.equal(RF.recu_clamp_ste(W, Q), RF.recu_clamp(W, Q))
    assert torch.equal(_grad(RF.recu_clamp_ste, W, Q), torch.ones_like(W))


def test_recu_clamp_ste_exact_for_large_values() -> None:
    w = torch.tensor([1e8, -3e7, 0.3])
    q = torch.tensor(1.3)
    assert torch.equal(RF.recu_clamp_ste(w, q), torch.stack([q, -q, torch.tensor(0.3)]))


# --- step 6-7: signs and their gradients ----------------------------------------------------

def test_sign_zero_is_plus_one() -> None:
    x = torch.tensor([-2.0, -1e-30, -0.0, 0.0, 1e-30, 3.0])
    assert RF.sign(x).tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0, 1.0]
    for f in (RF.sign_ste, RF.approx_sign, RF.sign_clipped_ste):
        assert f(x).tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("f", [RF.sign_ste, RF.approx_sign, RF.sign_clipped_ste])
def test_signs_exactly_pm1_for_any_magnitude(f) -> None:
    x = torch.cat([torch.randn(10_000) * 10.0 ** k for k in range(-3, 10)] + [torch.tensor([3e7, -1e8, 16777217.0])])
    y = f(x)
    assert torch.equal(y, torch.where(x >= 0, 1.0, -1.0))


def test_sign_ste_identity_gradient() -> None:
    x = torch.tensor([-5.0, -1.0, 0.0, 0.3, 2.0, 1e8])
    assert torch.equal(_grad(RF.sign_ste, x), torch.ones_like(x))


def test_approx_sign_gradient_hand_values() -> None:
    x = torch.tensor([0.0, 0.25, 0.5, -0.75, 1.0, 1.5, -1.5, -0.25], dtype=torch.float64)
    g = _grad(RF.approx_sign, x)
    assert g.tolist() == [2.0, 1.5, 1.0, 0.5, 0.0, 0.0, 0.0, 1.5]
    # upstream gradient multiplies
    xx = x.clone().requires_grad_(True)
    (RF.approx_sign(xx) * torch.arange(8.0, dtype=torch.float64)).sum().backward()
    assert torch.equal(xx.grad, g * torch.arange(8.0, dtype=torch.float64))


def test_approx_sign_gradcheck_style_against_formula() -> None:
    x = torch.linspace(-1.5, 1.5, 301, dtype=torch.float64)
    assert torch.allclose(_grad(RF.approx_sign, x), torch.clamp(2 - 2 * x.abs(), min=0))


def test_sign_clipped_ste_gradient() -> None:
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.7, 1.0, 1.01, 5.0])
    assert _grad(RF.sign_clipped_ste, x).tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]


# --- activation normalisation and scales ----------------------------------------------------

def test_normalize_activation_per_sample_unit_std() -> None:
    a = torch.randn(4, 3, 5, 5, dtype=torch.float64) * torch.tensor([0.1, 1.0, 7.0, 300.0], dtype=torch.float64).view(4, 1, 1, 1)
    a0 = RF.normalize_activation(a, eps=1e-300)
    assert torch.allclose(a0.std(dim=(1, 2, 3), unbiased=True), torch.ones(4, dtype=torch.float64), rtol=1e-12)
    # with the default eps: std = s / sqrt(s^2 + eps)
    s = a.std(dim=(1, 2, 3))
    a1 = RF.normalize_activation(a)
    assert torch.allclose(a1.std(dim=(1, 2, 3)), s / torch.sqrt(s ** 2 + 1e-5), rtol=1e-12)
    # no centring: signs unchanged
    assert torch.equal(torch.sign(a1), torch.sign(a))


@pytest.mark.parametrize("tau", [0.6, 0.85, 0.99])
def test_analytic_scale_matches_laplace_closed_form(tau: float) -> None:
    b = 1.5
    x = torch.distributions.Laplace(0.0, b).sample((1, 400_000)).double()
    q = RF.laplace_quantile(tau, torch.tensor(b, dtype=torch.float64))
    alpha = RF.analytic_scale(RF.recu_clamp(x, q))
    assert alpha.shape == (1, 1)
    assert alpha.item() == pytest.approx(b * (2 * tau - 1), rel=0.01)


def test_analytic_and_mean_abs_per_filter() -> None:
    w = torch.tensor([[[1.0, -2.0]], [[-4.0, 0.0]]])
    assert RF.analytic_scale(w).flatten().tolist() == [1.5, 2.0]
    assert RF.mean_abs_scale(w).shape == (2, 1, 1)
    assert RF.mean_abs_scale(w).flatten().tolist() == [1.5, 2.0]


def test_sign_at_the_edges_matches_the_packed_kernels_and_onnx():
    # +1 at 0 and -0.0, nan -> -1 (nan >= 0 is false), +-inf -> +-1: what recu.deploy packs and the
    # ONNX graph's Where(x >= 0) computes; torch.sign alone gives 0 for 0 and for nan
    x = torch.tensor([0.0, -0.0, float("nan"), float("inf"), -float("inf"), 1e-38, -1e-38, 3.0, -3.0])
    want = torch.tensor([1.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.0])
    assert torch.equal(RF.sign(x), want)
    assert torch.equal(RF.sign(x.double()), want.double())
