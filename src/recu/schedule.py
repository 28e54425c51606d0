"""tau schedules (paper Eq. 24 and the variants the ablations need) and :func:`set_tau`.

A schedule maps training progress, measured in epochs (fractional for per-step
updates), to tau. It holds no model: :meth:`TauSchedule.apply` computes the value
and writes it into every ReCU layer with :func:`set_tau`.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import Tensor, nn

from .functional import TauLike, check_tau
from .convert import binary_layers

__all__ = [
    "set_tau",
    "get_tau",
    "TauSchedule",
    "ConstantTau",
    "ExponentialTau",
    "LinearTau",
    "CosineTau",
    "SwitchOffTau",
    "create_schedule",
]


def _tau_buffers(model: nn.Module) -> list[Tensor]:
    return [layer.tau for _, layer in binary_layers(model)]


def set_tau(model: nn.Module, tau: TauLike) -> int:
    """Write ``tau`` into the ``tau`` buffer of every ReCU layer of ``model``.

    Checks ``0.5 < tau <= 1`` once, on the host, so the layers never have to.
    Returns the number of layers updated (0 for a model without ReCU layers).
    """
    if isinstance(tau, Tensor):
        check_tau(tau.detach().cpu())
    else:
        check_tau(tau)
    buffers = _tau_buffers(model)
    with torch.no_grad():
        for buf in buffers:
            if isinstance(tau, Tensor):
                buf.copy_(tau)
            else:
                buf.fill_(float(tau))
    return len(buffers)


def get_tau(model: nn.Module) -> float | None:
    """The tau of the model's first ReCU layer, or ``None`` if it has none (host sync)."""
    buffers = _tau_buffers(model)
    return float(buffers[0]) if buffers else None


