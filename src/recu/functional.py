"""The ReCU method as pure tensor maths.

One function per equation of the method document (``shared/docs/recu-method.md``,
section 1) and of the paper (Xu et al., ICCV 2021). No modules, no state, no host
synchronisation: every result stays on the input's device, so the functions run
inside ``torch.compile(fullgraph=True)`` and on GPUs without stalls.
"""

from __future__ import annotations

import math
from typing import Literal, Union

try:
    import torch
except ModuleNotFoundError as e:  # a runtime-only install (recu-bnn[runtime]) has no PyTorch
    if e.name != "torch":
        raise
    from ._lazy import missing_torch

    raise missing_torch("recu.functional") from None
from torch import Tensor

__all__ = [
    "TauLike",
    "SignAtZero",
    "SIGN_AT_ZERO",
    "check_tau",
    "center_filters",
    "standardize_filters",
    "laplace_scale",
    "laplace_quantile",
    "recu_clamp",
    "recu_mask",
    "recu_clamp_ste",
    "sign",
    "sign_ste",
    "approx_sign",
    "sign_clipped_ste",
    "normalize_activation",
    "analytic_scale",
    "mean_abs_scale",
]

TauLike = Union[float, Tensor]

# What sign gives at exactly 0: "plus_one" (the paper's Eq. 2, what 1 bit holds) or "zero" (torch.sign,
# the authors' code).
SignAtZero = Literal["plus_one", "zero"]
SIGN_AT_ZERO: tuple[str, ...] = ("plus_one", "zero")

TAU_RANGE_MESSAGE = "tau must lie in (0.5, 1] (0.5 < tau <= 1; tau = 1 disables the clamp)"


def _filter_dims(w: Tensor) -> tuple[int, ...]:
    if w.dim() < 2:
        raise ValueError(
            f"weight must have shape (C_out, C_in, ...) with at least 2 dimensions, got {tuple(w.shape)}"
        )
    return tuple(range(1, w.dim()))


def _is_tracing() -> bool:
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def check_tau(tau: TauLike) -> None:
    """Raise ``ValueError`` unless ``0.5 < tau <= 1``.

    A Python number is always checked. A tensor is checked only where that costs no
    host synchronisation (on the CPU, outside ``torch.compile`` tracing); on an
    accelerator the value is trusted, which is why :func:`recu.set_tau` checks it
    before it ever reaches a layer.
    """
    if isinstance(tau, Tensor):
        if tau.dim() != 0:
            raise ValueError(
                f"{TAU_RANGE_MESSAGE}, given as a number or a 0-dim tensor; got a tensor of shape {tuple(tau.shape)}"
            )
        if tau.device.type != "cpu" or _is_tracing():
            return
        value = float(tau)
    else:
        try:
            value = float(tau)
        except (TypeError, ValueError):
            raise ValueError(f"{TAU_RANGE_MESSAGE}; got {tau!r}") from None
    if not (0.5 < value <= 1.0) or math.isnan(value):
        raise ValueError(f"{TAU_RANGE_MESSAGE}; got {value}")


def center_filters(w: Tensor) -> Tensor:
    """Step 1: W0 = W - mean_c(W), the mean taken per output filter over (C_in, k, k)."""
    return w - w.mean(dim=_filter_dims(w), keepdim=True)


def standardize_filters(w0: Tensor, b_star: float = 2.0, eps: float = 1e-5) -> Tensor:
    """Step 2: W1 = W0 * sqrt(2) * b* / sqrt(var_c(W0) + eps), per output filter.

    ``var`` is the unbiased estimate, as in the authors' code. A Laplace variable of
    scale b has standard deviation sqrt(2) b, so each filter's std becomes sqrt(2) b*
    (up to ``eps``), i.e. the Laplace scale b*.
    """
    var = w0.var(dim=_filter_dims(w0), keepdim=True, unbiased=True)
    return w0 * (math.sqrt(2.0) * b_star) / torch.sqrt(var + eps)


def laplace_scale(w: Tensor, per_channel: bool = False) -> Tensor:
    """Step 3: maximum-likelihood Laplace scale b_hat = mean(|W|) of a zero-mean tensor.

    One scalar for the layer (the default, as the authors do) or, with
    ``per_channel=True``, one per output filter, shaped to broadcast against ``w``.
    """
    if per_channel:
        return w.abs().mean(dim=_filter_dims(w), keepdim=True)
    return w.abs().mean()


def laplace_quantile(tau: TauLike, b: Tensor) -> Tensor:
    """Step 4 (paper Eq. 10): Q(tau) = -b * ln(2 - 2 tau), the tau-quantile of La(0, b).

    For X ~ La(0, b): P(X <= Q) = tau, so P(|X| <= Q) = 2 tau - 1 and a share
    2 (1 - tau) of Laplace weights lies beyond +-Q.

    Defined for 0.5 < tau <= 1; tau = 1 gives Q = +inf (no clamp). The result is
    detached: ReCU treats Q as a constant in backward. ``b`` may be a scalar tensor
    or a per-channel tensor; ``tau`` a Python float or a 0-dim tensor on any device.
    """
    check_tau(tau)
    b = b.detach()
    tau_t = torch.as_tensor(tau, dtype=b.dtype, device=b.device)
    # log(0) = -inf would give 0 * inf = nan when b == 0; select +inf explicitly.
    safe = torch.clamp(2.0 - 2.0 * tau_t, min=torch.finfo(b.dtype).tiny)
    q = -b * torch.log(safe)
    return torch.where(tau_t >= 1.0, torch.full_like(q, math.inf), q)


