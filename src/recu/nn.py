"""ReCU layers: drop-in binary replacements for ``Conv1d``, ``Conv2d`` and ``Linear``.

The default behaviour is exactly the authors' layer (method document, section 1)
with sign(0) = +1 (the paper's Eq. 2; ``BinaryConfig(sign_at_zero="zero")`` gives the
authors' ``torch.sign``). :class:`BinaryConfig` selects the variants used for ablations and
for the methods ReCU is compared against; :func:`preset` names them.

Two choices differ from the authors' layer so that a PyTorch user meets no surprise: a layer
starts at tau = 0.85 (:data:`DEFAULT_TAU`, the paper schedule's start; the authors' buffer starts
at 1, which does not clamp until their training script sets it), and the layers take the input
shapes of their ``nn`` parents (unbatched input; ``(N, *, C)`` for the linear layer).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Literal, Optional

try:
    import torch
except ModuleNotFoundError as e:  # a runtime-only install (recu-bnn[runtime]) has no PyTorch
    if e.name != "torch":
        raise
    from ._lazy import missing_torch

    raise missing_torch("recu.nn") from None
import torch.nn.functional as F
from torch import Tensor, nn

from . import functional as RF

__all__ = [
    "BinaryConfig",
    "PRESETS",
    "preset",
    "BinaryLayer",
    "DEFAULT_TAU",
    "set_finite_check",
    "finite_check_enabled",
    "ReCUConv1d",
    "ReCUConv2d",
    "ReCULinear",
]

ClampMode = Literal["clamp", "mask", "clamp_ste", "none"]
ScaleMode = Literal["learned", "analytic", "mean_abs", "none"]
ActGrad = Literal["approx_sign", "clipped", "identity"]
ScaleEstimate = Literal["layer", "channel"]

_CHOICES = {
    "clamp": ("clamp", "mask", "clamp_ste", "none"),
    "scale": ("learned", "analytic", "mean_abs", "none"),
    "act_grad": ("approx_sign", "clipped", "identity"),
    "scale_estimate": ("layer", "channel"),
    "compute_dtype": ("float32", "bfloat16"),
    "sign_at_zero": RF.SIGN_AT_ZERO,
}


@dataclass(frozen=True)
class BinaryConfig:
    """Every choice of the binary weight and activation path.

    Defaults reproduce the authors' ReCU layer.

    Attributes:
        center: subtract each filter's mean (step 1).
        standardize: rescale each filter to Laplace scale ``b_star`` (step 2).
        b_star: target Laplace scale b* of the standardised filters.
        scale_estimate: ``"layer"`` for one b_hat per layer (authors), ``"channel"`` for one per filter.
        clamp: ``"clamp"`` (ReCU), ``"mask"`` (identity forward, gradient zeroed beyond Q),
            ``"clamp_ste"`` (clamp forward, gradient passes), ``"none"``.
        scale: ``"learned"`` alpha (authors), ``"analytic"`` E|ReCU(W)| (Eq. 13),
            ``"mean_abs"`` (XNOR-Net), ``"none"``.
        act_grad: activation gradient, ``"approx_sign"`` (Bi-Real), ``"clipped"`` (hardtanh STE), ``"identity"``.
        act_norm: divide activations by their per-sample std during training (step 7).
        binary_weights: binarise weights; off gives a real-weight layer (two-stage training, stage 1).
        binary_activations: binarise activations; off gives a binary-weight, real-activation layer.
        eps: the epsilon of both standardisations.
        compute_dtype: operand type of the binary convolution/matmul when weights and activations
            are both binary. ``"bfloat16"`` is exact for the +-1 operands and runs on bf16 units
            (AMX, tensor cores) several times faster than float32; the output is the bf16 result
            (integer dot products with |dot| > 256 are rounded to 8 significant bits, a relative
            error <= 2^-8), then float32 again.
        sign_at_zero: what the sign of weights and activations gives at exactly 0: ``"plus_one"``
            (the paper's Eq. 2; the only choice a packed 1-bit model can reproduce) or ``"zero"``
            (``torch.sign``, as the authors' code binarises; :func:`recu.models.load_authors_checkpoint`
            sets it). They differ only on exact zeros, e.g. zero-padded shortcut channels.
    """

    center: bool = True
    standardize: bool = True
    b_star: float = 2.0
    scale_estimate: ScaleEstimate = "layer"
    clamp: ClampMode = "clamp"
    scale: ScaleMode = "learned"
    act_grad: ActGrad = "approx_sign"
    act_norm: bool = True
    binary_weights: bool = True
    binary_activations: bool = True
    eps: float = 1e-5
    compute_dtype: str = "float32"
    sign_at_zero: RF.SignAtZero = "plus_one"

    def __post_init__(self) -> None:
        for name, allowed in _CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"BinaryConfig.{name} must be one of {allowed}, got {value!r}")
        for name in ("center", "standardize", "act_norm", "binary_weights", "binary_activations"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"BinaryConfig.{name} must be True or False, got {getattr(self, name)!r}")
        for name in ("b_star", "eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < math.inf:
                raise ValueError(f"BinaryConfig.{name} must be a finite number > 0, got {value!r}")

    @property
    def fully_binary(self) -> bool:
        """Both weights and activations are binary (the layer is a true 1-bit layer)."""
        return self.binary_weights and self.binary_activations

    def replace(self, **changes: object) -> "BinaryConfig":
        """A copy with some fields changed (the config itself is frozen)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


PRESETS: dict[str, BinaryConfig] = {
    "recu": BinaryConfig(),
    # Balanced (centred) weights standardised to unit std, no clamp: the weight half of IR-Net's
    # Libra-PB, without IR-Net's EDE backward and power-of-two scale (so not IR-Net; see RENAMED_PRESETS).
    "balanced": BinaryConfig(clamp="none", b_star=2.0 ** -0.5),
    # XNOR-Net: plain sign of the latent weights scaled by mean |W| per filter.
    "xnor": BinaryConfig(
        center=False, standardize=False, clamp="none", scale="mean_abs", act_grad="clipped", act_norm=False
    ),
    # BNN (Hubara et al.): plain sign, clipped straight-through estimator, no scale.
    "bnn": BinaryConfig(
        center=False, standardize=False, clamp="none", scale="none", act_grad="clipped", act_norm=False
    ),
}


# Names that presets had before and why they changed: preset() refuses them with this reason.
RENAMED_PRESETS: dict[str, str] = {
    "irnet": "preset 'irnet' was renamed 'balanced': it has IR-Net's balanced, standardised weights but "
             "neither IR-Net's EDE backward nor its power-of-two scale, so it is not IR-Net",
}


def preset(name: str, **changes: object) -> BinaryConfig:
    """The named method's config (``recu``, ``balanced``, ``xnor``, ``bnn``), optionally changed."""
    if name in RENAMED_PRESETS:
        raise ValueError(RENAMED_PRESETS[name])
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name].replace(**changes) if changes else PRESETS[name]