class TauSchedule:
    """Base class: ``value(epoch)`` for ``epoch`` in [0, epochs), fractional for per-step use."""

    def __init__(self, epochs: int) -> None:
        if int(epochs) < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        self.epochs = int(epochs)
        self.last_tau: float | None = None
        self.last_epoch: float | None = None

    def value(self, epoch: float) -> float:
        raise NotImplementedError

    def __call__(self, epoch: float) -> float:
        return self.value(epoch)

    def apply(self, model: nn.Module, epoch: int, step: int = 0, steps_per_epoch: int = 1) -> float:
        """Set tau for ``epoch`` (per epoch), or for step ``step`` of it when ``steps_per_epoch > 1``."""
        if steps_per_epoch < 1 or not 0 <= step < steps_per_epoch:
            raise ValueError(f"need 0 <= step < steps_per_epoch, got step={step}, steps_per_epoch={steps_per_epoch}")
        progress = epoch + step / steps_per_epoch
        tau = self.value(progress)
        set_tau(model, tau)
        self.last_tau, self.last_epoch = tau, progress
        return tau

    def _params(self) -> dict[str, Any]:
        return {"epochs": self.epochs}

    def state_dict(self) -> dict[str, Any]:
        return {"type": type(self).__name__, **self._params(), "last_tau": self.last_tau, "last_epoch": self.last_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("type") != type(self).__name__:
            raise ValueError(f"state is for {state.get('type')!r}, not {type(self).__name__}")
        for key, value in self._params().items():
            if state.get(key) != value:
                raise ValueError(f"{type(self).__name__}.{key} is {value}, the state has {state.get(key)}")
        self.last_tau, self.last_epoch = state["last_tau"], state["last_epoch"]

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({args})"


class _Ramp(TauSchedule):
    """tau_start + (tau_end - tau_start) * shape(epoch / epochs)."""

    def __init__(self, tau_start: float = 0.85, tau_end: float = 0.99, epochs: int = 600) -> None:
        super().__init__(epochs)
        check_tau(tau_start)
        check_tau(tau_end)
        self.tau_start, self.tau_end = float(tau_start), float(tau_end)

    def _shape(self, p: float) -> float:
        raise NotImplementedError

    def value(self, epoch: float) -> float:
        p = min(max(float(epoch), 0.0), float(self.epochs)) / self.epochs
        return self.tau_start + (self.tau_end - self.tau_start) * self._shape(p)

    def _params(self) -> dict[str, Any]:
        return {"tau_start": self.tau_start, "tau_end": self.tau_end, "epochs": self.epochs}


class ExponentialTau(_Ramp):
    """Paper Eq. 24: tau(e) = tau_s + (tau_e - tau_s) (exp(e / E) - 1) / (e_const - 1).

    For E = 600: tau(0) = 0.8500, tau(300) = 0.9029, tau(599) = 0.9896.
    """

    def _shape(self, p: float) -> float:
        return (math.exp(p) - 1.0) / (math.e - 1.0)


class LinearTau(_Ramp):
    """tau(e) = tau_s + (tau_e - tau_s) e / E."""

    def _shape(self, p: float) -> float:
        return p


class CosineTau(_Ramp):
    """tau(e) = tau_s + (tau_e - tau_s) (1 - cos(pi e / E)) / 2."""

    def _shape(self, p: float) -> float:
        return (1.0 - math.cos(math.pi * p)) / 2.0


class ConstantTau(TauSchedule):
    """tau(e) = tau for every epoch (tau = 1 disables ReCU)."""

    def __init__(self, tau: float = 1.0, epochs: int = 1) -> None:
        super().__init__(epochs)
        check_tau(tau)
        self.tau = float(tau)

    def value(self, epoch: float) -> float:
        return self.tau

    def _params(self) -> dict[str, Any]:
        return {"tau": self.tau, "epochs": self.epochs}


class SwitchOffTau(TauSchedule):
    """Follow ``base`` until ``fraction`` of training, then tau = 1 (clamp switched off)."""

    def __init__(self, base: TauSchedule, fraction: float = 0.5) -> None:
        super().__init__(base.epochs)
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must lie in [0, 1], got {fraction}")
        self.base, self.fraction = base, float(fraction)

    def value(self, epoch: float) -> float:
        return 1.0 if epoch >= self.fraction * self.epochs else self.base.value(epoch)

    def _params(self) -> dict[str, Any]:
        return {"base": self.base.state_dict() | {"last_tau": None, "last_epoch": None}, "fraction": self.fraction}


_SCHEDULES = {"exponential": ExponentialTau, "linear": LinearTau, "cosine": CosineTau}


def create_schedule(
    kind: str, tau_start: float = 0.85, tau_end: float = 0.99, epochs: int = 600, switch_off: float | None = None
) -> TauSchedule:
    """Build a schedule by name: ``exponential``, ``linear``, ``cosine`` or ``constant`` (tau_start).

    The arguments come in the classes' order: ``(tau_start, tau_end, epochs)`` as
    ``ExponentialTau(tau_start, tau_end, epochs)``, and ``ConstantTau(tau, epochs)``.
    ``switch_off`` wraps it in :class:`SwitchOffTau` at that fraction of training.
    """
    if isinstance(tau_start, numbers.Integral) and not isinstance(tau_start, bool) and tau_start > 1:
        # the order before issue 10 was (kind, epochs, tau_start, tau_end): say so instead of a range error
        raise ValueError(f"create_schedule takes (kind, tau_start, tau_end, epochs, switch_off); tau_start="
                         f"{tau_start} looks like a number of epochs: pass epochs={tau_start}")
    if kind == "constant":
        sched: TauSchedule = ConstantTau(tau_start, epochs)
    elif kind in _SCHEDULES:
        sched = _SCHEDULES[kind](tau_start, tau_end, epochs)
    else:
        raise ValueError(f"unknown tau schedule {kind!r}; choose one of {sorted(_SCHEDULES) + ['constant']}")
    return SwitchOffTau(sched, switch_off) if switch_off is not None else sched
