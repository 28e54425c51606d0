"""Distribution statistics of weight tensors, vectorised in torch (shared by the monitor and the report).

Every function returns tensors on the input's device and never synchronises with the
host, so a caller can gather many results and read them back at once. None uses an op
without a deterministic CUDA kernel (``torch.histc``, ``torch.bincount`` with weights), so
the monitor runs under ``torch.use_deterministic_algorithms(True)`` (``deterministic: true``).
"""

from __future__ import annotations

import math

from typing import Optional

import torch
from torch import Tensor

from ..functional import laplace_quantile

__all__ = [
    "kurtosis",
    "tail_mass",
    "laplace_fit",
    "gaussian_fit",
    "laplace_cdf",
    "gaussian_cdf",
    "ks_statistics",
    "log_likelihoods",
    "binary_entropy_bits",
    "histogram_entropy",
    "histogram_counts",
    "index_counts",
    "magnitude_buckets",
    "filter_std",
    "distribution_summary",
    "weight_statistics",
]

_SQRT2 = math.sqrt(2.0)


def kurtosis(x: Tensor) -> Tensor:
    """Pearson kurtosis E(x - m)^4 / var^2 (not excess): 3 for a Gaussian, 6 for a Laplace."""
    x = x.flatten().to(torch.float64)
    d = x - x.mean()
    var = (d * d).mean()
    return (d**4).mean() / (var * var)


def tail_mass(x: Tensor, k: float = 3.0) -> Tensor:
    """Share of |x - mean| > k std: 0.27% for a Gaussian, exp(-k sqrt 2) = 1.44% for a Laplace at k = 3."""
    x = x.flatten().to(torch.float64)
    d = (x - x.mean()).abs()
    return (d > k * x.std(unbiased=False)).to(torch.float64).mean()


def laplace_fit(x: Tensor) -> tuple[Tensor, Tensor]:
    """Maximum-likelihood Laplace: location = median, scale b = mean |x - median|."""
    x = x.flatten().to(torch.float64)
    loc = x.median()
    return loc, (x - loc).abs().mean().clamp_min(1e-300)


def gaussian_fit(x: Tensor) -> tuple[Tensor, Tensor]:
    """Maximum-likelihood Gaussian: mean and the biased standard deviation."""
    x = x.flatten().to(torch.float64)
    return x.mean(), x.std(unbiased=False).clamp_min(1e-300)


def laplace_cdf(x: Tensor, loc: Tensor, b: Tensor) -> Tensor:
    """F(x) = exp(z)/2 for z = (x - loc)/b < 0, 1 - exp(-z)/2 otherwise."""
    z = (x - loc) / b
    half = 0.5 * torch.exp(-z.abs())
    return torch.where(z < 0, half, 1.0 - half)


def gaussian_cdf(x: Tensor, mu: Tensor, sigma: Tensor) -> Tensor:
    """F(x) = (1 + erf((x - mu) / (sigma sqrt 2))) / 2."""
    return 0.5 * (1.0 + torch.erf((x - mu) / (sigma * _SQRT2)))


def _subsample(x: Tensor, max_samples: int) -> Tensor:
    x = x.flatten()
    if x.numel() > max_samples:
        # A fixed stride keeps the result deterministic (a resumed run gives the same numbers).
        x = x[:: math.ceil(x.numel() / max_samples)]
    return x


def ks_statistics(x: Tensor, max_samples: int = 1 << 20) -> tuple[Tensor, Tensor]:
    """Kolmogorov-Smirnov statistics D = sup |F_n - F| of the ML Laplace and the ML Gaussian fits.

    The smaller D is the better fit. Layers with more than ``max_samples`` weights are
    subsampled with a fixed stride to bound the sort.
    """
    xs = torch.sort(_subsample(x, max_samples).to(torch.float64)).values
    n = xs.numel()
    i = torch.arange(1, n + 1, dtype=torch.float64, device=xs.device)
    upper, lower = i / n, (i - 1) / n

    def ks(cdf: Tensor) -> Tensor:
        return torch.maximum((upper - cdf).max(), (cdf - lower).max())

    return ks(laplace_cdf(xs, *laplace_fit(xs))), ks(gaussian_cdf(xs, *gaussian_fit(xs)))


