"""The exported network as a graph of simple ops: the deployment file's ``meta["graph"]``.

:func:`extract_graph` traces the eval-mode model with ``torch.fx`` and writes every step as one node
of a small op set (binary conv/linear on the packed layers, float conv2d and linear, batch_norm,
hardtanh, relu, prelu, channel_bias, add, pooling, pad_channels, flatten). A runtime that knows
these ops runs the whole network without PyTorch (:func:`recu.deploy.graph_numpy.run_graph`). The op
table and the tensors each op reads are in ``docs/file-format.md`` ("The graph").

A model that uses anything else (an unknown module or function, a grouped or dilated float conv, a
binary layer that is not packed, control flow fx cannot trace) gets no graph, and a one-line reason
naming the module or function; the file then still loads through the per-layer PyTorch path.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from ...models._common import PadShortcut
from ...models.reactnet import LearnableBias
from ...nn import BinaryLayer, ReCULinear
from .fold import _tracer
from .packable import bn_scale_shift, conv_padding, packable_reason

__all__ = ["GRAPH_VERSION", "INPUT_NAME", "OPS", "GraphUnsupported", "extract_graph", "graph_tensor_keys"]

GRAPH_VERSION = 1
INPUT_NAME = "x"

# Every op of the IR (docs/file-format.md, "The graph"); readers refuse any other.
OPS = ("binary_conv2d", "binary_linear", "conv2d", "batch_norm", "hardtanh", "relu", "prelu", "channel_bias",
       "add", "avg_pool2d", "max_pool2d", "global_avg_pool", "pad_channels", "flatten", "linear")

# Modules fx must keep whole: their forward is one IR op (or two) but is not written in traceable ops
# the builder knows. Standard torch.nn modules are leaves already.
_LEAVES = (PadShortcut, LearnableBias)


class GraphUnsupported(ValueError):
    """The model uses something the graph IR cannot express; the message is the one-line reason."""


@dataclass(frozen=True)
class _Shape:
    """``x.shape`` / ``x.size()`` of the value named ``of`` (only its batch size may be used)."""

    of: str


@dataclass(frozen=True)
class _BatchSize:
    """``x.size(0)`` / ``x.shape[0]`` of the value named ``of`` (only ``view(N, -1)`` may use it)."""

    of: str


_Value = Union[str, _Shape, _BatchSize]


def _pair(v: Any) -> list[int]:
    """An int or a pair as a list of two ints (for JSON)."""
    if isinstance(v, int):
        return [v, v]
    a, b = v
    return [int(a), int(b)]


def _function_name(target: Any) -> str:
    """``torch.sigmoid``, ``F.gelu``, ``operator.mul`` ... for a call_function target."""
    name = getattr(target, "__name__", repr(target))
    for prefix, namespace in (("operator", operator), ("F", F), ("torch", torch)):
        if getattr(namespace, name, None) is target:
            return f"{prefix}.{name}"
    return name


def _where(node: torch.fx.Node) -> str:
    """`` in module 'a.b' (Block)`` for a node traced inside a submodule, else ``''``."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path, cls = list(stack.values())[-1]
    return f" in module {path!r} ({getattr(cls, '__name__', cls)})"


