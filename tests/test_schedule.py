"""tau schedules at hand-computed points, set_tau / get_tau, state round-trips, create_schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import recu
from recu import (ConstantTau, CosineTau, ExponentialTau, LinearTau, ReCUConv1d, ReCUConv2d, ReCULinear,
                  SwitchOffTau, create_schedule, get_tau, set_tau)


def test_exponential_paper_values() -> None:
    s = ExponentialTau(0.85, 0.99, 600)
    assert round(s(0), 4) == 0.8500
    assert round(s(300), 4) == 0.9029
    assert round(s(599), 4) == 0.9896
    # the formula itself, at e = 150
    assert s(150) == pytest.approx(0.85 + 0.14 * (math.exp(0.25) - 1) / (math.e - 1), rel=1e-12)
    assert s(600) == pytest.approx(0.99)  # the end point (only reached after training)
    assert ExponentialTau().value(300) == s(300)  # defaults 0.85 / 0.99 / 600


def test_linear_cosine_constant_values() -> None:
    lin = LinearTau(0.8, 1.0, 100)
    assert lin(0) == pytest.approx(0.8)
    assert lin(25) == pytest.approx(0.85)
    assert lin(50) == pytest.approx(0.9)
    assert lin(99) == pytest.approx(0.998)
    cos = CosineTau(0.8, 1.0, 100)
    assert cos(0) == pytest.approx(0.8)
    assert cos(50) == pytest.approx(0.9)
    assert cos(25) == pytest.approx(0.8 + 0.2 * (1 - math.sqrt(0.5)) / 2)  # 0.82929
    assert cos(25) == pytest.approx(0.829289, abs=1e-6)
    assert cos(75) == pytest.approx(0.970711, abs=1e-6)
    const = ConstantTau(0.9, 10)
    assert [const(e) for e in (0, 5, 9)] == [0.9, 0.9, 0.9]
    assert ConstantTau()(3) == 1.0


def test_switch_off_values() -> None:
    s = SwitchOffTau(LinearTau(0.8, 1.0, 100), 0.5)
    assert s(0) == pytest.approx(0.8)
    assert s(49) == pytest.approx(0.898)
    assert s(49.99) == pytest.approx(0.8 + 0.2 * 0.4999)
    assert s(50) == 1.0 and s(99) == 1.0
    assert SwitchOffTau(ExponentialTau(epochs=10), 0.0)(0) == 1.0
    assert SwitchOffTau(ExponentialTau(epochs=10), 1.0)(9) == ExponentialTau(epochs=10)(9)
    for bad in (-0.1, 1.5, math.nan):
        with pytest.raises(ValueError, match="fraction"):
            SwitchOffTau(ExponentialTau(epochs=10), bad)


def test_schedules_reject_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"\(0\.5, 1\]"):
        ExponentialTau(0.5, 0.99, 10)
    with pytest.raises(ValueError, match=r"\(0\.5, 1\]"):
        LinearTau(0.85, 1.01, 10)
    with pytest.raises(ValueError, match=r"\(0\.5, 1\]"):
        ConstantTau(0.2)
    with pytest.raises(ValueError, match="epochs"):
        CosineTau(0.85, 0.99, 0)


def _model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.Sequential(ReCUConv2d(4, 4, 3), nn.ReLU(), nn.Sequential(ReCUConv1d(4, 4, 1))),
        nn.ModuleDict({"head": ReCULinear(4, 2)}),
    )


def _taus(model: nn.Module) -> list[float]:
    return [float(m.tau) for _, m in recu.binary_layers(model)]


@pytest.mark.parametrize("steps", [1, 7])
def test_apply_per_epoch_and_per_step(steps: int) -> None:
    model = _model()
    s = ExponentialTau(0.85, 0.99, 20)
    prev = None
    for epoch in range(20):
        lo, hi = s(epoch), s(epoch + 1)
        for step in range(steps):
            tau = s.apply(model, epoch, step, steps)
            assert lo <= tau < hi
            if step == 0:
                assert tau == lo
            else:
                assert tau == pytest.approx(s(epoch + step / steps))
            assert prev is None or tau > prev
            prev = tau
            assert _taus(model) == pytest.approx([tau] * 3, rel=1e-6)
            assert s.last_tau == tau and s.last_epoch == pytest.approx(epoch + step / steps)
    with pytest.raises(ValueError, match="step"):
        s.apply(model, 0, steps, steps)
    with pytest.raises(ValueError, match="step"):
        s.apply(model, 0, 0, 0)


def test_set_tau_reaches_nested_layers_and_validates() -> None:
    model = _model()
    assert get_tau(model) == pytest.approx(0.85)  # the layers' default tau (the schedule's start)
    assert set_tau(model, 0.9) == 3
    assert _taus(model) == pytest.approx([0.9] * 3)
    assert set_tau(model, torch.tensor(0.95, dtype=torch.float64)) == 3
    assert _taus(model) == pytest.approx([0.95] * 3)
    assert get_tau(model) == pytest.approx(0.95)
    for m in model.modules():
        if isinstance(m, recu.nn.BinaryLayer):
            assert m.tau.dim() == 0 and m.tau.dtype == torch.float32
    for bad in (0.5, 1.2, math.nan, torch.tensor(0.4), torch.tensor([0.9])):
        with pytest.raises(ValueError, match=r"\(0\.5, 1\]"):
            set_tau(model, bad)
    assert _taus(model) == pytest.approx([0.95] * 3)  # unchanged after a rejected value
    plain = nn.Linear(2, 2)
    assert set_tau(plain, 0.9) == 0 and get_tau(plain) is None


@pytest.mark.parametrize(
    "sched",
    [ExponentialTau(0.85, 0.99, 30), LinearTau(0.8, 0.95, 30), CosineTau(0.9, 1.0, 30), ConstantTau(0.9, 30),
     SwitchOffTau(ExponentialTau(0.85, 0.99, 30), 0.75)],
    ids=lambda s: type(s).__name__,
)
def test_state_dict_round_trip(sched) -> None:
    sched.apply(_model(), 12, 3, 4)
    state = sched.state_dict()
    assert state["type"] == type(sched).__name__
    assert state["last_tau"] == sched(12.75) and state["last_epoch"] == 12.75
    # rebuild from the constructor arguments
    fresh: recu.TauSchedule
    if isinstance(sched, SwitchOffTau):
        fresh = SwitchOffTau(ExponentialTau(0.85, 0.99, 30), 0.75)
    elif isinstance(sched, ConstantTau):
        fresh = ConstantTau(0.9, 30)
    else:
        fresh = type(sched)(sched.tau_start, sched.tau_end, 30)
    fresh.load_state_dict(state)
    assert fresh.last_tau == sched.last_tau and fresh.last_epoch == sched.last_epoch
    assert fresh.state_dict() == state
    assert fresh(17) == sched(17)


def test_load_state_dict_rejects_mismatch() -> None:
    state = ExponentialTau(0.85, 0.99, 30).state_dict()
    with pytest.raises(ValueError, match="LinearTau"):
        LinearTau(0.85, 0.99, 30).load_state_dict(state)
    with pytest.raises(ValueError, match="epochs"):
        ExponentialTau(0.85, 0.99, 40).load_state_dict(state)
    sw = SwitchOffTau(ExponentialTau(0.85, 0.99, 30), 0.5).state_dict()
    with pytest.raises(ValueError, match="base"):
        SwitchOffTau(ExponentialTau(0.8, 0.99, 30), 0.5).load_state_dict(sw)
    with pytest.raises(ValueError, match="fraction"):
        SwitchOffTau(ExponentialTau(0.85, 0.99, 30), 0.6).load_state_dict(sw)


def test_create_schedule() -> None:
    assert isinstance(create_schedule("exponential", epochs=10), ExponentialTau)
    assert isinstance(create_schedule("linear", epochs=10), LinearTau)
    assert isinstance(create_schedule("cosine", epochs=10), CosineTau)
    c = create_schedule("constant", tau_start=0.93, epochs=10)
    assert isinstance(c, ConstantTau) and c(5) == 0.93
    # the classes' order: (tau_start, tau_end, epochs), positionally too
    e = create_schedule("exponential", 0.85, 0.99, 600)
    assert round(e(300), 4) == 0.9029 and e.state_dict() == ExponentialTau(0.85, 0.99, 600).state_dict()
    s = create_schedule("linear", 0.8, 1.0, 100, switch_off=0.85)
    assert isinstance(s, SwitchOffTau) and s(84) == pytest.approx(0.968) and s(85) == 1.0
    assert create_schedule("linear", 0.8, 1.0, 100).state_dict() == LinearTau(0.8, 1.0, 100).state_dict()
    with pytest.raises(ValueError, match="unknown tau schedule 'step'.*constant"):
        create_schedule("step", epochs=10)
    # the order before issue 10, (kind, epochs, tau_start, tau_end), is refused with a pointer
    with pytest.raises(ValueError, match=r"tau_start=600 looks like a number of epochs: pass epochs=600"):
        create_schedule("exponential", 600, 0.85, 0.99)


def test_schedule_classes_and_factory_take_one_argument_order() -> None:
    import inspect

    order = ["tau_start", "tau_end", "epochs"]
    for cls in (ExponentialTau, LinearTau, CosineTau):
        assert list(inspect.signature(cls).parameters) == order
    assert list(inspect.signature(ConstantTau).parameters) == ["tau", "epochs"]
    assert list(inspect.signature(create_schedule).parameters)[1:4] == order
