"""1-bit export and exact binary inference on the CPU (XNOR-popcount or Intel AMX int8 tiles).

- :mod:`recu.deploy.pack`: bit packing (sign, +1 at 0) along channels into uint64 words.
- :mod:`recu.deploy.kernels`: binary conv2d (numba: Intel AMX, AVX-512 VPOPCNTDQ or portable
  popcount; NumPy reference), exact zero padding, all paths giving the same integers.
- :mod:`recu.deploy.export`: :func:`export` a model to a safetensors + JSON file, 1 bit per binary weight.
- :mod:`recu.deploy.runtime`: :func:`load` that file into a packed CPU inference model.

Importing this package imports neither numba nor safetensors and compiles nothing: the numba
kernels compile (or load from numba's on-disk cache) on their first call.
"""

from __future__ import annotations

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

__all__ = [
    "export",
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