def _arg(node: torch.fx.Node, index: int, name: str, default: Any) -> Any:
    """Argument ``name`` of a call, given at position ``index`` (after the input) or by keyword."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


class _Builder:
    """Walks the fx graph once and appends IR nodes; raises :class:`GraphUnsupported` on anything else."""

    def __init__(self, model: nn.Module, fx_graph: torch.fx.Graph, packed: set[str], folded: dict[str, str]) -> None:
        self.modules = dict(model.named_modules())
        self.fx_graph = fx_graph
        self.packed = packed
        self.folded = folded
        self.nodes: list[dict] = []
        self.tensors: dict[str, Tensor] = {}
        self.values: dict[torch.fx.Node, _Value] = {}
        self.binary_of: dict[str, str] = {}  # value name -> packed layer whose output it is
        self.input_channels: Optional[int] = None
        self.taken = {n.name for n in fx_graph.nodes if n.op != "placeholder"} | {INPUT_NAME}
        self.emitted: set[str] = set()
        self.output: Optional[str] = None

    # -- naming and emission -------------------------------------------------------------------
    def fresh(self, base: str) -> str:
        """A node name derived from ``base`` that no fx node and no emitted node has."""
        name, i = base, 1
        while name in self.taken or name in self.emitted:
            name, i = f"{base}_{i}", i + 1
        return name

    def own_name(self, node: torch.fx.Node) -> str:
        name = node.name
        return name if name != INPUT_NAME and name not in self.emitted else self.fresh(name)

    def emit(self, name: str, op: str, inputs: list[str], attrs: Optional[dict] = None,
             tensors: Optional[dict[str, str]] = None) -> str:
        self.nodes.append({"name": name, "op": op, "inputs": inputs, "attrs": attrs or {}, "tensors": tensors or {}})
        self.emitted.add(name)
        return name

    def tensor(self, node: torch.fx.Node, arg: Any) -> str:
        """The value name of ``arg``, which must be a tensor computed by an earlier node."""
        value = self.values.get(arg) if isinstance(arg, torch.fx.Node) else None
        if not isinstance(value, str):
            raise GraphUnsupported(f"{node.op} {node.target!r}{_where(node)} takes {arg!r}, which is not a tensor "
                                   "the graph computes")
        return value

    def note_channels(self, x: str, channels: int) -> None:
        """Record the input's channel count when the op consuming the input fixes it."""
        if x == INPUT_NAME and self.input_channels is None:
            self.input_channels = int(channels)

    # -- the walk ------------------------------------------------------------------------------
    def run(self) -> None:
        for node in self.fx_graph.nodes:
            if node.op == "placeholder":
                if INPUT_NAME in self.values.values():
                    raise GraphUnsupported(f"the model takes more than one input ({node.name!r})")
                self.values[node] = INPUT_NAME
            elif node.op == "call_module":
                self.values[node] = self.call_module(node)
            elif node.op == "call_function":
                self.values[node] = self.call_function(node)
            elif node.op == "call_method":
                self.values[node] = self.call_method(node)
            elif node.op == "get_attr":
                raise GraphUnsupported(f"forward reads the tensor {node.target!r} directly{_where(node)}")
            elif node.op == "output":
                out = node.args[0]
                if not isinstance(out, torch.fx.Node):
                    raise GraphUnsupported(f"the model returns {type(out).__name__}, not one tensor")
                self.output = self.tensor(node, out)

    # -- modules -------------------------------------------------------------------------------
    def call_module(self, node: torch.fx.Node) -> str:
        qualname = str(node.target)
        module = self.modules[qualname]
        if len(node.args) != 1 or node.kwargs:
            raise GraphUnsupported(f"module {qualname!r} ({type(module).__name__}) is called with more than one input")
        x = self.tensor(node, node.args[0])
        if isinstance(module, BinaryLayer):
            return self.binary(node, qualname, module, x)
        handler = _MODULE_HANDLERS.get(type(module))
        if handler is None:
            raise GraphUnsupported(f"module {qualname!r} ({type(module).__name__}) is not supported by the graph")
        return handler(self, node, qualname, module, x)

    def binary(self, node: torch.fx.Node, qualname: str, layer: nn.Module, x: str) -> str:
        if qualname not in self.packed:
            why = packable_reason(layer) or "it was not packed"
            raise GraphUnsupported(f"binary layer {qualname!r} ({type(layer).__name__}) is not packed: {why}")
        linear = isinstance(layer, ReCULinear)
        self.note_channels(x, layer.in_features if linear else layer.in_channels)  # type: ignore[union-attr]
        name = self.emit(self.own_name(node), "binary_linear" if linear else "binary_conv2d", [x],
                         {"layer": qualname})
        self.binary_of[name] = qualname
        return name

    # -- functions and methods (tables below the class) ----------------------------------------
    def call_function(self, node: torch.fx.Node) -> _Value:
        handler = _FUNCTION_HANDLERS.get(node.target)
        if handler is None:
            name = _function_name(node.target)
            raise GraphUnsupported(f"function {name}{_where(node)} is not supported by the graph")
        return handler(self, node)

    def call_method(self, node: torch.fx.Node) -> _Value:
        handler = _METHOD_HANDLERS.get(str(node.target))
        if handler is None:
            raise GraphUnsupported(f"method Tensor.{node.target}{_where(node)} is not supported by the graph")
        return handler(self, node)


