"""Closed forms of the clamped Laplace against numerical integration, Monte Carlo and the method document."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad

import recu
from recu.analysis import theory as T

TAUS = [0.6, 0.7, 0.82, 0.85, 0.9, 0.94]
BS = [0.5, 1.0, 2.0]


def _pdf(w: float, b: float) -> float:
    return math.exp(-abs(w) / b) / (2.0 * b)


def qe_by_quadrature(tau: float, b: float) -> float:
    """The paper's definition: continuous part on (-Q, Q) plus atoms of mass 1 - tau at +-Q."""
    q = -b * math.log(2.0 - 2.0 * tau)
    alpha = b * (2.0 * tau - 1.0)
    cont = 2.0 * quad(lambda w: _pdf(w, b) * (w - alpha) ** 2, 0.0, q, epsabs=1e-13, epsrel=1e-12)[0]
    return cont + 2.0 * (1.0 - tau) * (q - alpha) ** 2


def entropy_by_quadrature(tau: float, b: float) -> float:
    q = -b * math.log(2.0 - 2.0 * tau)
    cont = 2.0 * quad(lambda w: -_pdf(w, b) * math.log(_pdf(w, b)), 0.0, q, epsabs=1e-13)[0]
    return cont - 2.0 * (1.0 - tau) * math.log(1.0 - tau)


@pytest.fixture(scope="module")
def laplace_samples() -> np.ndarray:
    return np.random.default_rng(1234).laplace(0.0, 1.0, 2_000_000)


# -- quantisation error -------------------------------------------------------------------------


@pytest.mark.parametrize("b", BS)
@pytest.mark.parametrize("tau", TAUS + [0.99])
def test_corrected_qe_matches_quadrature(tau: float, b: float) -> None:
    assert T.quantization_error(tau, b) == pytest.approx(qe_by_quadrature(tau, b), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("b", BS)
@pytest.mark.parametrize("tau", TAUS)
def test_paper_qe_disagrees_with_quadrature(tau: float, b: float) -> None:
    exact = qe_by_quadrature(tau, b)
    paper = T.quantization_error(tau, b, form="paper")
    # the whole discrepancy is the sign error's 16 b^2 (1 - tau)^3
    assert paper - exact == pytest.approx(16.0 * b * b * (1.0 - tau) ** 3, rel=1e-8)
    assert abs(paper - exact) > 0.003 * b * b


@pytest.mark.parametrize("tau", [0.7, 0.85, 0.94, 0.99])
def test_qe_monte_carlo(tau: float, laplace_samples: np.ndarray) -> None:
    b = 1.5
    w = np.clip(laplace_samples * b, -T.laplace_quantile(tau, b), T.laplace_quantile(tau, b))
    alpha = np.abs(w).mean()
    assert alpha == pytest.approx(T.laplace_alpha(tau, b), rel=3e-3)
    qe = np.mean((w - alpha * np.sign(w)) ** 2)
    # the MC standard error is below 1e-3 relative here; the paper's form is 26%..1.7% off for tau <= 0.94
    assert qe == pytest.approx(T.quantization_error(tau, b), rel=4e-3)
    if tau <= 0.94:
        assert abs(qe - T.quantization_error(tau, b, form="paper")) > 5 * abs(qe - T.quantization_error(tau, b))


def test_forms_agree_only_at_tau_one() -> None:
    for b in BS:
        assert T.quantization_error(1.0, b) == pytest.approx(b * b)
        assert T.quantization_error(1.0, b, form="paper") == pytest.approx(b * b)
    taus = np.linspace(0.51, 0.999, 200)
    assert np.all(T.quantization_error(taus, form="paper") > T.quantization_error(taus))


def test_check_values_at_b1_from_method_document() -> None:
    taus = np.array([0.7, 0.82, 0.85, 0.9, 0.94, 0.99, 1.0])
    corrected = [0.027, 0.135, 0.188, 0.316, 0.477, 0.843, 1.000]
    paper = [0.459, 0.228, 0.242, 0.332, 0.480, 0.843, 1.000]
    np.testing.assert_allclose(T.quantization_error(taus, 1.0), corrected, atol=5e-4)
    np.testing.assert_allclose(T.quantization_error(taus, 1.0, form="paper"), paper, atol=5e-4)


def test_corrected_qe_monotonic_from_zero_to_b2() -> None:
    taus = np.linspace(0.5 + 1e-9, 1.0, 2001)
    qe = T.quantization_error(taus, 2.0)
    assert qe[0] == pytest.approx(0.0, abs=1e-6)
    assert qe[-1] == pytest.approx(4.0)
    assert np.all(np.diff(qe) > 0)


def test_paper_form_has_the_published_spurious_minimum() -> None:
    tau_min, _ = T.paper_minimum()
    assert tau_min == pytest.approx(0.821, abs=2e-3)


def test_qe_scales_with_b_squared_and_broadcasts() -> None:
    taus = np.array([0.7, 0.9])
    bs = np.array([[1.0], [3.0]])
    out = T.quantization_error(taus, bs)
    assert out.shape == (2, 2)
    np.testing.assert_allclose(out[1], 9.0 * out[0])
    assert isinstance(T.quantization_error(0.9, 1.0), float)


# -- alpha, clamped share, quantile -------------------------------------------------------------


@pytest.mark.parametrize("tau", [0.6, 0.85, 0.99])
def test_alpha_and_clamped_share_by_quadrature(tau: float) -> None:
    b = 0.7
    q = T.laplace_quantile(tau, b)
    inside = 2.0 * quad(lambda w: _pdf(w, b) * w, 0.0, q)[0]
    assert T.laplace_alpha(tau, b) == pytest.approx(inside + 2.0 * (1.0 - tau) * q, rel=1e-10)
    assert T.clamped_share(tau) == pytest.approx(2.0 * quad(lambda w: _pdf(w, b), q, math.inf)[0], rel=1e-10)


def test_quantile_matches_functional() -> None:
    for tau in (0.6, 0.85, 0.99, 1.0):
        expected = float(recu.functional.laplace_quantile(tau, torch.tensor(1.3, dtype=torch.float64)))
        assert T.laplace_quantile(tau, 1.3) == pytest.approx(expected)
    assert T.clamped_share(0.85) == pytest.approx(0.30)
    assert T.clamped_share(0.99) == pytest.approx(0.02)


# -- entropy --------------------------------------------------------------------------------------


@pytest.mark.parametrize("b", [0.2, 1 / math.e, 1.0, 2.0])
@pytest.mark.parametrize("tau", [0.6, 0.85, 0.99])
def test_entropy_matches_quadrature(tau: float, b: float) -> None:
    assert T.entropy(tau, b) == pytest.approx(entropy_by_quadrature(tau, b), rel=1e-9)


def test_entropy_is_ln2_at_b_one_over_e_and_laplace_at_tau_one() -> None:
    taus = np.linspace(0.51, 1.0, 50)
    np.testing.assert_allclose(T.entropy(taus, 1 / math.e), math.log(2.0), rtol=1e-12)
    assert T.entropy(1.0, 2.0) == pytest.approx(math.log(4.0) + 1.0)  # La(0, b): ln(2b) + 1
    assert np.all(np.diff(T.entropy(taus, 2.0)) > 0)
    assert np.all(np.diff(T.entropy(taus, 0.2)) < 0)


# -- input checks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0.5, 0.3, 1.01, float("nan"), [0.7, 1.2]])
def test_tau_out_of_range_names_the_range(bad: object) -> None:
    for fn in (T.quantization_error, T.entropy, T.clamped_share, T.laplace_alpha, T.laplace_quantile):
        with pytest.raises(ValueError, match=r"\(0\.5, 1\]"):
            fn(bad)  # type: ignore[operator]


def test_bad_form_and_scale() -> None:
    with pytest.raises(ValueError, match="form"):
        T.quantization_error(0.9, form="published")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="b must be > 0"):
        T.entropy(0.9, 0.0)