# A layer's tau until a schedule or set_tau changes it: the start of the paper's schedule (Eq. 24,
# tau_s = 0.85), so that a layer trained without a schedule still clamps (tau = 1 would not).
DEFAULT_TAU = 0.85

# Float types too coarse for tau and the latent-weight statistics: bfloat16 rounds tau = 0.9985 to 1.0
# (no clamp) and the schedule to a staircase, so tau and W1 -> Q -> W2 stay float32 in such a model.
_LOW_PRECISION = (torch.float16, torch.bfloat16)

_finite_check = False


def set_finite_check(enabled: bool) -> None:
    """Make every ReCU layer check its latent weights for nan/inf in each forward (off by default).

    A non-finite latent weight can go unnoticed: its sign is a valid +-1 (``torch.sign(nan)`` is 0,
    the sign +1), so an evaluation stays finite. The check names the layer at the first forward. It
    is a full pass over the weights plus a host synchronisation per layer and forward, hence opt-in,
    for debugging, like ``torch.autograd.set_detect_anomaly``.
    """
    global _finite_check
    if not isinstance(enabled, bool):
        raise ValueError(f"set_finite_check takes True or False, got {enabled!r}")
    _finite_check = enabled


def finite_check_enabled() -> bool:
    """Whether :func:`set_finite_check` switched the per-forward weight check on."""
    return _finite_check


