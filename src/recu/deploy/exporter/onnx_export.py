"""Export a binary network to a standard-operator ONNX model (:func:`export_onnx`).

The graph holds no custom operator: each ReCU layer becomes the eval forward it computes, written
with standard ONNX operators,

    Where(GreaterOrEqual(x, 0), 1, -1)        sign of the activations, +1 at 0 (Sign where the
                                              layer uses sign_at_zero="zero")
    Conv / Gemm with a constant +-1 weight    sign(ReCU(W)), the layer's own binarised weights
    Mul(alpha), Add(bias)                     the layer's output scale and bias, when it has them

and everything else (stem, BatchNorm, hardtanh, pooling, shortcuts, classifier) is exported as
PyTorch exports it. The Conv pads the binarised input with 0, as the PyTorch layer does. The graph
is built by ``torch.onnx.export`` (its ``torch.export``-based "dynamo" exporter, which needs the
``onnx`` and ``onnxscript`` packages) from a twin of the model in which each ReCU layer is replaced
by a :class:`OnnxBinaryLayer` holding those constants. ``onnx`` is imported only when exporting.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...nn import BinaryLayer, ReCUConv1d, ReCUConv2d, ReCULinear
from .packable import unwrap

__all__ = ["DEFAULT_OPSET", "MIN_OPSET", "INPUT_NAME", "OUTPUT_NAME", "ORT_WEIGHT_FOLDING", "where_sign",
           "OnnxBinaryLayer", "onnx_twin", "default_input_shape", "export_onnx", "onnxruntime_session"]

# Opset 18 (ONNX 1.13, December 2022) is what torch.onnx's exporter writes natively. Asked for 17, it
# runs a down-conversion that fails on the ReduceMean of global average pooling (its axes became an
# input in 18) and leaves the model at 18, so 18 is the lowest opset this export can honour; higher
# ones are converted up and checked.
DEFAULT_OPSET = 18
MIN_OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "logits"

# The layer classes whose eval forward OnnxBinaryLayer reproduces; subclasses may change it.
_TWINNABLE = (ReCUConv2d, ReCUConv1d, ReCULinear)

_INSTALL_HINT = "ONNX export needs onnx, onnxscript (and onnxruntime to run it): pip install 'recu-bnn[onnx]'"


def where_sign(x: Tensor) -> Tensor:
    """+1 where ``x >= 0`` (so at 0 and -0), else -1: ``Where(GreaterOrEqual(x, 0), 1, -1)`` in ONNX.

    Equal to :func:`recu.functional.sign` for every number; written out here so that the graph holds
    the plain compare-and-select binarisation that converters recognise, whatever form the training
    code's sign takes. NaN gives -1 (a NaN activation is a broken model in any case).
    """
    one = torch.ones((), dtype=x.dtype, device=x.device)
    return torch.where(x >= 0, one, -one)


class OnnxBinaryLayer(nn.Module):
    """The eval forward of one ReCU layer with its weights frozen into constants, in exportable ops.

    ``y = op(binarize(x), Wb) * scale + bias``: ``Wb`` is the layer's own ``binary_weight()`` (+-1,
    or the clamped real weights when the config keeps weights real), ``scale`` its ``output_scale``
    (alpha), ``binarize`` the layer's activation sign (identity when activations stay real; the
    activation normalisation is training-only). A ``compute_dtype="bfloat16"`` layer rounds the
    float32 result of the +-1 operands to bfloat16, as PyTorch's bf16 convolution does.
    """

    weight: Tensor
    scale: Optional[Tensor]
    bias: Optional[Tensor]

    @torch.no_grad()
    def __init__(self, layer: BinaryLayer) -> None:
        super().__init__()
        if type(layer) not in _TWINNABLE:
            raise ValueError(f"cannot export {type(layer).__name__} to ONNX: only ReCUConv2d, ReCUConv1d and "
                             "ReCULinear are supported (a subclass may compute something else)")
        cfg = layer.config
        w2 = layer.clamped_weight()
        self.register_buffer("weight", layer.binary_weight(w2).detach().clone())
        scale = layer.output_scale(w2)
        self.register_buffer("scale", None if scale is None else scale.detach().clone())
        bias = layer.bias
        self.register_buffer("bias", None if bias is None else bias.detach().reshape(layer._alpha_shape()).clone())
        self.binary_activations = cfg.binary_activations
        self.sign_at_zero = cfg.sign_at_zero
        self.round_bfloat16 = cfg.compute_dtype == "bfloat16" and cfg.fully_binary
        self.kind = {ReCUConv2d: "conv2d", ReCUConv1d: "conv1d", ReCULinear: "linear"}[type(layer)]
        if self.kind != "linear":
            self.stride, self.padding = layer.stride, layer.padding
            self.dilation, self.groups = layer.dilation, layer.groups

    def forward(self, x: Tensor) -> Tensor:
        if self.binary_activations:
            x = torch.sign(x) if self.sign_at_zero == "zero" else where_sign(x)
        if self.kind == "linear":
            y = F.linear(x, self.weight)
        elif self.kind == "conv2d":
            y = F.conv2d(x, self.weight, None, self.stride, self.padding, self.dilation, self.groups)
        else:
            y = F.conv1d(x, self.weight, None, self.stride, self.padding, self.dilation, self.groups)
        if self.round_bfloat16:
            y = y.to(torch.bfloat16).to(x.dtype)
        if self.scale is not None:
            y = y * self.scale
        if self.bias is not None:
            y = y + self.bias
        return y

    def extra_repr(self) -> str:
        return (f"{self.kind}, weight={tuple(self.weight.shape)}, binary_activations={self.binary_activations}, "
                f"sign_at_zero={self.sign_at_zero!r}")


# onnxruntime graph optimisations that fold the Mul (alpha), BatchNormalization and Add after a Conv into
# its weights: the +-1 weights become reals, the exact integer sums become rounded float sums, and the
# pre-activations move by ~1e-5, enough to flip signs next to 0 (docs/deploy.md, "ONNX export").
ORT_WEIGHT_FOLDING = ("ConvMulFusion", "ConvBNFusion", "ConvAddFusion")


def onnxruntime_session(path: Union[str, os.PathLike], *, num_threads: Optional[int] = None,
                        fold_into_weights: bool = False) -> Any:
    """An ``onnxruntime.InferenceSession`` (CPU) for an exported model that keeps the binary layers exact.

    Every onnxruntime optimisation stays on except :data:`ORT_WEIGHT_FOLDING` (unless
    ``fold_into_weights``), so each binary convolution still sums +-1 products exactly and the
    outputs track the PyTorch model's. ``num_threads``: intra-op threads (onnxruntime's default
    when None).
    """
    try:
        import onnxruntime as ort
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(f"{_INSTALL_HINT} ({e})") from None
    if num_threads is not None and (isinstance(num_threads, bool) or not isinstance(num_threads, int)
                                    or num_threads < 1):
        raise ValueError(f"num_threads must be a positive int or None, got {num_threads!r}")
    opts = ort.SessionOptions()
    if num_threads is not None:
        opts.intra_op_num_threads = num_threads
        opts.inter_op_num_threads = 1
    disabled = [] if fold_into_weights else list(ORT_WEIGHT_FOLDING)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)


def _check_float32(model: nn.Module) -> None:
    """Refuse a model with non-float32 tensors: the exported graph computes in float32."""
    for kind, named in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, t in named:
            if t.is_floating_point() and t.dtype != torch.float32:
                raise ValueError(f"ONNX export writes a float32 graph, but {kind} {name!r} is {t.dtype}; "
                                 "convert the model with model.float() first")


def onnx_twin(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every ReCU layer replaced by its :class:`OnnxBinaryLayer`.

    ``model`` itself is not modified. Its outputs equal the model's eval outputs (the same float32
    operations, layer by layer).
    """
    model = unwrap(model)
    _check_float32(model)
    twin = copy.deepcopy(model).eval()  # eval: the weights, scales and BatchNorms of the eval forward
    replacements = {name: OnnxBinaryLayer(m) for name, m in twin.named_modules() if isinstance(m, BinaryLayer)}
    for name, layer in replacements.items():
        if not name:  # the model is itself a single ReCU layer
            return layer.eval()
        parent_name, _, child = name.rpartition(".")
        setattr(twin.get_submodule(parent_name), child, layer)
    return twin