# -- measured on weights --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def laplace_weight() -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    u = torch.rand(256, 128, 3, 3, generator=g, dtype=torch.float64) - 0.5
    return -0.05 * torch.sign(u) * torch.log1p(-2.0 * u.abs())  # La(0, 0.05), any scale works


@pytest.mark.parametrize("tau", [0.7, 0.85, 0.99])
def test_measured_match_closed_forms_on_laplace_weights(tau: float, laplace_weight: torch.Tensor) -> None:
    b_star = 2.0
    b_hat = float(T.measured_b_hat(laplace_weight))
    assert b_hat == pytest.approx(b_star, rel=5e-3)  # standardised to scale b*
    assert T.measured_clamped_share(laplace_weight, tau) == pytest.approx(T.clamped_share(tau), abs=3e-3)
    assert T.measured_alpha(laplace_weight, tau) == pytest.approx(T.laplace_alpha(tau, b_hat), rel=5e-3)
    assert T.measured_quantization_error(laplace_weight, tau, normalized=True) == pytest.approx(
        T.quantization_error(tau), rel=1e-2
    )


def test_measured_on_gaussian_weights_differs_from_laplace() -> None:
    w = torch.randn(256, 128, 3, 3, generator=torch.Generator().manual_seed(3))
    # Kaiming-normal init is Gaussian: 33.7% lie beyond the Laplace-based Q at tau = 0.85, not 30%
    share = T.measured_clamped_share(w, 0.85)
    # b_hat = E|W1| = sigma sqrt(2/pi), so P(|W1| > Q) = erfc(Q / (sigma sqrt 2)) = erfc(-ln(0.3) / sqrt(pi))
    gauss = math.erfc(-math.log(0.3) / math.sqrt(math.pi))
    assert share == pytest.approx(gauss, abs=3e-3)
    assert share - 0.30 > 0.03


def test_measured_on_a_layer_uses_its_tau_and_config() -> None:
    layer = recu.ReCUConv2d(8, 16, 3, config=recu.BinaryConfig(b_star=0.5))
    recu.set_tau(layer, 0.9)
    w1 = layer.standardized_weight().detach()
    q = layer.quantile(w1)
    assert T.measured_clamped_share(layer) == pytest.approx(float((w1.abs() > q).float().mean()))
    assert float(T.measured_b_hat(layer)) == pytest.approx(float(w1.abs().mean()))
    with pytest.raises(ValueError, match="tau is required"):
        T.measured_alpha(layer.weight.detach())