class BinaryLayer(nn.Module):
    """Shared weight and activation paths of the ReCU layers (a mixin over a torch layer)."""

    weight: Tensor
    tau: Tensor
    alpha: Optional[nn.Parameter]
    config: BinaryConfig

    def _init_binary(self, config: Optional[BinaryConfig], alpha_shape: tuple[int, ...], tau: float) -> None:
        if config is None:
            config = BinaryConfig()
        if not isinstance(config, BinaryConfig):
            raise TypeError(f"config must be a BinaryConfig, got {type(config).__name__}")
        if isinstance(tau, bool) or not isinstance(tau, numbers.Real):
            raise ValueError(f"{RF.TAU_RANGE_MESSAGE}; got {tau!r}")
        RF.check_tau(float(tau))
        self.config = config
        if config.scale == "learned":
            self.alpha = nn.Parameter(torch.rand(alpha_shape, device=self.weight.device, dtype=self.weight.dtype))
        else:
            self.register_parameter("alpha", None)
        self.register_buffer("tau", torch.tensor(float(tau), dtype=torch.float32, device=self.weight.device))

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        # model.half() / .to(torch.bfloat16) would round tau (0.9985 -> 1.0 in bfloat16: no clamp):
        # keep it float32, re-derived from the value before the cast.
        before = self.tau
        module = super()._apply(fn, recurse)
        if self.tau.dtype in _LOW_PRECISION:
            self.tau = before.detach().to(device=self.tau.device, dtype=torch.float32)
        return module

    def standardized_weight(self) -> Tensor:
        """W1: the centred and standardised latent weights (steps 1-2), before the clamp.

        Float32 when the weights are float16/bfloat16 (a cast model): the statistics, Q and the
        clamp are then exact float32 functions of the stored weights.
        """
        w = self.weight
        if w.dtype in _LOW_PRECISION:
            w = w.float()
        cfg = self.config
        if cfg.center:
            w = RF.center_filters(w)
        if cfg.standardize:
            w = RF.standardize_filters(w, cfg.b_star, cfg.eps)
        return w

    def quantile(self, w1: Tensor) -> Tensor:
        """Q(tau) for the current ``tau`` buffer, from b_hat of ``w1`` (steps 3-4)."""
        b_hat = RF.laplace_scale(w1, per_channel=self.config.scale_estimate == "channel")
        return RF.laplace_quantile(self.tau, b_hat)

    def clamped_weight(self) -> Tensor:
        """W2: the latent weights after the selected clamp (step 5)."""
        w1 = self.standardized_weight()
        mode = self.config.clamp
        if mode == "none":
            return w1
        q = self.quantile(w1)
        if mode == "clamp":
            return RF.recu_clamp(w1, q)
        if mode == "mask":
            return RF.recu_mask(w1, q)
        return RF.recu_clamp_ste(w1, q)

    def binary_weight(self, w2: Optional[Tensor] = None) -> Tensor:
        """Wb = sign(W2) with a straight-through gradient (step 6), or W2 when weights stay real.

        ``w2`` reuses a :meth:`clamped_weight` the caller already computed. The result has the
        weights' dtype (+-1 is exact in every float type).
        """
        if w2 is None:
            w2 = self.clamped_weight()
        if not self.config.binary_weights:
            wb = w2
        elif torch.is_grad_enabled() and w2.requires_grad:
            wb = RF.sign_ste(w2, self.config.sign_at_zero)
        else:  # no backward: the straight-through terms would be two more passes over the weights
            wb = RF.sign(w2, self.config.sign_at_zero)
        return wb.to(self.weight.dtype)

    def binary_input(self, a: Tensor) -> Tensor:
        """Ab = sign(A0) with the selected gradient (step 7)."""
        cfg = self.config
        if not cfg.binary_activations:
            return a
        if cfg.act_norm and self.training:
            a = RF.normalize_activation(a, cfg.eps)
        if not (torch.is_grad_enabled() and a.requires_grad):
            return RF.sign(a, cfg.sign_at_zero)  # no backward: every choice is the same sign
        if cfg.act_grad == "approx_sign":
            return RF.approx_sign(a, cfg.sign_at_zero)
        if cfg.act_grad == "clipped":
            return RF.sign_clipped_ste(a, cfg.sign_at_zero)
        return RF.sign_ste(a, cfg.sign_at_zero)

    def output_scale(self, w2: Optional[Tensor]) -> Optional[Tensor]:
        """Per-output-channel scale, shaped like ``alpha`` (broadcasts over the output)."""
        mode = self.config.scale
        if mode == "learned":
            return self.alpha
        if mode == "none":
            return None
        if mode == "analytic":
            assert w2 is not None
            s = RF.analytic_scale(w2)
        else:
            s = RF.mean_abs_scale(RF.center_filters(self.weight) if self.config.center else self.weight)
        return s.reshape(self._alpha_shape()).to(self.weight.dtype)

    def _alpha_shape(self) -> tuple[int, ...]:
        return (self.weight.shape[0],) + (1,) * (self.weight.dim() - 2)

    def _check_input(self, x: Tensor, spatial_dims: int) -> bool:
        """Raise ``ValueError`` for an input the ``nn`` parent would not take; True if it is unbatched.

        As their parents: a linear layer takes (*, C) (``(N, *, C)``, or ``(C,)`` unbatched), a
        convolution (N, C, *spatial) or unbatched (C, *spatial).
        """
        in_features = self.weight.shape[1] * getattr(self, "groups", 1)
        if spatial_dims == 0:
            ok = x.dim() >= 1 and x.shape[-1] == in_features
            unbatched = x.dim() == 1
            layout = "(*, C), e.g. (N, C) or (N, L, C),"
        else:
            ok = x.dim() in (1 + spatial_dims, 2 + spatial_dims) and x.shape[-1 - spatial_dims] == in_features
            unbatched = x.dim() == 1 + spatial_dims
            layout = {1: "(N, C, L) or unbatched (C, L)", 2: "(N, C, H, W) or unbatched (C, H, W)"}[spatial_dims]
        if not ok:
            raise ValueError(
                f"{type(self).__name__} expects input of shape {layout} with C = {in_features}, "
                f"got shape {tuple(x.shape)}"
            )
        if _finite_check and not torch.compiler.is_compiling():
            if not bool(torch.isfinite(self.weight).all()):
                raise ValueError(f"{type(self).__name__}.weight contains non-finite values (nan or inf)")
        return unbatched

    def _binary_forward(self, x: Tensor, spatial_dims: int) -> Tensor:
        if self._check_input(x, spatial_dims):
            # the batch of one the nn parents also use for unbatched input
            return self._binary_forward(x.unsqueeze(0), spatial_dims).squeeze(0)
        w2 = self.clamped_weight()
        wb = self.binary_weight(w2)
        xb = self.binary_input(x)
        if self.config.compute_dtype == "bfloat16" and self.config.fully_binary:
            y = self._linear_op(xb.to(torch.bfloat16), wb.to(torch.bfloat16)).to(x.dtype)
        else:
            y = self._linear_op(xb, wb)
        scale = self.output_scale(w2)
        if scale is not None:
            y = y * scale
        if self.bias is not None:
            y = y + self.bias.reshape(self._alpha_shape())
        return y

    def _linear_op(self, x: Tensor, w: Tensor) -> Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        base = super().extra_repr()  # type: ignore[misc]
        default = BinaryConfig()
        changed = [
            f"{f.name}={getattr(self.config, f.name)!r}"
            for f in dataclasses.fields(self.config)
            if getattr(self.config, f.name) != getattr(default, f.name)
        ]
        return base + (", config(" + ", ".join(changed) + ")" if changed else "")


