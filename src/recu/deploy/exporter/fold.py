"""Which binary convolutions feed a BatchNorm directly, so the BN can be folded into them.

A fold is exact only when the convolution's output goes to the BatchNorm and nowhere else, and
the BatchNorm is called exactly once, on that output. ``torch.fx`` finds such pairs in the
traced graph; when tracing fails (data-dependent control flow, unsupported ops), nothing is
folded, which is still exact, only a little slower.
"""

from __future__ import annotations

import warnings
from collections import Counter

from torch import nn

from ...nn import BinaryLayer

__all__ = ["find_conv_bn_pairs", "bn_foldable"]


def bn_foldable(bn: nn.Module) -> bool:
    """An eval-mode BatchNorm2d with running statistics (so it is a fixed per-channel affine)."""
    return (
        isinstance(bn, nn.BatchNorm2d)
        and bn.track_running_stats
        and bn.running_mean is not None
        and bn.running_var is not None
    )


def _tracer(leaves: tuple[type, ...]):  # type: ignore[no-untyped-def]
    """An fx tracer that keeps the ReCU layers and ``leaves`` as leaves (their forward is not traceable)."""
    import torch.fx

    class Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return isinstance(m, (BinaryLayer,) + leaves) or super().is_leaf_module(m, qualname)

    return Tracer()


def find_conv_bn_pairs(model: nn.Module, candidates: set[str], leaves: tuple[type, ...] = (),
                       warn: bool = True) -> dict[str, str]:
    """``{conv_name: bn_name}`` for the layers in ``candidates`` whose sole consumer is a foldable BN.

    ``leaves``: more module types fx must not trace into. Returns ``{}`` (and warns, if ``warn``)
    when ``model`` cannot be traced with ``torch.fx``.
    """
    if not candidates:
        return {}
    try:
        graph = _tracer(leaves).trace(model)
    except Exception as e:  # noqa: BLE001 - any tracing failure means: do not fold
        if warn:
            warnings.warn(f"recu.deploy: torch.fx could not trace the model ({type(e).__name__}: {e}); "
                          "BatchNorm layers are not folded (results stay exact)", RuntimeWarning, stacklevel=3)
        return {}
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    modules = dict(model.named_modules())
    pairs: dict[str, str] = {}
    for node in graph.nodes:
        if node.op != "call_module" or node.target not in candidates or calls[node.target] != 1:
            continue
        users = list(node.users)
        if len(users) != 1:
            continue
        user = users[0]
        if user.op != "call_module" or calls[user.target] != 1 or len(user.all_input_nodes) != 1:
            continue
        if bn_foldable(modules.get(str(user.target))):  # type: ignore[arg-type]
            pairs[str(node.target)] = str(user.target)
    return pairs
