"""ReCUConv2d under torch.compile(fullgraph=True): no graph break, so no host synchronisation."""

from __future__ import annotations

import pytest
import torch

import recu
from recu import ReCUConv2d


def _run(layer, x, gy):
    layer.zero_grad()
    x = x.clone().requires_grad_(True)
    y = layer(x)
    y.backward(gy)
    return y.detach(), x.grad, layer.weight.grad.clone(), layer.alpha.grad.clone()


def _check(backend: str) -> None:
    torch._dynamo.reset()
    # float64: inductor sums mean/var in its own order; ~1e-16 shifts flip no sign or clamp decision on any CPU
    layer = ReCUConv2d(4, 8, 3, padding=1, dtype=torch.float64).train()
    recu.set_tau(layer, torch.tensor(0.8))  # a tensor tau, in the layer's 0-dim buffer
    compiled = torch.compile(layer, fullgraph=True, backend=backend, dynamic=False)
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    gy = torch.randn(2, 8, 8, 8, dtype=torch.float64)
    for tau in (0.8, 0.95, 1.0):  # a new tau must not need a new graph (it is data, not a constant)
        recu.set_tau(layer, torch.tensor(tau))
        got = _run(compiled, x, gy)
        want = _run(layer, x, gy)
        for g, w in zip(got, want):
            assert torch.allclose(g, w, rtol=1e-9, atol=1e-9)
    # the clamp was active at tau = 0.8: the gradients there differ from tau = 1
    recu.set_tau(layer, torch.tensor(0.8))
    assert not torch.allclose(_run(compiled, x, gy)[2], got[2])


def test_explain_reports_no_graph_break() -> None:
    torch._dynamo.reset()
    layer = ReCUConv2d(4, 8, 3, padding=1).train()
    recu.set_tau(layer, torch.tensor(0.85))
    explanation = torch._dynamo.explain(layer)(torch.randn(2, 4, 8, 8))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])  # inductor: about 15 s on a shared 2-core CPU
def test_compile_fullgraph_matches_eager(backend: str) -> None:
    with torch._dynamo.config.patch(error_on_recompile=True):
        _check(backend)