def _is_imagenet_name(name: str) -> bool:
    return "imagenet" in name or name.startswith("reactnet") or "torchvision" in name


def default_input_shape(model: nn.Module) -> tuple[int, ...]:
    """One sample's shape for a registry model: (C, 224, 224) for the ImageNet models, else (C, 32, 32).

    C is the spec's ``in_channels`` (3 when not given). A model without ``recu_spec`` has no default.
    """
    spec = getattr(unwrap(model), "recu_spec", None)
    if not isinstance(spec, dict) or "name" not in spec:
        raise ValueError("the model has no recu_spec to take an input shape from; pass input_shape, e.g. (3, 32, 32)")
    channels = int((spec.get("kwargs") or {}).get("in_channels", 3))
    size = 224 if _is_imagenet_name(str(spec["name"])) else 32
    return (channels, size, size)


def _check_input_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    message = "input_shape must be one sample's shape without the batch dim, positive ints, e.g. (3, 32, 32)"
    try:
        shape = tuple(input_shape)
    except TypeError:
        raise ValueError(f"{message}; got {input_shape!r}") from None
    if not shape or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
        raise ValueError(f"{message}; got {input_shape!r}")
    return shape


def _check_opset(opset: int) -> int:
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise ValueError(f"opset must be an int from {MIN_OPSET} to {newest} (the installed onnx's newest), "
                         f"got {opset!r}")
    return opset


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def _tidy(model: Any) -> None:
    """Fold constants and drop dead nodes of an ``onnx_ir`` model, in place, and nothing more.

    Not the exporter's own ``optimize=True``: that also rewrites algebra, e.g. folds a BatchNorm into
    the convolution before it, which changes float rounding; in a binary network a rounding
    difference next to 0 flips a sign that every later layer re-binarises (see docs/deploy.md).
    """
    from onnxscript import ir, optimizer

    optimizer.fold_constants(model)
    common = ir.passes.common
    ir.passes.Sequential(
        common.RemoveUnusedNodesPass(),
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common.DeduplicateInitializersPass(),
        common.CommonSubexpressionEliminationPass(),
        common.RemoveUnusedNodesPass(),
    )(model)


