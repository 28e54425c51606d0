"""Closed forms for a clamped Laplace La(0, b), and the same quantities measured on weights.

A latent weight W ~ La(0, b) (density f(w) = exp(-|w|/b) / 2b) is clamped to [-Q, Q]
with Q(tau) = -b ln(2 - 2 tau) (paper Eq. 10). Writing p = exp(-Q/b) = 2 - 2 tau for
the mass beyond +-Q, the clamped variable has a continuous part on (-Q, Q) of mass
1 - p = 2 tau - 1 and two atoms of mass 1 - tau at +-Q. Everything below follows from
that (derivations in ``docs/theory.md``):

- clamped share          P(|W| > Q)          = 2 (1 - tau)
- scale (paper Eq. 13)   alpha = E|ReCU(W)|  = b (2 tau - 1)
- quantisation error     E(ReCU(W) - alpha sign W)^2
      corrected:         b^2 (-4 tau^2 + 8 tau - 3 + 4 (1 - tau) ln(2 - 2 tau))  = b^2 (1 - p^2 + 2 p ln p)
      paper (Eq. 14/A2): b^2 (-16 tau^3 + 44 tau^2 - 40 tau - 4 (tau - 1) ln(2 - 2 tau) + 13)
      The paper's form exceeds the correct one by 16 b^2 (1 - tau)^3 = 2 p (alpha - b)^2: the
      mass of the continuous part, 1 - exp(-Q/b), was written 1 + exp(-Q/b).
- entropy (differential part + the two atoms, paper Eq. 18)
                         H = 2 (ln b + 1) tau + ln(2 / b) - 1

The ``measured_*`` functions compute the same quantities on a real weight tensor along the
ReCU layer's own path (centre, standardise to b*, b_hat = mean |W1|, Q from b_hat), so a
trained layer can be compared with the Laplace prediction.

Only numpy and torch are needed here (scipy and matplotlib are not).
"""

from __future__ import annotations

import math
from typing import Literal, Optional, Union

import numpy as np
import torch
from torch import Tensor

from .. import functional as RF
from ..nn import BinaryConfig, BinaryLayer

__all__ = [
    "ArrayLike",
    "check_tau_array",
    "laplace_quantile",
    "laplace_alpha",
    "quantization_error",
    "entropy",
    "clamped_share",
    "paper_minimum",
    "measured_standardized",
    "measured_b_hat",
    "measured_quantile",
    "measured_clamped_share",
    "measured_alpha",
    "measured_quantization_error",
]

ArrayLike = Union[float, np.ndarray]
WeightLike = Union[Tensor, np.ndarray, BinaryLayer]

_TAU_MESSAGE = "tau must lie in (0.5, 1] (0.5 < tau <= 1)"


def _result(x: np.ndarray, scalar: bool) -> ArrayLike:
    return float(x) if scalar else x


def check_tau_array(tau: ArrayLike) -> tuple[np.ndarray, bool]:
    """``tau`` as a float64 array plus whether it was a scalar; ``ValueError`` outside (0.5, 1]."""
    t = np.asarray(tau, dtype=np.float64)
    bad = ~((t > 0.5) & (t <= 1.0))  # also catches nan
    if bad.any():
        shown = t[bad].ravel()[:5].tolist()
        raise ValueError(f"{_TAU_MESSAGE}; got {shown if t.ndim else float(t)}")
    return t, t.ndim == 0


def _check_b(b: ArrayLike) -> np.ndarray:
    arr = np.asarray(b, dtype=np.float64)
    if not (arr > 0).all():
        raise ValueError(f"the Laplace scale b must be > 0, got {arr.ravel()[:5].tolist() if arr.ndim else float(arr)}")
    return arr


def _p_log_p(p: np.ndarray) -> np.ndarray:
    # p ln p -> 0 as p -> 0 (tau = 1); np.log(0) would give 0 * -inf = nan.
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)


