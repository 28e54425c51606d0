"""Paired comparisons of runs (seed by seed), in numpy and ``math`` only: no scipy needed.

:func:`paired_summary` gives, for paired samples ``a`` and ``b`` (``a[i]`` and ``b[i]`` share a seed),
the mean of ``a - b``, its standard error, the 95% Student-t interval, the paired t test and the exact
Wilcoxon signed-rank test, both two-sided. The t distribution comes from the regularized incomplete
beta function (:func:`betainc`, a continued fraction); the Wilcoxon p-value counts all ``2**n``
sign assignments of the ranks (:func:`wilcoxon_p`). :func:`window` / :func:`window_mean` /
:func:`volatility` summarise one test-accuracy curve over a range of epochs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

__all__ = ["PairedSummary", "paired_summary", "betainc", "t_cdf", "t_two_sided_p", "t_quantile", "wilcoxon_p",
           "window", "window_mean", "volatility"]

# Differences are rounded to this many decimals before zeros and ties are found (test accuracies are
# multiples of 0.01%, and 81.1 - 80.1 must tie with 1.0 although floating point says 0.9999999999999943).
_TIE_DECIMALS = 9


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), by Lentz's continued fraction.

    The fraction converges fast for x < (a + 1) / (a + b + 2); otherwise the symmetry
    I_x(a, b) = 1 - I_{1-x}(b, a) is used. Relative accuracy ~1e-14 for the t distribution's arguments.
    """
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc needs 0 <= x <= 1, got {x}")
    if x in (0.0, 1.0):
        return x
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - betainc(b, a, 1.0 - x)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return math.exp(log_front) * h / a


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom (= I_{df/(df+t^2)}(df/2, 1/2))."""
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    tail = t_two_sided_p(t, df) / 2.0
    return 1.0 - tail if t >= 0 else tail


def t_quantile(q: float, df: float) -> float:
    """The t value with P(T <= t) = q, by bisection on :func:`t_cdf` (to ~1e-12 relative)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"t_quantile needs 0 < q < 1, got {q}")
    if q < 0.5:
        return -t_quantile(1.0 - q, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < q:
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < q else (lo, mid)
        if hi - lo <= 1e-13 * hi:
            break
    return 0.5 * (lo + hi)


def wilcoxon_p(diffs: Sequence[float]) -> tuple[float, int]:
    """Exact two-sided Wilcoxon signed-rank p-value of paired differences, and the n it used.

    Zero differences are dropped (Wilcoxon's original treatment, scipy's ``zero_method="wilcox"``);
    tied |differences| get their average rank (mid-ranks). The null distribution of W+ (the rank sum of
    the positive differences) is that of all ``2**n`` equally likely sign assignments of those ranks,
    counted exactly (doubled ranks are integers, so each assignment's sum is an integer index), also
    with ties. p = 2 min(P(W+ <= w), P(W+ >= w)), at most 1. No non-zero difference: p = 1, n = 0.
    """
    d = np.round(np.asarray(diffs, dtype=np.float64), _TIE_DECIMALS)
    d = d[d != 0.0]
    n = len(d)
    if n == 0:
        return 1.0, 0
    order = np.argsort(np.abs(d), kind="stable")
    doubled = np.empty(n, dtype=np.int64)  # 2 x rank, mid-ranks for ties
    magnitudes = np.abs(d)[order]
    i = 0
    while i < n:
        j = i
        while j + 1 < n and magnitudes[j + 1] == magnitudes[i]:
            j += 1
        doubled[order[i:j + 1]] = i + j + 2  # the mean of ranks i+1 .. j+1, doubled
        i = j + 1
    counts = np.zeros(int(doubled.sum()) + 1, dtype=np.float64)  # counts[s]: assignments with 2 W+ = s
    counts[0] = 1.0
    for r in doubled:
        counts[r:] = counts[r:] + counts[:-r]  # the right side is evaluated before the assignment
    w2 = int(doubled[d > 0].sum())
    total = counts.sum()
    p = 2.0 * min(counts[: w2 + 1].sum(), counts[w2:].sum()) / total
    return min(1.0, float(p)), n


@dataclass(frozen=True)
class PairedSummary:
    """``a - b`` pair by pair. Fields that need two pairs are None for fewer."""

    n: int
    diffs: tuple[float, ...]
    mean: float
    se: Optional[float] = None  # standard error of the mean difference: sample std (n - 1) / sqrt(n)
    ci95: Optional[tuple[float, float]] = None  # mean +- t_{0.975, n-1} se
    t: Optional[float] = None
    t_p: Optional[float] = None  # two-sided
    wilcoxon_p: Optional[float] = None  # exact, two-sided (zeros dropped, mid-ranks for ties)
    wilcoxon_n: Optional[int] = None  # non-zero differences the Wilcoxon test used


def paired_summary(a: Sequence[float], b: Sequence[float]) -> PairedSummary:
    """Mean difference ``a - b`` with standard error, 95% t interval, paired t test and exact Wilcoxon test.

    With every difference equal (se = 0) t is +-inf and p = 0, or t = 0 and p = 1 when they are all 0.
    """
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} and {len(b)}")
    if not len(a):
        raise ValueError("paired_summary of no pairs")
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    n, mean = len(d), float(d.mean())
    diffs = tuple(float(x) for x in d)
    if n < 2:
        return PairedSummary(n, diffs, mean)
    se = float(d.std(ddof=1)) / math.sqrt(n)
    if se > 0:
        t = mean / se
    else:
        t = 0.0 if mean == 0 else math.copysign(math.inf, mean)
    half = t_quantile(0.975, n - 1) * se
    wp, wn = wilcoxon_p(diffs)
    return PairedSummary(n, diffs, mean, se, (mean - half, mean + half), t, t_two_sided_p(t, n - 1), wp, wn)


def window(series: Sequence[Optional[float]], lo: int, hi: int) -> np.ndarray:
    """Epochs ``lo`` .. ``hi`` inclusive of a per-epoch series whose first entry is epoch 1."""
    if not 1 <= lo <= hi:
        raise ValueError(f"need 1 <= lo <= hi, got {lo}..{hi}")
    if len(series) < hi:
        raise ValueError(f"the series has {len(series)} epochs, the window ends at epoch {hi}")
    part = series[lo - 1:hi]
    if any(x is None for x in part):
        raise ValueError(f"the series has no value at some epoch of {lo}..{hi}")
    return np.asarray(part, dtype=np.float64)


def window_mean(series: Sequence[Optional[float]], lo: int, hi: int) -> float:
    """Mean over epochs ``lo`` .. ``hi`` inclusive (epochs counted from 1)."""
    return float(window(series, lo, hi).mean())


def volatility(series: Sequence[float]) -> float:
    """Sample standard deviation (n - 1) of the epoch-to-epoch changes ``series[i+1] - series[i]``."""
    steps = np.diff(np.asarray(series, dtype=np.float64))
    if len(steps) < 2:
        raise ValueError(f"volatility needs at least 3 epochs, got {len(series)}")
    return float(steps.std(ddof=1))