def recu_clamp(w: Tensor, q: Tensor) -> Tensor:
    """Step 5 (paper Eq. 9): ReCU(W) = clamp(W, -Q, Q); zero gradient where |W| > Q."""
    return torch.clamp(w, min=-q, max=q)


def recu_mask(w: Tensor, q: Tensor) -> Tensor:
    """Ablation "mask only": forward identity, gradient zeroed where |W| > Q.

    The gradient ReCU gives without changing any value, to test whether ReCU is
    only gradient masking.
    """
    inside = (w.abs() <= q).to(w.dtype)
    return w.detach() + (w - w.detach()) * inside


def recu_clamp_ste(w: Tensor, q: Tensor) -> Tensor:
    """Ablation "clamp with straight-through": clamp in forward, identity gradient."""
    clamped = torch.clamp(w, min=-q, max=q)
    # clamped + 0 (not w + (clamped - w)): exact in floating point for any finite w.
    return clamped.detach() + (w - w.detach())


def _check_at_zero(at_zero: str) -> None:
    if at_zero not in SIGN_AT_ZERO:
        raise ValueError(f"at_zero must be one of {SIGN_AT_ZERO}, got {at_zero!r}")


def sign(x: Tensor, at_zero: SignAtZero = "plus_one") -> Tensor:
    """The paper's sign (Eq. 2): +1 for x >= 0, -1 otherwise.

    ``at_zero="zero"`` gives ``torch.sign``'s 0 at exactly 0 instead, as the authors' code
    binarises. Only exact zeros differ; the default is what a 1-bit code can hold.
    """
    _check_at_zero(at_zero)
    if at_zero == "zero":
        return torch.sign(x)
    # sign(sign(x) + 1/2): -1 -> -1/2 -> -1, 0 -> +1/2 -> +1, +1 -> +3/2 -> +1. Vectorised passes: eager
    # on a CPU several times faster than torch.where(x >= 0, 1, -1), whose CPU kernel made the layer
    # slower than the authors'. nan -> -1 first (nan >= 0 is false), as the packed kernels and the ONNX
    # graph binarise it (torch.sign gives 0 for nan, which would become +1).
    if torch.compiler.is_compiling():  # inductor fuses the comparison into one kernel either way
        one = torch.ones((), dtype=x.dtype, device=x.device)
        return torch.where(x >= 0, one, -one)
    return torch.sign(torch.nan_to_num(x, nan=-1.0)).add_(0.5).sign_()


def sign_ste(x: Tensor, at_zero: SignAtZero = "plus_one") -> Tensor:
    """Step 6: weight binarisation, forward :func:`sign`, backward identity (no window)."""
    # sign(x) + 0 is exactly +-1; x + (sign(x) - x) rounds to 0 or 2 once |x| >= 2**24 in float32.
    return sign(x, at_zero).detach() + (x - x.detach())


class _ApproxSign(torch.autograd.Function):
    @staticmethod
    def forward(x: Tensor, at_zero: str) -> Tensor:
        return sign(x, at_zero)  # type: ignore[arg-type]

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[no-untyped-def]
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[no-untyped-def]
        (x,) = ctx.saved_tensors
        return grad * torch.clamp(2.0 - 2.0 * x.abs(), min=0.0), None


def approx_sign(x: Tensor, at_zero: SignAtZero = "plus_one") -> Tensor:
    """Step 7 (Bi-Real ApproxSign): forward :func:`sign`, backward dL/dx = dL/dy * max(0, 2 - 2|x|)."""
    _check_at_zero(at_zero)
    return _ApproxSign.apply(x, at_zero)


def sign_clipped_ste(x: Tensor, at_zero: SignAtZero = "plus_one") -> Tensor:
    """Sign with the clipped straight-through estimator (BNN, hardtanh): gradient 1 where |x| <= 1."""
    clipped = torch.clamp(x, -1.0, 1.0)
    return sign(x, at_zero).detach() + (clipped - clipped.detach())


def normalize_activation(a: Tensor, eps: float = 1e-5) -> Tensor:
    """Step 7, training only: A0 = A / sqrt(var(A) + eps), var unbiased over all but the batch dim."""
    dims = tuple(range(1, a.dim()))
    return a / torch.sqrt(a.var(dim=dims, keepdim=True, unbiased=True) + eps)


def analytic_scale(w2: Tensor) -> Tensor:
    """Paper Eq. 13: alpha = E|ReCU(W)|, estimated per output filter from the clamped weights.

    Shaped (C_out, 1, ..., 1) to scale the weights. Under La(0, b) it equals b (2 tau - 1).
    """
    return w2.abs().mean(dim=_filter_dims(w2), keepdim=True)


def mean_abs_scale(w: Tensor) -> Tensor:
    """XNOR-Net's scale: mean(|W|) per output filter of the latent weights, shaped to broadcast."""
    return w.abs().mean(dim=_filter_dims(w), keepdim=True)
