"""Distribution statistics on samples whose answers are known."""

from __future__ import annotations

import math

import pytest
import torch

from recu.analysis import stats as S

N = 400_000


@pytest.fixture(scope="module")
def gauss() -> torch.Tensor:
    return torch.randn(N, generator=torch.Generator().manual_seed(11), dtype=torch.float64)


@pytest.fixture(scope="module")
def laplace() -> torch.Tensor:
    g = torch.Generator().manual_seed(12)
    u = torch.rand(N, generator=g, dtype=torch.float64) - 0.5
    return -torch.sign(u) * torch.log1p(-2.0 * u.abs())


def test_kurtosis_gaussian_3_laplace_6(gauss: torch.Tensor, laplace: torch.Tensor) -> None:
    assert float(S.kurtosis(gauss)) == pytest.approx(3.0, abs=0.05)
    assert float(S.kurtosis(laplace)) == pytest.approx(6.0, abs=0.3)
    # scale- and shift-free
    assert float(S.kurtosis(3.0 * gauss + 5.0)) == pytest.approx(float(S.kurtosis(gauss)), rel=1e-9)


def test_tail_mass(gauss: torch.Tensor, laplace: torch.Tensor) -> None:
    assert float(S.tail_mass(gauss)) == pytest.approx(math.erfc(3 / math.sqrt(2)), abs=4e-4)  # 0.27%
    assert float(S.tail_mass(laplace)) == pytest.approx(math.exp(-3 * math.sqrt(2)), abs=8e-4)  # 1.44%


def test_ks_and_loglik_prefer_the_true_family(gauss: torch.Tensor, laplace: torch.Tensor) -> None:
    ks_lap, ks_gau = S.ks_statistics(laplace)
    assert float(ks_lap) < 0.005 < float(ks_gau)
    ks_lap, ks_gau = S.ks_statistics(gauss)
    assert float(ks_gau) < 0.005 < float(ks_lap)
    ll_lap, ll_gau = S.log_likelihoods(laplace)
    assert float(ll_lap) == pytest.approx(-math.log(2.0) - 1.0, abs=5e-3)  # -ln(2b) - 1 at b = 1
    assert float(ll_lap) > float(ll_gau)
    ll_lap, ll_gau = S.log_likelihoods(gauss)
    assert float(ll_gau) == pytest.approx(-0.5 * math.log(2 * math.pi * math.e), abs=5e-3)
    assert float(ll_gau) > float(ll_lap)


def test_ks_statistic_by_hand() -> None:
    # Two points symmetric about 0: ML Gaussian N(0, 1) for x = +-1; F(-1) = 0.1587, F(1) = 0.8413
    x = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    _, ks_gau = S.ks_statistics(x)
    assert float(ks_gau) == pytest.approx(0.5 - 0.1587, abs=1e-4)  # |F_n - F| peaks at 0.5 - F(-1)
    ks_sub_lap, _ = S.ks_statistics(torch.arange(100.0), max_samples=10)  # subsampled: 10 points
    assert 0 < float(ks_sub_lap) < 1


def test_histogram_entropy_scale_free(gauss: torch.Tensor, laplace: torch.Tensor) -> None:
    assert float(S.histogram_entropy(gauss)) == pytest.approx(0.5 * math.log(2 * math.pi * math.e), abs=0.01)
    assert float(S.histogram_entropy(7.0 * laplace)) == pytest.approx(1.0 + 0.5 * math.log(2.0), abs=0.01)


def test_binary_entropy_bits_per_filter() -> None:
    positive = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    h_quarter = -(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75))  # 0.811
    assert float(S.binary_entropy_bits(positive)) == pytest.approx((1.0 + h_quarter + 0.0) / 3)


def test_magnitude_buckets_equal_count_and_edges() -> None:
    z = torch.tensor([5.0, 0.1, 3.0, 0.2, 4.0, 1.0, 2.0])
    bucket, edges = S.magnitude_buckets(z, 3)
    # ranks 0..6 -> buckets [0,0,0,1,1,2,2] (rank * 3 // 7)
    assert bucket.tolist() == [2, 0, 1, 0, 2, 0, 1]
    assert edges.tolist() == pytest.approx([0.1, 2.0, 4.0, 5.0])
    b2, _ = S.magnitude_buckets(torch.rand(10_001), 10)
    assert torch.bincount(b2.long()).tolist() == [1001] + [1000] * 9
    with pytest.raises(ValueError, match="buckets"):
        S.magnitude_buckets(z, 0)


@pytest.mark.parametrize("max_samples", [1 << 20, 5000])
def test_distribution_summary_equals_the_single_functions(laplace: torch.Tensor, max_samples: int) -> None:
    x = (0.3 * laplace[:50_000] + 0.1).to(torch.float32).reshape(500, 100)
    summary = {k: float(v) for k, v in S.distribution_summary(x, max_samples).items()}
    ks_lap, ks_gau = S.ks_statistics(x, max_samples)
    ll_lap, ll_gau = S.log_likelihoods(x)
    expected = {"kurtosis": S.kurtosis(x), "tail_mass_3sigma": S.tail_mass(x), "ks_laplace": ks_lap,
                "ks_gaussian": ks_gau, "loglik_laplace": ll_lap, "loglik_gaussian": ll_gau,
                "latent_entropy": S.histogram_entropy(x)}
    assert summary == pytest.approx({k: float(v) for k, v in expected.items()}, rel=1e-9, abs=1e-12)
