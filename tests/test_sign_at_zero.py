"""The sign at exactly 0: +1 (the paper's Eq. 2, recu's default) or 0 (torch.sign, the authors' code)."""

from __future__ import annotations

import pytest
import torch

from recu import BinaryConfig, ReCUConv2d, ReCULinear
from recu import functional as RF

X = torch.tensor([-2.0, -0.5, -0.0, 0.0, 0.25, 3.0])


def test_sign_values_at_zero() -> None:
    assert RF.sign(X).tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0, 1.0]  # -0.0 >= 0 as well
    assert RF.sign(X, "zero").tolist() == [-1.0, -1.0, 0.0, 0.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="at_zero"):
        RF.sign(X, "one")  # type: ignore[arg-type]


@pytest.mark.parametrize("fn,grad", [
    (RF.sign_ste, [1.0] * 6),
    (RF.approx_sign, [0.0, 1.0, 2.0, 2.0, 1.5, 0.0]),  # max(0, 2 - 2|x|)
    (RF.sign_clipped_ste, [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]),
])
def test_estimators_keep_their_gradient_with_either_sign(fn, grad) -> None:
    for at_zero, forward in [("plus_one", [-1.0, -1.0, 1.0, 1.0, 1.0, 1.0]),
                             ("zero", [-1.0, -1.0, 0.0, 0.0, 1.0, 1.0])]:
        x = X.clone().requires_grad_(True)
        y = fn(x, at_zero)
        y.sum().backward()
        assert y.tolist() == forward and x.grad.tolist() == grad, (fn.__name__, at_zero)
    with pytest.raises(ValueError, match="at_zero"):
        fn(X, "0")


def test_config_field() -> None:
    assert BinaryConfig().sign_at_zero == "plus_one"
    with pytest.raises(ValueError, match="sign_at_zero"):
        BinaryConfig(sign_at_zero="torch")  # type: ignore[arg-type]


@pytest.mark.parametrize("act_grad", ["approx_sign", "clipped", "identity"])
def test_layers_binarise_weights_and_activations_with_the_configured_sign(act_grad: str) -> None:
    torch.manual_seed(0)
    conv = ReCUConv2d(3, 4, 3, padding=1, config=BinaryConfig(sign_at_zero="zero", act_grad=act_grad))
    x = torch.randn(2, 3, 5, 5)
    x[:, 1] = 0.0
    for training in (True, False):
        conv.train(training)
        assert torch.equal(conv.binary_input(x), torch.sign(x))
    with torch.no_grad():
        conv.weight.zero_()  # a zero filter stays zero after centring
        conv.weight[0, 0, 0, 0] = 1.0
    w2 = conv.clamped_weight()
    assert torch.equal(conv.binary_weight(w2), torch.sign(w2)) and (w2 == 0).any()
    linear = ReCULinear(4, 2, config=BinaryConfig(sign_at_zero="zero", act_grad=act_grad)).eval()
    z = torch.tensor([[0.0, 1.0, -1.0, 0.0]])
    expected = torch.nn.functional.linear(torch.sign(z), linear.binary_weight()) * linear.alpha
    torch.testing.assert_close(linear(z), expected)