class ReCUConv2d(BinaryLayer, nn.Conv2d):
    """Binary 2-D convolution with ReCU (same constructor as ``nn.Conv2d``; bias off by default).

    Forward: ``conv(sign(A0), sign(ReCU(W1))) * alpha``, ``alpha`` of shape (C_out, 1, 1).
    Input (N, C, H, W) or unbatched (C, H, W), as ``nn.Conv2d``.

    ``tau`` is a 0-dim float32 buffer (it stays float32 when the model is cast to bfloat16 or
    half) that a schedule's ``apply`` or :func:`recu.set_tau` updates. It starts at the ``tau``
    argument, by default :data:`DEFAULT_TAU` = 0.85 (the paper's schedule start), so a layer
    trained without a schedule clamps; ``tau=1.0`` disables the clamp.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = False,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        config: Optional[BinaryConfig] = None,
        tau: float = DEFAULT_TAU,
    ) -> None:
        if padding_mode != "zeros":
            raise ValueError(
                f"ReCUConv2d supports padding_mode='zeros' only (the method pads binary inputs with 0), "
                f"got {padding_mode!r}"
            )
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
            padding_mode, device, dtype,
        )
        self._init_binary(config, (out_channels, 1, 1), tau)

    def _linear_op(self, x: Tensor, w: Tensor) -> Tensor:
        return F.conv2d(x, w, None, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x: Tensor) -> Tensor:
        return self._binary_forward(x, 2)


class ReCUConv1d(BinaryLayer, nn.Conv1d):
    """Binary 1-D convolution with ReCU (same constructor as ``nn.Conv1d``; bias off by default).

    Input (N, C, L) or unbatched (C, L). ``tau`` as for :class:`ReCUConv2d` (default 0.85).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int],
        stride: int | tuple[int] = 1,
        padding: int | tuple[int] | str = 0,
        dilation: int | tuple[int] = 1,
        groups: int = 1,
        bias: bool = False,
        padding_mode: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        config: Optional[BinaryConfig] = None,
        tau: float = DEFAULT_TAU,
    ) -> None:
        if padding_mode != "zeros":
            raise ValueError(f"ReCUConv1d supports padding_mode='zeros' only, got {padding_mode!r}")
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
            padding_mode, device, dtype,
        )
        self._init_binary(config, (out_channels, 1), tau)

    def _linear_op(self, x: Tensor, w: Tensor) -> Tensor:
        return F.conv1d(x, w, None, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x: Tensor) -> Tensor:
        return self._binary_forward(x, 1)


class ReCULinear(BinaryLayer, nn.Linear):
    """Binary fully connected layer with ReCU (same constructor as ``nn.Linear``; bias off by default).

    ``alpha`` has shape (out_features,); filters are the rows of ``weight``. Input (*, C) as
    ``nn.Linear``: (N, C), (N, L, C) ... or unbatched (C,); during training the activation
    normalisation divides each sample (all of its dims but the first) by its std, as the
    convolutions do. ``tau`` as for :class:`ReCUConv2d` (default 0.85).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        config: Optional[BinaryConfig] = None,
        tau: float = DEFAULT_TAU,
    ) -> None:
        super().__init__(in_features, out_features, bias, device, dtype)
        self._init_binary(config, (out_features,), tau)

    def _linear_op(self, x: Tensor, w: Tensor) -> Tensor:
        return F.linear(x, w)

    def forward(self, x: Tensor) -> Tensor:
        return self._binary_forward(x, 0)
