"""1-bit export and exact binary inference on the CPU (XNOR-popcount or Intel AMX int8 tiles).

Two sub-packages, dependencies pointing one way:

- :mod:`recu.deploy.runtime` (numpy, numba, safetensors; no PyTorch): read and check a deployment file
  (:func:`read_metadata`, :func:`read_tensors`, :class:`DeployFileError`), run it as one compiled call
  (the ``plan`` engine) or with the NumPy reference, and the kernels (:mod:`recu.deploy.runtime.kernels`:
  :func:`binary_conv2d`, :func:`binary_conv2d_numpy`, :func:`resolve_kernel`, ...).
- :mod:`recu.deploy.exporter` (PyTorch): :func:`export` a model to that file, :func:`export_onnx`, and the
  per-layer PyTorch engine (:class:`PackedModel`, the ``layers`` engine).

:func:`load` (:mod:`recu.deploy.loader`) sits above both: it opens a file with the engine it asks for.

Importing this package imports neither PyTorch, numba nor safetensors and compiles nothing: every
name is imported from its submodule on first use (PEP 562), and the numba kernels compile (or load
from numba's on-disk cache) on their first call. ``load``, ``read_metadata``, ``read_tensors`` and
the kernels run without PyTorch (``pip install recu-bnn[runtime]``); ``export``, the ``Packed*``
modules and ``export_onnx`` need it.
"""

from __future__ import annotations

from .._lazy import attach

__all__ = [
    "export",
    "export_onnx",
    "load",
    "read_metadata",
    "read_tensors",
    "DeployFileError",
    "CompiledModel",
    "PackedConv2d",
    "PackedLinear",
    "PackedModel",
    "PackedConvWeights",
    "binary_conv2d",
    "binary_conv2d_float",
    "binary_conv2d_numpy",
    "resolve_kernel",
]

# Where each name lives; imported from there on first access.
_NAMES = {
    "export": ".exporter.export",
    "export_onnx": ".exporter.onnx_export",
    "load": ".loader",
    **dict.fromkeys(("read_metadata", "read_tensors"), ".runtime.fileio"),
    "DeployFileError": ".runtime.validate",
    "CompiledModel": ".runtime.plan",
    **dict.fromkeys(("PackedConv2d", "PackedLinear", "PackedModel"), ".exporter.layers"),
    "PackedConvWeights": ".runtime.kernels.weights",
    **dict.fromkeys(("binary_conv2d", "binary_conv2d_float"), ".runtime.kernels.conv"),
    "binary_conv2d_numpy": ".runtime.kernels.reference",
    "resolve_kernel": ".runtime.kernels.cpu",
}

__getattr__, __dir__ = attach(__name__, _NAMES)
