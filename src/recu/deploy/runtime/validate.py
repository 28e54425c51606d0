"""Checks a deployment file before anything runs it: :func:`check_file`, :func:`check_graph`, :class:`DeployFileError`.

The engines size their buffers and index their kernels from the metadata and the tensors' shapes
(:mod:`recu.deploy.plan` writes int64 tables that the numba kernels index without bounds checks), so
a field that disagrees with a tensor could make a kernel read or write outside its buffers, or run
something else than the model silently. Every such quantity is checked here, once per load, against
``docs/file-format.md`` ("What load checks"): each tensor's dtype and shape against the metadata
and the graph, integer fields as ints in their ranges, binary layer geometry against the packed
bits, graph order, names, and the channel counts flowing from the input through the nodes. What
depends on the input's height and width is checked when a plan is built for it.

numpy only: no torch, no numba, no exporter (a deployment machine runs it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, NoReturn, Optional

import numpy as np

__all__ = ["DeployFileError", "GRAPH_VERSION", "OPS", "check_file", "check_graph"]

GRAPH_VERSION = 1  # the graph IR version the engines run (recu.deploy.graph.GRAPH_VERSION)

_WINDOW = ("kernel", "stride", "padding")
# op: (inputs, attributes, required tensor roles, optional roles) - the op table of docs/file-format.md.
# Other attributes are refused: the plan keeps fusion notes in a node's attributes (``input_padded``,
# ``pad_before``), which a file must not be able to set.
OPS: dict[str, tuple[int, tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "binary_conv2d": (1, ("layer",), (), ()),
    "binary_linear": (1, ("layer",), (), ()),
    "conv2d": (1, _WINDOW + ("in_channels", "out_channels"), ("weight",), ("bias",)),
    "linear": (1, ("in_features", "out_features"), ("weight",), ("bias",)),
    "batch_norm": (1, (), ("scale", "shift"), ()),
    "hardtanh": (1, ("min", "max"), (), ()),
    "relu": (1, (), (), ()),
    "prelu": (1, (), ("weight",), ()),
    "channel_bias": (1, (), ("bias",), ()),
    "add": (2, (), (), ()),
    "avg_pool2d": (1, _WINDOW + ("count_include_pad",), (), ()),
    "max_pool2d": (1, _WINDOW, (), ()),
    "global_avg_pool": (1, (), (), ()),
    "pad_channels": (1, ("before", "after"), (), ()),
    "flatten": (1, (), (), ()),
}
EPILOGUE = ("alpha", "bias", "bn_scale", "bn_shift")  # float32 (C_out,) tensors of each packed layer

# Upper bounds: far above any real network, low enough that no plan offset or size product can
# overflow int64 or ask for absurd memory.
MAX_CHANNELS = 1 << 20
MAX_SPATIAL = 1 << 16  # kernel, stride, padding


class DeployFileError(ValueError):
    """A deployment file that is malformed or inconsistent. The message is one line: the file, the
    tensor, node or field, and what is wrong with it."""


@dataclass(frozen=True)
class _Value:
    """What is known of a graph value without an input: rank (2, 4 or None), channels, and whether
    its spatial size is 1x1 (so that a flatten keeps the channel count)."""

    rank: Optional[int] = None
    channels: Optional[int] = None
    unit: bool = False


def _show(v: Any) -> str:
    """``repr`` of a value from the file, short and on one line (repr escapes newlines)."""
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _finite(v: float) -> bool:
    try:
        return math.isfinite(v)
    except OverflowError:  # an int too large for a float
        return False


def _spec(t: Any) -> tuple[str, tuple[int, ...]]:
    """(dtype name, shape) of a NumPy array, a torch tensor or anything with ``dtype`` and ``shape``."""
    try:
        dtype = np.dtype(t.dtype).name
    except TypeError:  # torch.float32 -> "float32", without importing torch
        dtype = str(t.dtype).rpartition(".")[2]
    return dtype, tuple(int(s) for s in t.shape)


class _Checker:
    """One pass over a file's metadata and tensor shapes; :meth:`fail` raises the one-line error."""

    def __init__(self, meta: Mapping, tensors: Mapping[str, Any], source: str) -> None:
        self.meta, self.tensors, self.source = meta, tensors, source
        self.layers: dict[str, dict] = {}
        self.graph_keys: set[str] = set()  # tensor keys the graph's nodes name

    def fail(self, where: str, problem: str) -> NoReturn:
        raise DeployFileError(f"{self.source}: {where}: {problem}")

    # -- fields ---------------------------------------------------------------------------------
    def field(self, where: str, obj: Mapping, key: str, kind: type | tuple, what: str) -> Any:
        if key not in obj:
            self.fail(where, f"{key!r} is missing")
        value = obj[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds:  # True is an int too
            self.fail(where, f"{key!r} must be {what}, got {_show(value)}")
        return value

    def integer(self, where: str, obj: Mapping, key: str, lo: int, hi: int) -> int:
        if key not in obj:
            self.fail(where, f"{key!r} is missing")
        value = obj[key]
        if not _is_int(value) or not lo <= value <= hi:
            self.fail(where, f"{key!r} must be an int in [{lo}, {hi}], got {_show(value)}")
        return value

    def pair(self, where: str, obj: Mapping, key: str, lo: int, hi: int) -> tuple[int, int]:
        if key not in obj:
            self.fail(where, f"{key!r} is missing")
        value = obj[key]
        if not (isinstance(value, list) and len(value) == 2 and all(_is_int(v) and lo <= v <= hi for v in value)):
            self.fail(where, f"{key!r} must be a list of two ints in [{lo}, {hi}], got {_show(value)}")
        return value[0], value[1]

    def padding(self, where: str, obj: Mapping, kernel: tuple[int, int], most: str) -> tuple[int, int]:
        """Zero padding below the kernel (``most="conv"``: beyond that an output sees padding alone) or
        at most half of it (``"pool"``, PyTorch's own rule for pools)."""
        pad = self.pair(where, obj, "padding", 0, MAX_SPATIAL)
        limit = [k - 1 for k in kernel] if most == "conv" else [k // 2 for k in kernel]
        if pad[0] > limit[0] or pad[1] > limit[1]:
            rule = "below the kernel size" if most == "conv" else "at most half the kernel size"
            self.fail(where, f"padding {list(pad)} must be {rule} {list(kernel)}")
        return pad

    def tensor(self, where: str, key: Any, dtype: str, shape: Optional[tuple[int, ...]] = None,
               ndim: Optional[int] = None) -> tuple[int, ...]:
        """The shape of tensor ``key`` after checking its presence, dtype and shape (or rank)."""
        if not isinstance(key, str):
            self.fail(where, f"tensor key must be a string, got {_show(key)}")
        if key not in self.tensors:
            self.fail(where, f"tensor {key!r} is missing from the file")
        got_dtype, got_shape = _spec(self.tensors[key])
        if got_dtype != dtype:
            self.fail(f"tensor {key!r}", f"dtype {got_dtype} where {where} needs {dtype}")
        if shape is not None and got_shape != shape:
            self.fail(f"tensor {key!r}", f"shape {got_shape} where {where} needs {shape}")
        if ndim is not None and len(got_shape) != ndim:
            self.fail(f"tensor {key!r}", f"shape {got_shape} where {where} needs {ndim} dimensions")
        if any(s < 1 for s in got_shape):
            self.fail(f"tensor {key!r}", f"shape {got_shape} has an empty dimension")
        return got_shape

    # -- binary layers --------------------------------------------------------------------------
    def binary_layers(self, required: bool) -> None:
        layers = self.meta.get("binary_layers")
        if layers is None and not required:
            return
        if not isinstance(layers, list):
            self.fail("metadata", f"'binary_layers' must be a list, got {_show(layers)}")
        for i, layer in enumerate(layers):
            if not isinstance(layer, dict):
                self.fail(f"binary_layers[{i}]", f"must be an object, got {_show(layer)}")
            name = self.field(f"binary_layers[{i}]", layer, "name", str, "a string")
            if not name or name in self.layers:
                self.fail(f"binary_layers[{i}]", f"name {name!r} is empty or used twice")
            self.binary_layer(f"binary layer {name!r}", layer)
            self.layers[name] = layer

    def binary_layer(self, where: str, layer: dict) -> None:
        kind = layer.get("kind", "conv2d")
        if kind not in ("conv2d", "linear"):
            self.fail(where, f"kind {_show(kind)} is not 'conv2d' or 'linear' (a newer recu wrote this file?)")
        c_in = self.integer(where, layer, "in_channels", 1, MAX_CHANNELS)
        c_out = self.integer(where, layer, "out_channels", 1, MAX_CHANNELS)
        kh, kw = self.pair(where, layer, "kernel_size", 1, MAX_SPATIAL)
        stride = self.pair(where, layer, "stride", 1, MAX_SPATIAL)
        pad = self.padding(where, layer, (kh, kw), "conv")
        if kind == "linear" and ((kh, kw), stride, pad) != ((1, 1), (1, 1), (0, 0)):
            self.fail(where, "a linear layer must have kernel_size [1, 1], stride [1, 1] and padding [0, 0]")
        folded = layer.get("folded_bn")
        if folded is not None and not (isinstance(folded, str) and folded):
            self.fail(where, f"'folded_bn' must be a module name or null, got {_show(folded)}")
        name = layer["name"]
        # The kernels index the packed bits with the metadata's kernel size and channel counts.
        self.tensor(f"{where} (bits)", f"binary.{name}.bits", "uint8", (c_out, kh, kw, (c_in + 7) // 8))
        for role in EPILOGUE:
            self.tensor(f"{where} ({role})", f"binary.{name}.{role}", "float32", (c_out,))

    # -- the graph ------------------------------------------------------------------------------
    def graph(self) -> None:
        graph = self.meta.get("graph")
        if not isinstance(graph, dict):
            self.fail("metadata", f"'graph' must be an object, got {_show(graph)}")
        version = graph.get("version")
        if not (_is_int(version) and version == GRAPH_VERSION):
            self.fail("graph", f"graph version {_show(version)} is not supported (this recu runs {GRAPH_VERSION})")
        entry = self.field("graph", graph, "input", dict, "an object")
        x = self.field("graph input", entry, "name", str, "a string")
        channels = entry.get("channels")
        if channels is not None:
            channels = self.integer("graph input", entry, "channels", 1, MAX_CHANNELS)
        nodes = self.field("graph", graph, "nodes", list, "a list")
        names = [n.get("name") if isinstance(n, dict) else None for n in nodes]
        values: dict[str, _Value] = {x: _Value(channels=channels)}
        for i, node in enumerate(nodes):
            name = self.node_name(i, node, values)  # (before the node: a subscript target is evaluated last)
            values[name] = self.node(i, node, values, names)
        output = self.field("graph", graph, "output", str, "a string")
        if output not in values:
            self.fail("graph", f"output {output!r} is no node of the graph")

    def node_name(self, i: int, node: Any, values: Mapping[str, _Value]) -> str:
        if not isinstance(node, dict):
            self.fail(f"graph node {i}", f"must be an object, got {_show(node)}")
        name = self.field(f"graph node {i}", node, "name", str, "a string")
        if not name or name in values:
            self.fail(f"graph node {i}", f"name {name!r} is empty or used twice")
        return name

    def node(self, i: int, node: dict, values: Mapping[str, _Value], names: list) -> _Value:
        op = node.get("op")
        where = f"graph node {node['name']!r}"
        if not isinstance(op, str) or op not in OPS:
            self.fail(where, f"unknown op {_show(op)} (a newer recu wrote this file?)")
        where = f"{where} ({op})"
        arity, known, required, optional = OPS[op]
        inputs = self.field(where, node, "inputs", list, "a list")
        if len(inputs) != arity:
            self.fail(where, f"has {len(inputs)} inputs, expected {arity}")
        for name in inputs:
            if not isinstance(name, str) or name not in values:
                later = isinstance(name, str) and name in names[i:]
                self.fail(where, f"reads {_show(name)}, " + ("which a later node computes (nodes must be in "
                                                             "execution order)" if later else "which no node computes"))
        attrs = self.field(where, node, "attrs", dict, "an object")
        for key in attrs:
            if key not in known:
                self.fail(where, f"unknown attribute {_show(key)}")
        roles = self.field(where, node, "tensors", dict, "an object")
        for role in roles:
            if role not in required + optional:
                self.fail(where, f"unknown tensor role {_show(role)}")
        for role in required:
            if role not in roles:
                self.fail(where, f"names no {role!r} tensor")
        self.graph_keys.update(k for k in roles.values() if isinstance(k, str))
        return getattr(self, f"op_{op}")(where, attrs, roles, *(values[n] for n in inputs))

    def need(self, where: str, x: _Value, rank: Optional[int], channels: Optional[int]) -> None:
        """The input's rank and channel count, where both are known, are what the op takes."""
        if rank is not None and x.rank is not None and x.rank != rank:
            self.fail(where, f"takes a {'(N, C)' if rank == 2 else '(N, C, H, W)'} input, its input is {x.rank}-D")
        if channels is not None and x.channels is not None and x.channels != channels:
            self.fail(where, f"takes {channels} channels, its input has {x.channels}")

    # -- ops: (where, attrs, tensors, *inputs) -> output ------------------------------------------
    def _binary(self, where: str, attrs: dict, x: _Value, kind: str) -> dict:
        layer = self.layers.get(attrs.get("layer")) if isinstance(attrs.get("layer"), str) else None
        if layer is None:
            self.fail(where, f"runs binary layer {_show(attrs.get('layer'))}, which binary_layers lacks")
        if layer.get("kind", "conv2d") != kind:
            self.fail(where, f"runs binary layer {layer['name']!r} of kind {layer.get('kind', 'conv2d')!r}")
        self.need(where, x, 4 if kind == "conv2d" else 2, layer["in_channels"])
        return layer

    def op_binary_conv2d(self, where: str, attrs: dict, roles: dict, x: _Value) -> _Value:
        return _Value(4, self._binary(where, attrs, x, "conv2d")["out_channels"])

    def op_binary_linear(self, where: str, attrs: dict, roles: dict, x: _Value) -> _Value:
        return _Value(2, self._binary(where, attrs, x, "linear")["out_channels"])

    def _bias(self, where: str, roles: dict, out: int) -> None:
        """The optional bias is (out,); a file holding the module's bias must not leave it out."""
        if "bias" in roles:
            self.tensor(f"{where} bias", roles["bias"], "float32", (out,))
        elif isinstance(roles["weight"], str) and roles["weight"].endswith(".weight"):
            sibling = roles["weight"][:-len("weight")] + "bias"
            if sibling in self.tensors:
                self.fail(where, f"does not read {sibling!r}, which the file holds")

    def op_conv2d(self, where: str, attrs: dict, roles: dict, x: _Value) -> _Value:
        kernel = self.pair(where, attrs, "kernel", 1, MAX_SPATIAL)
        self.pair(where, attrs, "stride", 1, MAX_SPATIAL)
        self.padding(where, attrs, kernel, "conv")
        c_in = self.integer(where, attrs, "in_channels", 1, MAX_CHANNELS)
        c_out = self.integer(where, attrs, "out_channels", 1, MAX_CHANNELS)
        self.tensor(f"{where} weight", roles["weight"], "float32", (c_out, c_in, *kernel))
        self._bias(where, roles, c_out)
        self.need(where, x, 4, c_in)
        return _Value(4, c_out)

    def op_linear(self, where: str, attrs: dict, roles: dict, x: _Value) -> _Value:
        c_in = self.integer(where, attrs, "in_features", 1, MAX_CHANNELS)
        c_out = self.integer(where, attrs, "out_features", 1, MAX_CHANNELS)
        self.tensor(f"{where} weight", roles["weight"], "float32", (c_out, c_in))
        self._bias(where, roles, c_out)
        self.need(where, x, 2, c_in)
        return _Value(2, c_out)

    def op_batch_norm(self, where: str, attrs: dict, roles: dict, x: _Value) -> _Value:
        shape = (x.channels,) if x.channels is not None else None  # else the scale's length sets it
        (c,) = self.tensor(f"{where} scale", roles["scale"], "float32", shape, ndim=1)
        self.tensor(f"{where} shift", roles["shift"], "float32", (c,))
        return _Value(x.rank, c, x.unit)

    def op_hardtanh(self, where: str, attrs: dict, roles: dict, x: _Value) -> _Value:
        lo, hi = (self.field(where, attrs, k, (int, float), "a number") for k in ("min", "max"))
        if not (_finite(lo) and _finite(hi) and lo <= hi):
            self.fail(where, f"bounds [{lo}, {hi}] must be finite with min <= max")
        return x

    def op_relu(self, where: str, attrs: dict, roles: dict, x: _Value) -> _Value:
        return x

    def op_prelu(self, where: str, attrs: dict, roles: dict, x: _Value) -> _Value:
        (c,) = self.tensor(f"{where} weight", roles["weight"], "float32", ndim=1)
        if c != 1 and x.channels is not None and c != x.channels:
            self.fail(f"tensor {roles['weight']!r}", f"shape {(c,)} where {where} needs (1,) or {(x.channels,)}")
        return x if c == 1 else _Value(x.rank, c, x.unit)

    def op_channel_bias(self, where: str, attrs: dict, roles: dict, x: _Value) -> _Value:
        shape = self.tensor(f"{where} bias", roles["bias"], "float32", ndim=4)
        c = shape[1] if x.channels is None else x.channels
        if shape != (1, c, 1, 1):
            self.fail(f"tensor {roles['bias']!r}", f"shape {shape} where {where} needs {(1, c, 1, 1)}")
        return _Value(x.rank, c, x.unit)

    def op_add(self, where: str, attrs: dict, roles: dict, x: _Value, y: _Value) -> _Value:
        self.need(where, y, x.rank, x.channels)
        return _Value(x.rank or y.rank, x.channels or y.channels, x.unit and y.unit)

    def _pool(self, where: str, attrs: dict, x: _Value) -> _Value:
        kernel = self.pair(where, attrs, "kernel", 1, MAX_SPATIAL)
        self.pair(where, attrs, "stride", 1, MAX_SPATIAL)
        self.padding(where, attrs, kernel, "pool")
        self.need(where, x, 4, None)
        return _Value(4, x.channels)

    def op_avg_pool2d(self, where: str, attrs: dict, roles: dict, x: _Value) -> _Value:
        self.field(where, attrs, "count_include_pad", bool, "true or false")
        return self._pool(where, attrs, x)

    def op_max_pool2d(self, where: str, attrs: dict, roles: dict, x: _Value) -> _Value:
        return self._pool(where, attrs, x)

    def op_global_avg_pool(self, where: str, attrs: dict, roles: dict, x: _Value) -> _Value:
        self.need(where, x, 4, None)
        return _Value(4, x.channels, unit=True)

    def op_pad_channels(self, where: str, attrs: dict, roles: dict, x: _Value) -> _Value:
        before = self.integer(where, attrs, "before", 0, MAX_CHANNELS)
        after = self.integer(where, attrs, "after", 0, MAX_CHANNELS)
        if x.channels is None:
            return _Value(x.rank, None, x.unit)
        if x.channels + before + after > MAX_CHANNELS:
            self.fail(where, f"pads {x.channels} channels to more than {MAX_CHANNELS}")
        return _Value(x.rank, x.channels + before + after, x.unit)

    def op_flatten(self, where: str, attrs: dict, roles: dict, x: _Value) -> _Value:
        if x.rank == 2:
            return x
        return _Value(2, x.channels if x.unit else None)  # C * H * W: known when H = W = 1

    # -- the whole file -------------------------------------------------------------------------
    def top_level(self) -> None:
        meta = self.meta
        for key, kind, what in (("model_spec", dict, "an object or null"), ("graph", dict, "an object or null"),
                                ("graph_unsupported", str, "a string or null"), ("recu_version", str, "a string")):
            if meta.get(key) is not None and not isinstance(meta[key], kind):
                self.fail("metadata", f"{key!r} must be {what}, got {_show(meta[key])}")
        spec = meta.get("model_spec")
        if spec is not None and not isinstance(spec.get("name"), str):
            self.fail("metadata", f"'model_spec' must name the model, got {_show(spec)}")
        if meta.get("preprocessing") is not None and not isinstance(meta["preprocessing"], dict):
            self.fail("metadata", f"'preprocessing' must be an object or null, got {_show(meta['preprocessing'])}")
        names = meta.get("class_names")
        if names is not None:
            if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
                self.fail("metadata", f"'class_names' must be a list of strings or null, got {_show(names)}")
            classes = spec.get("num_classes") if spec is not None else None
            if isinstance(classes, int) and len(names) != classes:
                self.fail("metadata", f"'class_names' names {len(names)} classes, the model has {classes}")
        if "bit_order" in meta and meta["bit_order"] != "little":
            self.fail("metadata", f"bit_order {_show(meta['bit_order'])} is not 'little'")
        for key in ("folded_bn", "float_layers"):
            value = meta.get(key, {})
            if not (isinstance(value, dict) and all(isinstance(v, str) for v in value.values())):
                self.fail("metadata", f"{key!r} must be an object of strings, got {_show(value)}")

    def folded(self) -> None:
        """``folded_bn`` (BatchNorm -> layer) is the inverse of the layers' own ``folded_bn``."""
        want = {layer["folded_bn"]: name for name, layer in self.layers.items() if layer.get("folded_bn")}
        got = self.meta.get("folded_bn", want)
        if got != want or len(want) != sum(1 for layer in self.layers.values() if layer.get("folded_bn")):
            self.fail("metadata", f"'folded_bn' {_show(got)} does not match the binary layers' folded_bn")

    def float_keys(self) -> set[str]:
        keys = self.meta.get("float_keys")
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys) or len(set(keys)) != len(keys):
            self.fail("metadata", f"'float_keys' must be a list of distinct strings, got {_show(keys)}")
        for key in (f"float.{k}" for k in keys):
            if key not in self.tensors:
                self.fail("float_keys", f"tensor {key!r} is missing from the file")
            dtype = _spec(self.tensors[key])[0]
            if dtype.startswith(("float", "bfloat")) and dtype != "float32":
                self.fail(f"tensor {key!r}", f"dtype {dtype}: floating tensors are stored as float32")
        return {f"float.{k}" for k in keys}

    def known_tensors(self, floats: set[str]) -> None:
        """Every tensor in the file is one the metadata accounts for."""
        binary = {f"binary.{name}.{role}" for name in self.layers for role in ("bits",) + EPILOGUE}
        for key in self.tensors:
            if key in binary or key in floats or key in self.graph_keys and not key.startswith(("float.", "binary.")):
                continue
            if key.startswith("float."):
                self.fail(f"tensor {key!r}", "is not listed in float_keys")
            self.fail(f"tensor {key!r}", "is unknown: no binary layer, float key or graph node names it")


def check_graph(meta: Mapping, tensors: Mapping[str, Any], source: str = "deployment file") -> None:
    """Check what running ``meta["graph"]`` reads: the graph (order, names, ops, attributes, channel counts
    from the input on), its binary layers and every tensor it names (dtype and shape).

    ``tensors`` maps keys to arrays (NumPy, torch, or anything with ``dtype`` and ``shape``). Raises
    :class:`DeployFileError` (a ValueError) with one line naming ``source`` and the field.
    """
    checker = _Checker(meta, tensors, source)
    checker.binary_layers(required=False)
    checker.graph()


def check_file(meta: Mapping, tensors: Mapping[str, Any], source: str = "deployment file") -> None:
    """Check a whole deployment file (metadata as :func:`recu.deploy.read_metadata` returns it, and its
    tensors): every binary layer and its tensors, ``float_keys`` against the ``float.*`` tensors, the
    graph if there is one (:func:`check_graph`), and no tensor that nothing names. Cheap (no tensor
    data is read); raises :class:`DeployFileError` with one line naming ``source`` and the field."""
    checker = _Checker(meta, tensors, source)
    checker.top_level()
    checker.binary_layers(required=True)
    checker.folded()
    floats = checker.float_keys()
    if meta.get("graph") is not None:
        checker.graph()
    checker.known_tensors(floats)
