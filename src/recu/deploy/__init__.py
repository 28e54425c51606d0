"""1-bit export and exact binary inference on the CPU (XNOR-popcount or Intel AMX int8 tiles).

- :mod:`recu.deploy.pack`: bit packing (sign, +1 at 0) along channels into uint64 words.
- :mod:`recu.deploy.kernels`: binary conv2d (numba: Intel AMX, AVX-512 VPOPCNTDQ or portable
  popcount; NumPy reference), exact zero padding, all paths giving the same integers.
- :mod:`recu.deploy.export`: :func:`export` a model to a safetensors + JSON file, 1 bit per binary weight.
- :mod:`recu.deploy.runtime`: :func:`load` that file into a packed CPU inference model.
- :mod:`recu.deploy.onnx_export`: :func:`export_onnx` the network as a standard-operator ONNX model.

Importing this package imports neither numba nor safetensors and compiles nothing: the numba
kernels compile (or load from numba's on-disk cache) on their first call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# Imported eagerly so that the package attribute ``export`` is the function, not the submodule.
from .export import export
from .kernels import (
    PackedConvWeights,
    binary_conv2d,
    binary_conv2d_float,
    binary_conv2d_numpy,
    resolve_kernel,
)
from .runtime import PackedConv2d, PackedLinear, PackedModel, load, read_metadata

if TYPE_CHECKING:
    import os

    import torch


def export_onnx(model: "torch.nn.Module", path: "str | os.PathLike", **options: Any) -> dict:
    """Write ``model`` as a standard-operator ONNX model; see :func:`recu.deploy.onnx_export.export_onnx`.

    A wrapper so that importing this package does not import the exporter (torch.onnx, onnx).
    """
    from .onnx_export import export_onnx as _export_onnx

    return _export_onnx(model, path, **options)


__all__ = [
    "export",
    "export_onnx",
    "load",
    "read_metadata",
    "PackedConv2d",
    "PackedLinear",
    "PackedModel",
    "PackedConvWeights",
    "binary_conv2d",
    "binary_conv2d_float",
    "binary_conv2d_numpy",
    "resolve_kernel",
]