def log_likelihoods(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean log-likelihood per weight under the ML Laplace and the ML Gaussian fits (higher is better).

    Laplace: -ln(2 b) - mean|x - loc| / b; Gaussian: -ln(2 pi sigma^2)/2 - mean(x - mu)^2 / (2 sigma^2).
    """
    x = x.flatten().to(torch.float64)
    loc, b = laplace_fit(x)
    mu, sigma = gaussian_fit(x)
    ll_lap = -torch.log(2.0 * b) - (x - loc).abs().mean() / b
    ll_gau = -0.5 * torch.log(2.0 * math.pi * sigma * sigma) - ((x - mu) ** 2).mean() / (2.0 * sigma * sigma)
    return ll_lap, ll_gau


def binary_entropy_bits(positive: Tensor) -> Tensor:
    """Mean over filters of the binary entropy (bits) of each filter's share of +1 weights.

    ``positive`` is a boolean tensor (True = +1) shaped (C_out, ...). 1 bit means balanced
    filters (the most information a binary filter can carry), 0 a constant filter.
    """
    p = positive.flatten(1).to(torch.float64).mean(dim=1)
    # x log x -> 0 at x = 0: evaluate the log on a safe value, then mask.
    def xlog2x(v: Tensor) -> Tensor:
        return torch.where(v > 0, v * torch.log2(torch.where(v > 0, v, torch.ones_like(v))), torch.zeros_like(v))

    return (-(xlog2x(p) + xlog2x(1.0 - p))).mean()


def index_counts(index: Tensor, size: int) -> Tensor:
    """How often each of 0..size-1 occurs in the integer tensor ``index`` (int64, shape (size,)).

    ``torch.bincount`` without its data-dependent output size: a scatter-add of ones into
    ``size`` slots, deterministic on every device (integer sums) and free of host syncs.
    Values outside [0, size) are an error of the caller.
    """
    flat = index.reshape(-1).long()
    return torch.zeros(size, dtype=torch.int64, device=index.device).index_add_(0, flat, torch.ones_like(flat))


def histogram_counts(x: Tensor, bins: int, lo: float, hi: float) -> Tensor:
    """``torch.histc(x, bins, lo, hi)`` with the same counts (float64), deterministic on CUDA too.

    As histc: ``bins`` equal bins over [lo, hi], bin (x - lo) * bins / (hi - lo) rounded down,
    x = hi in the last bin, values outside [lo, hi] (and nan) not counted. histc itself has no
    deterministic CUDA kernel and raises under ``torch.use_deterministic_algorithms(True)``.
    """
    if bins < 1 or not lo < hi:
        raise ValueError(f"need bins >= 1 and lo < hi, got bins={bins}, lo={lo}, hi={hi}")
    x = x.reshape(-1)
    lo_t = torch.tensor(lo, dtype=x.dtype)  # the bounds in x's type, as histc casts them
    hi_t = torch.tensor(hi, dtype=x.dtype)
    inside = (x >= lo_t) & (x <= hi_t)
    pos = ((x - lo_t) * bins / (hi_t - lo_t)).floor().clamp(0, bins - 1)
    # everything outside goes to an extra slot that is dropped: no boolean indexing, no sync
    slot = torch.where(inside, pos.long(), torch.full_like(pos, bins, dtype=torch.int64))
    return index_counts(slot, bins + 1)[:bins].to(torch.float64)


def histogram_entropy(x: Tensor, bins: int = 200, span: float = 8.0) -> Tensor:
    """Scale-free differential entropy (nats) of x / std(x), from a histogram on [-span, span].

    Dividing by the std makes the value independent of b*: a Gaussian gives
    ln(2 pi e)/2 = 1.419, a Laplace 1 + ln(sqrt 2) = 1.347. Mass beyond +-span is dropped.
    """
    x = x.flatten().to(torch.float64)
    z = (x - x.mean()) / x.std(unbiased=False).clamp_min(1e-300)
    counts = histogram_counts(z, bins, -span, span)
    p = counts / x.numel()
    width = 2.0 * span / bins
    safe = torch.where(p > 0, p, torch.ones_like(p))
    return -(torch.where(p > 0, p * torch.log(safe / width), torch.zeros_like(p))).sum()


def filter_std(w: Tensor) -> Tensor:
    """Unbiased standard deviation of each output filter, shaped to broadcast against ``w``."""
    return w.std(dim=tuple(range(1, w.dim())), keepdim=True, unbiased=True)


def magnitude_buckets(z: Tensor, buckets: int) -> tuple[Tensor, Tensor]:
    """Assign each weight to one of ``buckets`` equal-count buckets of the magnitude ``z``.

    Returns (bucket index per weight as uint8, shaped like ``z``; the bucket edges, buckets + 1
    values of z: the minimum, the inner quantiles and the maximum). Bucket 0 holds the smallest
    magnitudes. Ties are split by the sort order, so every bucket holds n // buckets or one more.
    """
    if not 1 <= buckets <= 255:
        raise ValueError(f"buckets must be between 1 and 255, got {buckets}")
    flat = z.flatten()
    n = flat.numel()
    sorted_z, order = torch.sort(flat)
    rank_bucket = (torch.arange(n, device=z.device) * buckets // n).to(torch.uint8)
    bucket = torch.empty(n, dtype=torch.uint8, device=z.device)
    bucket[order] = rank_bucket
    # first rank of bucket i is ceil(i n / buckets)
    first = (torch.arange(buckets + 1, device=z.device) * n + buckets - 1) // buckets
    edges = sorted_z[first.clamp(max=n - 1)]
    return bucket.view_as(z), edges


def distribution_summary(x: Tensor, ks_max_samples: int = 1 << 20) -> dict[str, Tensor]:
    """kurtosis, tail_mass_3sigma, ks_laplace, ks_gaussian, loglik_laplace, loglik_gaussian, latent_entropy.

    The same values as the single-purpose functions above, computed with one float64 copy,
    one sort and one set of moments (the monitor runs this on every layer every epoch).
    At the ML fits the mean log-likelihoods have closed forms: -ln(2 b) - 1 (Laplace) and
    -ln(2 pi e sigma^2) / 2 (Gaussian).
    """
    x = x.detach().flatten().to(torch.float64)
    mu = x.mean()
    d = x - mu
    var = (d * d).mean()
    sigma = var.sqrt().clamp_min(1e-300)
    sub = _subsample(x, ks_max_samples)
    xs = torch.sort(sub).values
    n = xs.numel()
    # torch.median is the lower median: element (n - 1) // 2 of the sorted values
    loc_sub = xs[(n - 1) // 2]
    b_sub = (xs - loc_sub).abs().mean().clamp_min(1e-300)
    if sub.numel() == x.numel():
        loc, b = loc_sub, b_sub
    else:
        loc, b = laplace_fit(x)
    i = torch.arange(1, n + 1, dtype=torch.float64, device=x.device)
    upper, lower = i / n, (i - 1) / n

    def ks(cdf: Tensor) -> Tensor:
        return torch.maximum((upper - cdf).max(), (cdf - lower).max())

    sub_mu = sub.mean()
    sub_sigma = sub.std(unbiased=False).clamp_min(1e-300)
    counts = histogram_counts(d / sigma, 200, -8.0, 8.0)
    p = counts / x.numel()
    safe = torch.where(p > 0, p, torch.ones_like(p))
    return {
        "kurtosis": (d**4).mean() / (var * var),
        "tail_mass_3sigma": (d.abs() > 3.0 * sigma).to(torch.float64).mean(),
        "ks_laplace": ks(laplace_cdf(xs, loc_sub, b_sub)),
        "ks_gaussian": ks(gaussian_cdf(xs, sub_mu, sub_sigma)),
        "loglik_laplace": -torch.log(2.0 * b) - (x - loc).abs().mean() / b,
        "loglik_gaussian": -0.5 * torch.log(2.0 * math.pi * sigma * sigma) - 0.5,
        "latent_entropy": -(torch.where(p > 0, p * torch.log(safe / (16.0 / 200)), torch.zeros_like(p))).sum(),
    }


def weight_statistics(w1: Tensor, tau: Optional[float] = None, ks_max_samples: int = 1 << 20) -> dict[str, object]:
    """The monitor's distribution statistics of one layer's standardised weights W1, as Python numbers.

    ``tau`` (the layer's) gives Q = -b_hat ln(2 - 2 tau) and the clamped share; without it
    those entries are None. The binary weights are sign(W1) with sign(0) = +1.
    """
    w1 = w1.detach()
    b_hat = w1.abs().mean()
    dist = {k: float(v) for k, v in distribution_summary(w1, ks_max_samples).items()}
    out: dict[str, object] = {
        "numel": w1.numel(),
        "b_hat": float(b_hat),
        "tau": tau,
        "q": None,
        "clamped_share": None,
        "clamped_share_laplace": None,
        **dist,
        "better_fit": "laplace" if dist["ks_laplace"] < dist["ks_gaussian"] else "gaussian",
        "binary_entropy_bits": float(binary_entropy_bits(w1 >= 0)) if w1.dim() >= 2 else None,
    }
    if tau is not None:
        q = laplace_quantile(float(tau), b_hat)
        out["q"] = float(q) if bool(torch.isfinite(q)) else None
        out["clamped_share"] = float((w1.abs() > q).double().mean())
        out["clamped_share_laplace"] = 2.0 * (1.0 - float(tau))
    return out
