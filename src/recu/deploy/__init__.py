"""1-bit export and exact binary inference on the CPU (XNOR-popcount or Intel AMX int8 tiles).

- :mod:`recu.deploy.pack`: bit packing (sign, +1 at 0) along channels into uint64 words.
- :mod:`recu.deploy.kernels`: binary conv2d (numba: Intel AMX, AVX-512 VPOPCNTDQ or portable
  popcount; NumPy reference), exact zero padding, all paths giving the same integers.
- :mod:`recu.deploy.export`: :func:`export` a model to a safetensors + JSON file, 1 bit per binary weight.
- :mod:`recu.deploy.loader`: :func:`load` that file for inference (torch-free entry point; the
  PyTorch per-layer model :class:`PackedModel` lives in :mod:`recu.deploy.runtime`).
- :mod:`recu.deploy.fileio`: :func:`read_metadata` and :func:`read_tensors` of a file (torch-free).
- :mod:`recu.deploy.validate`: the checks every loader runs on a file first; :class:`DeployFileError`.
- :mod:`recu.deploy.onnx_export`: :func:`export_onnx` the network as a standard-operator ONNX model.

Importing this package imports neither PyTorch, numba nor safetensors and compiles nothing: every
name is imported from its submodule on first use (PEP 562), and the numba kernels compile (or load
from numba's on-disk cache) on their first call. ``load``, ``read_metadata``, ``read_tensors`` and
the kernels run without PyTorch (``pip install recu-bnn[runtime]``); ``export``, the ``Packed*``
modules and ``export_onnx`` need it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._lazy import attach

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
    "read_tensors",
    "DeployFileError",
    "PackedConv2d",
    "PackedLinear",
    "PackedModel",
    "PackedConvWeights",
    "binary_conv2d",
    "binary_conv2d_float",
    "binary_conv2d_numpy",
    "resolve_kernel",
]

# Where each name lives; imported from there on first access. ``export`` is the function, not the
# submodule, however and whenever ``recu.deploy.export`` gets imported (recu._lazy keeps it so).
_NAMES = {
    "export": ".export",
    "load": ".loader",
    **dict.fromkeys(("read_metadata", "read_tensors"), ".fileio"),
    "DeployFileError": ".validate",
    **dict.fromkeys(("PackedConv2d", "PackedLinear", "PackedModel"), ".runtime"),
    **dict.fromkeys(("PackedConvWeights", "binary_conv2d", "binary_conv2d_float", "binary_conv2d_numpy",
                     "resolve_kernel"), ".kernels"),
}

__getattr__, __dir__ = attach(__name__, _NAMES)
