"""The exporter: a trained PyTorch model to a 1-bit deployment file (or ONNX); needs PyTorch.

- :mod:`.export`: :func:`export` a model to a safetensors + JSON file, 1 bit per binary weight.
- :mod:`.graph`: the network traced (torch.fx) into the file's graph of simple ops; :mod:`.fold`: which
  BatchNorms fold into the binary conv before them; :mod:`.packable`: which layers pack, their padding
  and float32 epilogue.
- :mod:`.onnx_export`: :func:`export_onnx`, the network as a standard-operator ONNX model.
- :mod:`.layers`: the per-layer PyTorch engine (:class:`PackedModel`, :func:`load_layers`): the model
  with each binary layer replaced by a packed one, the bit-identical reference of the runtime.
- :mod:`.fixed_order`: the PyTorch model with its float convs summed in the plan's order (for tests that
  compare on every CPU).

It builds on :mod:`recu.deploy.runtime` (the file format, the kernels); the runtime never imports it.
Importing this package imports nothing; the names below are imported from their module on first use.
"""

from __future__ import annotations

from ..._lazy import attach

_NAMES = {
    "export": ".export",
    "export_onnx": ".onnx_export",
    "extract_graph": ".graph",
    **dict.fromkeys(("PackedConv2d", "PackedLinear", "PackedModel", "load_layers", "build_model"), ".layers"),
    "fixed_order_float_convs": ".fixed_order",
}
__all__ = list(_NAMES)

__getattr__, __dir__ = attach(__name__, _NAMES)