def laplace_quantile(tau: ArrayLike, b: ArrayLike = 1.0) -> ArrayLike:
    """Paper Eq. 10: Q(tau) = -b ln(2 - 2 tau) (numpy version of :func:`recu.functional.laplace_quantile`).

    tau = 1 gives +inf.
    """
    t, scalar = check_tau_array(tau)
    bb = _check_b(b)
    with np.errstate(divide="ignore"):
        q = -bb * np.log(2.0 - 2.0 * t)
    return _result(q, scalar and bb.ndim == 0)


def laplace_alpha(tau: ArrayLike, b: ArrayLike = 1.0) -> ArrayLike:
    """Paper Eq. 13 under La(0, b): alpha = E|ReCU(W)| = b (1 - exp(-Q/b)) = b (2 tau - 1)."""
    t, scalar = check_tau_array(tau)
    bb = _check_b(b)
    return _result(bb * (2.0 * t - 1.0), scalar and bb.ndim == 0)


def quantization_error(
    tau: ArrayLike, b: ArrayLike = 1.0, form: Literal["corrected", "paper"] = "corrected"
) -> ArrayLike:
    """Quantisation error E(ReCU(W) - alpha sign W)^2 of a clamped La(0, b), alpha = b (2 tau - 1).

    ``form="corrected"``: b^2 (-4 tau^2 + 8 tau - 3 + 4 (1 - tau) ln(2 - 2 tau)), which is
    b^2 (1 - p^2 + 2 p ln p) with p = 2 - 2 tau; it rises monotonically from 0 (tau -> 0.5)
    to b^2 (tau = 1).
    ``form="paper"``: the published Eq. 14 (appendix A2),
    b^2 (-16 tau^3 + 44 tau^2 - 40 tau - 4 (tau - 1) ln(2 - 2 tau) + 13), which is the corrected
    value plus 16 b^2 (1 - tau)^3 (a sign error) and has a spurious minimum at tau = 0.821 (the paper's "tau ~ 0.82").
    """
    t, scalar = check_tau_array(tau)
    bb = _check_b(b)
    p = 2.0 - 2.0 * t
    if form == "corrected":
        core = 1.0 - p * p + 2.0 * _p_log_p(p)
    elif form == "paper":
        # Written as the paper prints it, with (tau - 1) ln(2 - 2 tau) = -p ln(p) / 2.
        core = -16.0 * t**3 + 44.0 * t**2 - 40.0 * t + 2.0 * _p_log_p(p) + 13.0
    else:
        raise ValueError(f"form must be 'corrected' or 'paper', got {form!r}")
    return _result(bb * bb * core, scalar and bb.ndim == 0)


def entropy(tau: ArrayLike, b: ArrayLike = 1.0) -> ArrayLike:
    """Paper Eq. 18: H = 2 (ln b + 1) tau + ln(2 / b) - 1, in nats.

    The differential entropy of the continuous part on (-Q, Q) plus the discrete entropy
    of the two atoms of mass 1 - tau. It is ln 2 for every tau at b = 1/e, rises with tau
    for b > 1/e and falls for b < 1/e; at tau = 1 it is the Laplace entropy ln(2 b) + 1.
    """
    t, scalar = check_tau_array(tau)
    bb = _check_b(b)
    return _result(2.0 * (np.log(bb) + 1.0) * t + np.log(2.0 / bb) - 1.0, scalar and bb.ndim == 0)


def clamped_share(tau: ArrayLike) -> ArrayLike:
    """P(|W| > Q) = exp(-Q/b) = 2 (1 - tau), independent of b (30% at 0.85, 2% at 0.99)."""
    t, scalar = check_tau_array(tau)
    return _result(2.0 * (1.0 - t), scalar)


def paper_minimum(b: float = 1.0) -> tuple[float, float]:
    """(tau, QE) of the interior minimum of the paper's Eq. 14 form, by golden-section search.

    The minimum exists only because of the sign error; the corrected form has none.
    """
    lo, hi = 0.5 + 1e-9, 1.0 - 1e-9
    g = (math.sqrt(5.0) - 1.0) / 2.0
    f = lambda x: float(quantization_error(x, b, form="paper"))  # noqa: E731
    a, c = hi - g * (hi - lo), lo + g * (hi - lo)
    for _ in range(200):
        if f(a) < f(c):
            hi = c
        else:
            lo = a
        a, c = hi - g * (hi - lo), lo + g * (hi - lo)
    x = 0.5 * (lo + hi)
    return x, f(x)


