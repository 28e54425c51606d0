"""A PyTorch model whose full-precision convolutions sum in the compiled plan's order, on every CPU.

PyTorch's CPU convolution (oneDNN) chooses its summation order per CPU and shape, so its float32
results can differ from the plan's fixed fma chain in the last bits (on an AMD EPYC, a 1x1 conv of
256 channels does). Where such a value then meets a sign (a binary activation) next to 0, the two
models take different branches. :func:`fixed_order_float_convs` gives the model whose float convs
compute the plan's bits (:func:`recu.deploy.fma_numpy.conv2d_fma_chain`): the reference a test or a
user compares the plan with to expect the same signs on any CPU. It is slow (NumPy, one pass per
kernel tap and input channel): a reference, not an engine. Needs PyTorch.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from ...nn import BinaryLayer
from ..runtime.fma_numpy import conv2d_fma_chain

__all__ = ["FmaChainConv2d", "fixed_order_float_convs"]


class FmaChainConv2d(nn.Module):
    """``conv`` (a float ``nn.Conv2d``: groups 1, dilation 1, zero padding) summed as the plan sums it.

    The NumPy chain is slow. oneDNN's order is fixed for a given CPU, input shape, memory format and
    thread count, so for each such key the first call computes both and, where PyTorch's result is the
    chain bit for bit, later calls with that key take PyTorch's convolution (``checked`` records each
    key's verdict).
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if conv.groups != 1 or tuple(conv.dilation) != (1, 1) or conv.padding_mode != "zeros" \
                or isinstance(conv.padding, str):
            raise ValueError(f"FmaChainConv2d takes groups=1, dilation=1, numeric zero padding; got {conv}")
        self.conv = conv
        self.checked: dict[tuple, bool] = {}

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype != torch.float32:
            raise ValueError(f"FmaChainConv2d computes float32, got {x.dtype}")
        key = (tuple(x.shape), x.is_contiguous(memory_format=torch.channels_last), torch.get_num_threads())
        if self.checked.get(key):
            return self.conv(x)
        y = self._chain(x)
        if key not in self.checked:
            self.checked[key] = torch.equal(self.conv(x).contiguous(), y)
        return y

    def _chain(self, x: Tensor) -> Tensor:
        conv = self.conv
        nhwc = x.detach().permute(0, 2, 3, 1).contiguous().numpy()
        out = conv2d_fma_chain(nhwc, conv.weight.detach().numpy(), tuple(conv.stride), tuple(conv.padding))
        y = torch.from_numpy(out).permute(0, 3, 1, 2)
        if conv.bias is not None:
            y = y + conv.bias.detach().reshape(1, -1, 1, 1)  # float32, after the chain, as the plan
        return y.contiguous()


def fixed_order_float_convs(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) whose full-precision ``nn.Conv2d`` layers are :class:`FmaChainConv2d`.

    Binary layers, BatchNorms and the rest stay PyTorch's; their float32 steps do not depend on the
    CPU (exact +-1 sums, elementwise ops, pools). ``model`` itself is not changed.
    """
    twin = copy.deepcopy(model).eval()
    for module in list(twin.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Conv2d) and not isinstance(child, BinaryLayer):
                setattr(module, child_name, FmaChainConv2d(child))
    return twin