def _run_exporter(twin: nn.Module, sample: Tensor, opset: int, dynamic_batch: bool) -> Any:
    """The ``onnx.ModelProto`` of ``twin`` from torch.onnx's dynamo exporter (``torch.export`` based)."""
    import logging
    import warnings

    dynamic_shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    # The exporter logs its progress and warns about torch internals; neither concerns the caller.
    onnx_logger = logging.getLogger("torch.onnx")
    level = onnx_logger.level
    onnx_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                twin, (sample,), None, dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME], dynamic_shapes=dynamic_shapes, optimize=False, verbose=False,
                external_data=False,
            )
            _tidy(program.model)
    except Exception as e:  # noqa: BLE001 - whatever the exporter trips on, the caller gets one line
        raise ValueError(f"torch.onnx.export could not express the model: {_first_line(e)}") from None
    finally:
        onnx_logger.setLevel(level)
    proto = program.model_proto
    written = {entry.domain: entry.version for entry in proto.opset_import}.get("", None)
    if written != opset:  # the exporter falls back to its own opset when a conversion fails
        raise ValueError(f"torch.onnx.export could not write opset {opset} for this model (it wrote {written}); "
                         f"use opset={DEFAULT_OPSET}")
    return proto


@torch.no_grad()
def export_onnx(
    model: nn.Module,
    path: Union[str, os.PathLike],
    *,
    input_shape: Optional[Sequence[int]] = None,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
) -> dict:
    """Write ``model``'s eval forward as a standard-operator ONNX model at ``path``; return a summary.

    Args:
        model: any float32 model; its ReCU layers become sign / +-1 constant weight / scale
            subgraphs (:class:`OnnxBinaryLayer`), the rest is exported as PyTorch exports it. The
            model is not modified.
        path: output file (``*.onnx``), weights included (no external data file).
        input_shape: one sample's shape without the batch dim; default :func:`default_input_shape`.
        opset: the ai.onnx opset to write (default and lowest 18, see ``DEFAULT_OPSET``).
        dynamic_batch: the graph's batch dim is symbolic (``"batch"``), so any batch size runs.

    Returns:
        ``{"path", "opset", "input_shape", "binary_layers", "nodes", "op_types"}``: the file, the
        opset, the sample shape, how many ReCU layers were written as binary subgraphs, the graph's
        node count and ``{op_type: count}``.

    Raises:
        ValueError: what the graph cannot express, one line naming it: an unknown ReCU layer class,
            non-float32 tensors, a model the exporter cannot trace at ``input_shape``.
        ModuleNotFoundError: ``onnx`` or ``onnxscript`` is not installed.
    """
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it; fail here with a clear hint)
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(f"{_INSTALL_HINT} ({e})") from None

    opset = _check_opset(opset)
    shape = _check_input_shape(default_input_shape(model) if input_shape is None else input_shape)
    twin = onnx_twin(model)
    # Batch 2, not 1: torch.export treats a size-1 dim as a constant and would not keep it symbolic.
    sample = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    try:
        out = twin(sample)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"the model does not run on input of shape (N, {', '.join(map(str, shape))}); pass the "
                         f"right input_shape ({_first_line(e)})") from None
    if not isinstance(out, Tensor):
        raise ValueError(f"ONNX export needs a model that returns one tensor, got {type(out).__name__}")

    proto = _run_exporter(twin, sample, opset, dynamic_batch)
    n_binary = sum(isinstance(m, OnnxBinaryLayer) for m in twin.modules())
    from ... import __version__

    spec = getattr(unwrap(model), "recu_spec", None)
    meta = {"recu_version": __version__, "recu_binary_layers": str(n_binary)}
    if spec is not None:
        meta["recu_model_spec"] = json.dumps(spec, default=str)
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(path))
    op_types: dict[str, int] = {}
    for node in proto.graph.node:
        op_types[node.op_type] = op_types.get(node.op_type, 0) + 1
    return {"path": str(path), "opset": opset, "input_shape": shape, "binary_layers": n_binary,
            "nodes": len(proto.graph.node), "op_types": op_types}