def _module_conv2d(b: _Builder, node: torch.fx.Node, qualname: str, conv: nn.Conv2d, x: str) -> str:
    what = f"conv2d {qualname!r}"
    if conv.groups != 1:
        raise GraphUnsupported(f"{what} has groups={conv.groups} (the graph supports groups 1 only)")
    if tuple(conv.dilation) != (1, 1):
        raise GraphUnsupported(f"{what} has dilation={tuple(conv.dilation)} (the graph supports 1 only)")
    if conv.padding_mode != "zeros":
        raise GraphUnsupported(f"{what} has padding_mode={conv.padding_mode!r} (the graph supports 'zeros' only)")
    padding = conv_padding(conv)
    if padding is None:
        raise GraphUnsupported(f"{what} has padding {conv.padding!r}, which is not symmetric")
    b.note_channels(x, conv.in_channels)
    tensors = {"weight": f"float.{qualname}.weight"}
    if conv.bias is not None:
        tensors["bias"] = f"float.{qualname}.bias"
    attrs = {"kernel": _pair(conv.kernel_size), "stride": _pair(conv.stride), "padding": list(padding),
             "in_channels": conv.in_channels, "out_channels": conv.out_channels}
    return b.emit(b.own_name(node), "conv2d", [x], attrs, tensors)


def _module_linear(b: _Builder, node: torch.fx.Node, qualname: str, fc: nn.Linear, x: str) -> str:
    b.note_channels(x, fc.in_features)
    tensors = {"weight": f"float.{qualname}.weight"}
    if fc.bias is not None:
        tensors["bias"] = f"float.{qualname}.bias"
    attrs = {"in_features": fc.in_features, "out_features": fc.out_features}
    return b.emit(b.own_name(node), "linear", [x], attrs, tensors)


def _module_batch_norm(b: _Builder, node: torch.fx.Node, qualname: str, bn: nn.BatchNorm2d, x: str) -> str:
    conv = b.folded.get(qualname)
    if conv is not None:  # it lives in the packed conv's epilogue: the conv's node already applies it
        if b.binary_of.get(x) != conv:
            raise GraphUnsupported(f"BatchNorm {qualname!r} is folded into {conv!r} but reads another value ({x!r})")
        return x
    if not bn.track_running_stats or bn.running_mean is None or bn.running_var is None:
        raise GraphUnsupported(f"BatchNorm {qualname!r} has no running statistics (it normalises by batch statistics)")
    b.note_channels(x, bn.num_features)
    name = b.own_name(node)
    scale, shift = bn_scale_shift(bn)
    b.tensors[f"graph.{name}.scale"] = scale
    b.tensors[f"graph.{name}.shift"] = shift
    return b.emit(name, "batch_norm", [x], {}, {"scale": f"graph.{name}.scale", "shift": f"graph.{name}.shift"})


def _module_hardtanh(b: _Builder, node: torch.fx.Node, qualname: str, act: nn.Hardtanh, x: str) -> str:
    return b.emit(b.own_name(node), "hardtanh", [x], {"min": float(act.min_val), "max": float(act.max_val)})


def _module_relu(b: _Builder, node: torch.fx.Node, qualname: str, act: nn.ReLU, x: str) -> str:
    return b.emit(b.own_name(node), "relu", [x])


def _module_prelu(b: _Builder, node: torch.fx.Node, qualname: str, act: nn.PReLU, x: str) -> str:
    if act.num_parameters > 1:
        b.note_channels(x, act.num_parameters)
    return b.emit(b.own_name(node), "prelu", [x], {}, {"weight": f"float.{qualname}.weight"})


def _module_channel_bias(b: _Builder, node: torch.fx.Node, qualname: str, move: LearnableBias, x: str) -> str:
    b.note_channels(x, move.bias.numel())
    return b.emit(b.own_name(node), "channel_bias", [x], {}, {"bias": f"float.{qualname}.bias"})


def _module_avg_pool(b: _Builder, node: torch.fx.Node, qualname: str, pool: nn.AvgPool2d, x: str) -> str:
    if pool.ceil_mode or pool.divisor_override is not None:
        raise GraphUnsupported(f"AvgPool2d {qualname!r} uses ceil_mode or divisor_override (not supported)")
    stride = pool.stride if pool.stride is not None else pool.kernel_size
    attrs = {"kernel": _pair(pool.kernel_size), "stride": _pair(stride), "padding": _pair(pool.padding),
             "count_include_pad": bool(pool.count_include_pad)}
    return b.emit(b.own_name(node), "avg_pool2d", [x], attrs)


def _module_max_pool(b: _Builder, node: torch.fx.Node, qualname: str, pool: nn.MaxPool2d, x: str) -> str:
    if pool.ceil_mode or pool.return_indices or _pair(pool.dilation) != [1, 1]:
        raise GraphUnsupported(f"MaxPool2d {qualname!r} uses ceil_mode, dilation or return_indices (not supported)")
    stride = pool.stride if pool.stride is not None else pool.kernel_size
    attrs = {"kernel": _pair(pool.kernel_size), "stride": _pair(stride), "padding": _pair(pool.padding)}
    return b.emit(b.own_name(node), "max_pool2d", [x], attrs)


