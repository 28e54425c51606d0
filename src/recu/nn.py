"""ReCU layers: drop-in binary replacements for ``Conv1d``, ``Conv2d`` and ``Linear``.

The default behaviour is exactly the authors' layer (method document, section 1)
with sign(0) = +1. :class:`BinaryConfig` selects the variants used for ablations and
for the methods ReCU is compared against; :func:`preset` names them.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import functional as RF

__all__ = [
    "BinaryConfig",
    "PRESETS",
    "preset",
    "BinaryLayer",
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
    # IR-Net-style: balanced, standardised weights, no clamp.
    "irnet": BinaryConfig(clamp="none", b_star=2.0 ** -0.5),
    # XNOR-Net: plain sign of the latent weights scaled by mean |W| per filter.
    "xnor": BinaryConfig(
        center=False, standardize=False, clamp="none", scale="mean_abs", act_grad="clipped", act_norm=False
    ),
    # BNN (Hubara et al.): plain sign, clipped straight-through estimator, no scale.
    "bnn": BinaryConfig(
        center=False, standardize=False, clamp="none", scale="none", act_grad="clipped", act_norm=False
    ),
}


def preset(name: str, **changes: object) -> BinaryConfig:
    """The named method's config (``recu``, ``irnet``, ``xnor``, ``bnn``), optionally changed."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name].replace(**changes) if changes else PRESETS[name]


class BinaryLayer(nn.Module):
    """Shared weight and activation paths of the ReCU layers (a mixin over a torch layer)."""

    weight: Tensor
    tau: Tensor
    alpha: Optional[nn.Parameter]
    config: BinaryConfig

    def _init_binary(self, config: Optional[BinaryConfig], alpha_shape: tuple[int, ...]) -> None:
        if config is None:
            config = BinaryConfig()
        if not isinstance(config, BinaryConfig):
            raise TypeError(f"config must be a BinaryConfig, got {type(config).__name__}")
        self.config = config
        if config.scale == "learned":
            self.alpha = nn.Parameter(torch.rand(alpha_shape, device=self.weight.device, dtype=self.weight.dtype))
        else:
            self.register_parameter("alpha", None)
        self.register_buffer("tau", torch.tensor(1.0, device=self.weight.device))

    def standardized_weight(self) -> Tensor:
        """W1: the centred and standardised latent weights (steps 1-2), before the clamp."""
        w = self.weight
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

        ``w2`` reuses a :meth:`clamped_weight` the caller already computed.
        """
        if w2 is None:
            w2 = self.clamped_weight()
        return RF.sign_ste(w2) if self.config.binary_weights else w2

    def binary_input(self, a: Tensor) -> Tensor:
        """Ab = sign(A0) with the selected gradient (step 7)."""
        cfg = self.config
        if not cfg.binary_activations:
            return a
        if cfg.act_norm and self.training:
            a = RF.normalize_activation(a, cfg.eps)
        if cfg.act_grad == "approx_sign":
            return RF.approx_sign(a)
        if cfg.act_grad == "clipped":
            return RF.sign_clipped_ste(a)
        return RF.sign_ste(a)

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
        return s.reshape(self._alpha_shape())

    def _alpha_shape(self) -> tuple[int, ...]:
        return (self.weight.shape[0],) + (1,) * (self.weight.dim() - 2)

    def _check_input(self, x: Tensor, spatial_dims: int) -> None:
        expected = 2 + spatial_dims
        in_features = self.weight.shape[1] * getattr(self, "groups", 1)
        if x.dim() != expected or x.shape[1] != in_features:
            layout = {0: "(N, C)", 1: "(N, C, L)", 2: "(N, C, H, W)"}[spatial_dims]
            raise ValueError(
                f"{type(self).__name__} expects input of shape {layout} with C = {in_features}, "
                f"got shape {tuple(x.shape)}"
            )
        if not torch.compiler.is_compiling() and self.weight.device.type == "cpu":
            if not bool(torch.isfinite(self.weight).all()):
                raise ValueError(f"{type(self).__name__}.weight contains non-finite values (nan or inf)")

    def _binary_forward(self, x: Tensor, spatial_dims: int) -> Tensor:
        self._check_input(x, spatial_dims)
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
    ``tau`` is a 0-dim buffer (1.0 = no clamp) that :func:`recu.set_tau` updates.
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
        self._init_binary(config, (out_channels, 1, 1))

    def _linear_op(self, x: Tensor, w: Tensor) -> Tensor:
        return F.conv2d(x, w, None, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x: Tensor) -> Tensor:
        return self._binary_forward(x, 2)


class ReCUConv1d(BinaryLayer, nn.Conv1d):
    """Binary 1-D convolution with ReCU (same constructor as ``nn.Conv1d``; bias off by default)."""

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
    ) -> None:
        if padding_mode != "zeros":
            raise ValueError(f"ReCUConv1d supports padding_mode='zeros' only, got {padding_mode!r}")
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
            padding_mode, device, dtype,
        )
        self._init_binary(config, (out_channels, 1))

    def _linear_op(self, x: Tensor, w: Tensor) -> Tensor:
        return F.conv1d(x, w, None, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x: Tensor) -> Tensor:
        return self._binary_forward(x, 1)


class ReCULinear(BinaryLayer, nn.Linear):
    """Binary fully connected layer with ReCU (same constructor as ``nn.Linear``; bias off by default).

    ``alpha`` has shape (out_features,); filters are the rows of ``weight``.
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
    ) -> None:
        super().__init__(in_features, out_features, bias, device, dtype)
        self._init_binary(config, (out_features,))

    def _linear_op(self, x: Tensor, w: Tensor) -> Tensor:
        return F.linear(x, w)

    def forward(self, x: Tensor) -> Tensor:
        return self._binary_forward(x, 0)