# ---------------------------------------------------------------------------------------------
# Measured on weights, along the layer's path.


def _standardized(w: WeightLike, config: Optional[BinaryConfig]) -> tuple[Tensor, BinaryConfig]:
    if isinstance(w, BinaryLayer):
        with torch.no_grad():
            return w.standardized_weight().detach(), w.config
    cfg = config or BinaryConfig()
    t = torch.as_tensor(w)
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    if cfg.center:
        t = RF.center_filters(t)
    if cfg.standardize:
        t = RF.standardize_filters(t, cfg.b_star, cfg.eps)
    return t, cfg


def _tau_of(w: WeightLike, tau: Optional[float]) -> float:
    if tau is None:
        if not isinstance(w, BinaryLayer):
            raise ValueError("tau is required when measuring a weight tensor (only a layer carries its own tau)")
        return float(w.tau)
    return float(tau)


def measured_standardized(w: WeightLike, config: Optional[BinaryConfig] = None) -> Tensor:
    """W1 (method steps 1-2) of a latent weight tensor, or of a layer with its own config."""
    return _standardized(w, config)[0]


def measured_b_hat(w: WeightLike, config: Optional[BinaryConfig] = None) -> Tensor:
    """Step 3: b_hat = mean |W1| (one per layer, or per filter if the config says "channel")."""
    w1, cfg = _standardized(w, config)
    return RF.laplace_scale(w1, per_channel=cfg.scale_estimate == "channel")


def measured_quantile(w: WeightLike, tau: Optional[float] = None, config: Optional[BinaryConfig] = None) -> Tensor:
    """Step 4: Q = -b_hat ln(2 - 2 tau) as the layer computes it."""
    return RF.laplace_quantile(_tau_of(w, tau), measured_b_hat(w, config))


def _clamped(
    w: WeightLike, tau: Optional[float], config: Optional[BinaryConfig]
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(W1, b_hat, Q, W2 = clamp(W1, -Q, Q)) along the layer's path."""
    w1, cfg = _standardized(w, config)
    b_hat = RF.laplace_scale(w1, per_channel=cfg.scale_estimate == "channel")
    q = RF.laplace_quantile(_tau_of(w, tau), b_hat)
    return w1, b_hat, q, RF.recu_clamp(w1, q)


def measured_clamped_share(w: WeightLike, tau: Optional[float] = None, config: Optional[BinaryConfig] = None) -> float:
    """Share of weights with |W1| > Q; 2 (1 - tau) if W1 were exactly Laplace."""
    w1, _, q, _ = _clamped(w, tau, config)
    return float((w1.abs() > q).double().mean())


def measured_alpha(w: WeightLike, tau: Optional[float] = None, config: Optional[BinaryConfig] = None) -> float:
    """Eq. 13 measured: alpha = mean |ReCU(W1)| over the layer; b_hat (2 tau - 1) under Laplace."""
    w2 = _clamped(w, tau, config)[3]
    return float(w2.abs().double().mean())


def measured_quantization_error(
    w: WeightLike, tau: Optional[float] = None, config: Optional[BinaryConfig] = None, normalized: bool = False
) -> float:
    """Eq. 11 measured: mean (ReCU(W1) - alpha sign(W1))^2 with alpha = mean |ReCU(W1)| over the layer.

    With ``normalized=True`` the result is divided by b_hat^2, to compare with
    ``quantization_error(tau, 1.0)``. sign is the method's (+1 at 0).
    """
    w1, _, _, w2 = _clamped(w, tau, config)
    w2 = w2.double()
    alpha = w2.abs().mean()
    qe = ((w2 - alpha * RF.sign(w2)) ** 2).mean()
    if normalized:
        # the layer-wide b_hat, also when the config estimates Q per channel
        qe = qe / w1.double().abs().mean() ** 2
    return float(qe)