def _module_global_pool(b: _Builder, node: torch.fx.Node, qualname: str, pool: nn.AdaptiveAvgPool2d, x: str) -> str:
    size = pool.output_size
    if (size if isinstance(size, int) else tuple(size)) not in (1, (1, 1)):
        raise GraphUnsupported(f"AdaptiveAvgPool2d {qualname!r} has output size {size!r} (only 1 is supported)")
    return b.emit(b.own_name(node), "global_avg_pool", [x])


def _module_flatten(b: _Builder, node: torch.fx.Node, qualname: str, flat: nn.Flatten, x: str) -> str:
    if (flat.start_dim, flat.end_dim) != (1, -1):
        raise GraphUnsupported(f"Flatten {qualname!r} has start_dim={flat.start_dim}, end_dim={flat.end_dim} "
                               "(only 1 and -1 are supported)")
    return b.emit(b.own_name(node), "flatten", [x])


def _module_identity(b: _Builder, node: torch.fx.Node, qualname: str, module: nn.Identity, x: str) -> str:
    return x


def _module_pad_shortcut(b: _Builder, node: torch.fx.Node, qualname: str, short: PadShortcut, x: str) -> str:
    # PadShortcut.forward: avg_pool2d(x, stride) (kernel = stride, no padding), then zero channels each side.
    final = b.own_name(node)
    if short.stride != 1:
        pool_name = b.fresh(f"{final}_pool") if short.pad else final
        x = b.emit(pool_name, "avg_pool2d", [x], {"kernel": [short.stride] * 2, "stride": [short.stride] * 2,
                                                  "padding": [0, 0], "count_include_pad": True})
    if short.pad:
        x = b.emit(final, "pad_channels", [x], {"before": short.pad, "after": short.pad})
    return x


_ModuleHandler = Callable[[_Builder, torch.fx.Node, str, Any, str], str]
_MODULE_HANDLERS: dict[type, _ModuleHandler] = {
    nn.Conv2d: _module_conv2d,
    nn.Linear: _module_linear,
    nn.BatchNorm1d: _module_batch_norm,
    nn.BatchNorm2d: _module_batch_norm,
    nn.Hardtanh: _module_hardtanh,
    nn.ReLU: _module_relu,
    nn.PReLU: _module_prelu,
    nn.AvgPool2d: _module_avg_pool,
    nn.MaxPool2d: _module_max_pool,
    nn.AdaptiveAvgPool2d: _module_global_pool,
    nn.Flatten: _module_flatten,
    nn.Identity: _module_identity,
    PadShortcut: _module_pad_shortcut,
    LearnableBias: _module_channel_bias,
}


# -- functions and methods -------------------------------------------------------------------------
def _fn_add(b: _Builder, node: torch.fx.Node) -> _Value:
    if len(node.args) != 2 or set(node.kwargs) - {"alpha"} or node.kwargs.get("alpha", 1) != 1:
        raise GraphUnsupported(f"{_function_name(node.target)}{_where(node)} is not a plain sum of two tensors")
    return b.emit(b.own_name(node), "add", [b.tensor(node, node.args[0]), b.tensor(node, node.args[1])])


def _flatten_from(b: _Builder, node: torch.fx.Node, start: Any, end: Any) -> _Value:
    if (start, end) != (1, -1):
        raise GraphUnsupported(f"flatten{_where(node)} with start_dim={start!r}, end_dim={end!r} "
                               "(only 1 and -1 are supported)")
    return b.emit(b.own_name(node), "flatten", [b.tensor(node, node.args[0])])


def _fn_flatten(b: _Builder, node: torch.fx.Node) -> _Value:
    return _flatten_from(b, node, _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1))


def _method_flatten(b: _Builder, node: torch.fx.Node) -> _Value:
    return _flatten_from(b, node, _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1))


def _method_view(b: _Builder, node: torch.fx.Node) -> _Value:
    """``x.view(x.size(0), -1)`` (or reshape, or ``x.shape[0]``) is flatten; other shapes are not supported."""
    x = b.tensor(node, node.args[0])
    shape = list(node.args[1:])
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = list(shape[0])
    batch = b.values.get(shape[0]) if len(shape) == 2 and isinstance(shape[0], torch.fx.Node) else None
    if batch != _BatchSize(x) or shape[1] != -1:
        raise GraphUnsupported(f"Tensor.{node.target}{_where(node)} to a shape other than (N, -1)")
    return b.emit(b.own_name(node), "flatten", [x])


def _method_size(b: _Builder, node: torch.fx.Node) -> _Value:
    x = b.tensor(node, node.args[0])
    dim = _arg(node, 1, "dim", None)
    if dim is None:
        return _Shape(x)
    if dim != 0:
        raise GraphUnsupported(f"Tensor.size({dim!r}){_where(node)}: only the batch size can be read")
    return _BatchSize(x)


def _fn_getattr(b: _Builder, node: torch.fx.Node) -> _Value:
    if node.args[1] != "shape":
        raise GraphUnsupported(f"attribute {node.args[1]!r} of a tensor is read{_where(node)}")
    return _Shape(b.tensor(node, node.args[0]))


def _fn_getitem(b: _Builder, node: torch.fx.Node) -> _Value:
    shape = b.values.get(node.args[0]) if isinstance(node.args[0], torch.fx.Node) else None
    if not isinstance(shape, _Shape) or node.args[1] != 0:
        raise GraphUnsupported(f"indexing{_where(node)} other than x.shape[0] is not supported")
    return _BatchSize(shape.of)


def _fn_relu(b: _Builder, node: torch.fx.Node) -> _Value:
    return b.emit(b.own_name(node), "relu", [b.tensor(node, node.args[0])])


def _fn_hardtanh(b: _Builder, node: torch.fx.Node) -> _Value:
    lo, hi = _arg(node, 1, "min_val", -1.0), _arg(node, 2, "max_val", 1.0)
    if not isinstance(lo, (int, float)) or not isinstance(hi, (int, float)):
        raise GraphUnsupported(f"F.hardtanh{_where(node)} with bounds computed at run time")
    return b.emit(b.own_name(node), "hardtanh", [b.tensor(node, node.args[0])], {"min": float(lo), "max": float(hi)})


def _alias(b: _Builder, node: torch.fx.Node) -> _Value:
    """``x.contiguous()``: the same values."""
    return b.tensor(node, node.args[0])


_FnHandler = Callable[[_Builder, torch.fx.Node], _Value]
_FUNCTION_HANDLERS: dict[Any, _FnHandler] = {
    operator.add: _fn_add,
    operator.iadd: _fn_add,
    torch.add: _fn_add,
    torch.flatten: _fn_flatten,
    F.relu: _fn_relu,
    torch.relu: _fn_relu,
    F.hardtanh: _fn_hardtanh,
    getattr: _fn_getattr,
    operator.getitem: _fn_getitem,
}
_METHOD_HANDLERS: dict[str, _FnHandler] = {
    "add": _fn_add,
    "flatten": _method_flatten,
    "view": _method_view,
    "reshape": _method_view,
    "size": _method_size,
    "relu": _fn_relu,
    "contiguous": _alias,
}


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


@torch.no_grad()
def extract_graph(model: nn.Module, packed: set[str],
                  folded: dict[str, str]) -> tuple[Optional[dict], dict[str, Tensor], Optional[str]]:
    """The eval-mode ``model`` as the graph IR of ``meta["graph"]``, with the tensors it adds.

    Args:
        model: the (unwrapped) model; it is traced with ``torch.fx``, not run or modified. Its
            BatchNorms are read as in eval mode (running statistics).
        packed: qualified names of the binary layers the file stores packed (``binary.<name>.*``).
        folded: ``{bn_name: conv_name}``, BatchNorms inside a packed layer's epilogue (no node).

    Returns:
        ``(graph, tensors, None)``, ``tensors`` the new float32 tensors keyed ``graph.<node>.<role>``
        (BatchNorm scales and shifts; other ops name the file's ``float.<key>`` tensors), or
        ``(None, {}, reason)`` when the model uses something the graph cannot express.
    """
    try:
        fx_graph = _tracer(_LEAVES).trace(model)
    except Exception as e:  # noqa: BLE001 - any tracing failure means: no graph
        return None, {}, f"torch.fx could not trace the model ({_first_line(e)})"
    builder = _Builder(model, fx_graph, set(packed), dict(folded))
    try:
        builder.run()
    except GraphUnsupported as e:
        return None, {}, str(e)
    if builder.output is None:
        return None, {}, "the traced model has no output"
    graph = {
        "version": GRAPH_VERSION,
        "input": {"name": INPUT_NAME, "channels": builder.input_channels},
        "nodes": builder.nodes,
        "output": builder.output,
    }
    return graph, builder.tensors, None


def graph_tensor_keys(graph: dict) -> set[str]:
    """The file keys the graph's nodes name in their ``tensors`` (binary layers' own keys not included)."""
    return {key for node in graph["nodes"] for key in node["tensors"].values()}
