"""Run a deployment file's graph (``meta["graph"]``) with NumPy alone: no PyTorch, no numba.

:func:`run_graph` executes the graph IR written by :func:`recu.deploy.export` (op table in
``docs/file-format.md``, "The graph") node by node. It is the compiled runtime's fallback where numba
is missing and the reference the compiled plan is tested against, so every op follows the float32
steps the plan's kernels are specified with:

- ``binary_conv2d`` / ``binary_linear``: the exact integer XNOR-popcount dot products of the packed
  signs (:func:`recu.deploy.runtime.kernels.reference.binary_conv2d_numpy`), then the layer's float32 epilogue
  (:func:`recu.deploy.runtime.kernels.reference.epilogue_numpy`: alpha, bias, folded BatchNorm).
- ``conv2d``: one float32 fma chain per output over (kernel row, column, input channel), the plan's order
  (:mod:`recu.deploy.fma_numpy`, bit for bit on every CPU; PyTorch's oneDNN sums so on some CPUs and shapes); ``linear``: products summed in float64, rounded once to float32; both then ``+ bias`` in float32.
- ``batch_norm``: ``fma(x, scale, shift)``, rounded once (:func:`recu.deploy.fma_numpy.fma32`).
- ``avg_pool2d``: PyTorch's order, the taps summed row by row in float32 from 0, then divided by the count;
  ``global_avg_pool``: float64 sum divided by H*W, rounded once. ``max_pool2d``: padding acts as -inf.
- ``add``, ``channel_bias``, ``hardtanh``, ``relu``, ``prelu``: elementwise in float32.

Activations are held NHWC ``(N, H, W, C)`` float32 (a flat ``(N, C)`` stays 2-D); the input and the
output are in PyTorch's layout (NCHW, or ``(N, C)``).
"""

from __future__ import annotations

from typing import Callable, Iterator, Mapping

import numpy as np

from .fma_numpy import conv2d_fma_chain, fma32
from .kernels.reference import binary_conv2d_numpy, epilogue_numpy, epilogue_table
from .kernels.weights import PackedConvWeights
from .pack import pack_signs_numpy, unpackbits_bytes
from .validate import GRAPH_VERSION, DeployFileError, check_graph

__all__ = ["GRAPH_VERSION", "run_graph", "run_checked_graph"]

_EPILOGUE = ("alpha", "bias", "bn_scale", "bn_shift")


class _Context:
    """The file's tensors and binary layers, with each packed layer's weights unpacked once per run."""

    def __init__(self, meta: Mapping, tensors: Mapping[str, np.ndarray]) -> None:
        self.tensors = tensors
        self.layers = {layer["name"]: layer for layer in meta.get("binary_layers", [])}
        self._packed: dict[str, tuple[PackedConvWeights, np.ndarray, dict]] = {}

    def tensor(self, node: Mapping, role: str, required: bool = True) -> np.ndarray | None:
        """The float32 tensor a node names for ``role`` (None when optional and absent)."""
        key = node["tensors"].get(role)
        if key is None:
            if required:
                raise ValueError(f"graph node {node['name']!r} ({node['op']}) names no {role!r} tensor")
            return None
        if key not in self.tensors:
            raise ValueError(f"graph node {node['name']!r} needs tensor {key!r}, which the file lacks")
        return np.asarray(self.tensors[key], dtype=np.float32)

    def binary(self, node: Mapping) -> tuple[PackedConvWeights, np.ndarray, dict]:
        """(weights, epilogue table, layer metadata) of the packed layer a binary node runs."""
        name = node["attrs"].get("layer")
        if name not in self.layers:
            raise ValueError(f"graph node {node['name']!r} runs binary layer {name!r}, which binary_layers lacks")
        if name not in self._packed:
            layer = self.layers[name]
            c_in, c_out = int(layer["in_channels"]), int(layer["out_channels"])
            missing = [f"binary.{name}.{k}" for k in ("bits",) + _EPILOGUE if f"binary.{name}.{k}" not in self.tensors]
            if missing:
                raise ValueError(f"binary layer {name!r}: the file lacks {missing}")
            weights = PackedConvWeights(unpackbits_bytes(np.asarray(self.tensors[f"binary.{name}.bits"]), c_in), c_in)
            if weights.out_channels != c_out:
                raise ValueError(f"binary layer {name!r}: {weights.out_channels} output channels stored, "
                                 f"metadata says {c_out}")
            epi = epilogue_table(c_out, *(np.asarray(self.tensors[f"binary.{name}.{k}"]) for k in _EPILOGUE))
            self._packed[name] = (weights, epi, layer)
        return self._packed[name]


def _need_rank(node: Mapping, x: np.ndarray, rank: int) -> None:
    if x.ndim != rank:
        layout = "(N, C, H, W)" if rank == 4 else "(N, C)"
        raise ValueError(f"graph node {node['name']!r} ({node['op']}) needs an {layout} input, got {x.ndim}-D")


def _need_channels(node: Mapping, x: np.ndarray, channels: int) -> None:
    if x.shape[-1] != channels:
        raise ValueError(f"graph node {node['name']!r} ({node['op']}) expects {channels} channels, got {x.shape[-1]}")


def _out_size(node: Mapping, size: int, kernel: int, stride: int, padding: int) -> int:
    out = (size + 2 * padding - kernel) // stride + 1
    if out < 1:
        raise ValueError(f"graph node {node['name']!r}: input size {size} is too small for kernel {kernel}")
    return out


def _taps(xp: np.ndarray, i: int, j: int, oh: int, ow: int, sh: int, sw: int) -> np.ndarray:
    """The (N, OH, OW, C) input values tap (i, j) of a strided window meets, from the padded ``xp``."""
    return xp[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :]


def _padded(x: np.ndarray, ph: int, pw: int, fill: float, dtype: type) -> np.ndarray:
    n, h, w, c = x.shape
    xp = np.full((n, h + 2 * ph, w + 2 * pw, c), fill, dtype=dtype)
    xp[:, ph:ph + h, pw:pw + w] = x
    return xp


# -- ops: (context, node, inputs) -> output -----------------------------------------------------------
def _binary_conv2d(ctx: _Context, node: Mapping, x: np.ndarray) -> np.ndarray:
    weights, epi, layer = ctx.binary(node)
    _need_rank(node, x, 4)
    _need_channels(node, x, weights.in_channels)
    dot = binary_conv2d_numpy(pack_signs_numpy(x), weights, tuple(layer["stride"]), tuple(layer["padding"]))
    return epilogue_numpy(dot, epi)


def _binary_linear(ctx: _Context, node: Mapping, x: np.ndarray) -> np.ndarray:
    weights, epi, _ = ctx.binary(node)
    _need_rank(node, x, 2)
    _need_channels(node, x, weights.in_channels)
    n = x.shape[0]
    dot = binary_conv2d_numpy(pack_signs_numpy(x.reshape(n, 1, 1, -1)), weights)  # a 1x1 conv of a 1x1 image
    return epilogue_numpy(dot, epi).reshape(n, weights.out_channels)


def _conv2d(ctx: _Context, node: Mapping, x: np.ndarray) -> np.ndarray:
    w = ctx.tensor(node, "weight")
    bias = ctx.tensor(node, "bias", required=False)
    _need_rank(node, x, 4)
    _need_channels(node, x, w.shape[1])
    (kh, kw), (sh, sw), (ph, pw) = w.shape[2:], node["attrs"]["stride"], node["attrs"]["padding"]
    _out_size(node, x.shape[1], kh, sh, ph)  # an input smaller than the kernel: the node's own error
    _out_size(node, x.shape[2], kw, sw, pw)
    # one float32 fma chain per output over (kernel row, column, input channel), the plan's order
    acc = conv2d_fma_chain(x, w, (sh, sw), (ph, pw))
    return acc + bias if bias is not None else acc


def _linear(ctx: _Context, node: Mapping, x: np.ndarray) -> np.ndarray:
    w = ctx.tensor(node, "weight")
    bias = ctx.tensor(node, "bias", required=False)
    _need_rank(node, x, 2)
    _need_channels(node, x, w.shape[1])
    y = (x.astype(np.float64) @ w.astype(np.float64).T).astype(np.float32)
    return y + bias if bias is not None else y


def _batch_norm(ctx: _Context, node: Mapping, x: np.ndarray) -> np.ndarray:
    scale, shift = ctx.tensor(node, "scale"), ctx.tensor(node, "shift")
    _need_channels(node, x, scale.shape[0])
    return fma32(x, scale, shift)  # fma(x, a, b), rounded once: PyTorch's CPU eval BatchNorm and the plan's


def _hardtanh(ctx: _Context, node: Mapping, x: np.ndarray) -> np.ndarray:
    return np.clip(x, np.float32(node["attrs"]["min"]), np.float32(node["attrs"]["max"]))


def _relu(ctx: _Context, node: Mapping, x: np.ndarray) -> np.ndarray:
    return np.maximum(x, np.float32(0.0))


def _prelu(ctx: _Context, node: Mapping, x: np.ndarray) -> np.ndarray:
    w = ctx.tensor(node, "weight").reshape(-1)
    if w.size != 1:
        _need_channels(node, x, w.size)
    return np.where(x > 0, x, x * w)


def _channel_bias(ctx: _Context, node: Mapping, x: np.ndarray) -> np.ndarray:
    bias = ctx.tensor(node, "bias").reshape(-1)  # ReActNet stores it (1, C, 1, 1)
    _need_channels(node, x, bias.size)
    return x + bias


def _add(ctx: _Context, node: Mapping, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    if x.shape != y.shape:
        raise ValueError(f"graph node {node['name']!r} (add) adds shapes {x.shape} and {y.shape} (NHWC)")
    return x + y


def _pool_windows(node: Mapping, x: np.ndarray, fill: float) -> tuple[Iterator[np.ndarray], tuple[int, int]]:
    """The (N, OH, OW, C) tap views of a pooling node over ``x`` padded with ``fill``, and (OH, OW)."""
    attrs = node["attrs"]
    (kh, kw), (sh, sw), (ph, pw) = attrs["kernel"], attrs["stride"], attrs["padding"]
    _need_rank(node, x, 4)
    _, h, w, _ = x.shape
    oh, ow = _out_size(node, h, kh, sh, ph), _out_size(node, w, kw, sw, pw)
    xp = _padded(x, ph, pw, fill, np.float32)
    return (_taps(xp, i, j, oh, ow, sh, sw) for i in range(kh) for j in range(kw)), (oh, ow)


def _avg_pool2d(ctx: _Context, node: Mapping, x: np.ndarray) -> np.ndarray:
    attrs = node["attrs"]
    (kh, kw), (sh, sw), (ph, pw) = attrs["kernel"], attrs["stride"], attrs["padding"]
    taps, (oh, ow) = _pool_windows(node, x, 0.0)
    n, h, w, c = x.shape
    acc = np.zeros((n, oh, ow, c), dtype=np.float32)
    for tap in taps:  # padded taps add +0.0, which leaves a float32 sum unchanged
        acc += tap
    return acc / _pool_divisor(h, w, oh, ow, kh, kw, sh, sw, ph, pw, bool(attrs["count_include_pad"]))


def _pool_divisor(h: int, w: int, oh: int, ow: int, kh: int, kw: int, sh: int, sw: int, ph: int, pw: int,
                  count_include_pad: bool) -> np.ndarray:
    """(OH, OW, 1) float32 counts PyTorch divides each window's sum by (windows clipped to input + padding)."""
    def extent(out: int, size: int, k: int, s: int, p: int) -> tuple[np.ndarray, np.ndarray]:
        start = np.arange(out) * s - p
        end = np.minimum(start + k, size + p)
        return end - start, np.minimum(end, size) - np.maximum(start, 0)

    full_h, valid_h = extent(oh, h, kh, sh, ph)
    full_w, valid_w = extent(ow, w, kw, sw, pw)
    count = np.outer(full_h, full_w) if count_include_pad else np.outer(valid_h, valid_w)
    return count.astype(np.float32)[:, :, None]


def _max_pool2d(ctx: _Context, node: Mapping, x: np.ndarray) -> np.ndarray:
    taps, (oh, ow) = _pool_windows(node, x, -np.inf)
    out = np.full((x.shape[0], oh, ow, x.shape[3]), -np.inf, dtype=np.float32)
    for tap in taps:
        np.maximum(out, tap, out=out)
    return out


def _global_avg_pool(ctx: _Context, node: Mapping, x: np.ndarray) -> np.ndarray:
    _need_rank(node, x, 4)
    h, w = x.shape[1:3]
    return (x.astype(np.float64).sum(axis=(1, 2), keepdims=True) / (h * w)).astype(np.float32)


def _pad_channels(ctx: _Context, node: Mapping, x: np.ndarray) -> np.ndarray:
    before, after = int(node["attrs"]["before"]), int(node["attrs"]["after"])
    return np.pad(x, [(0, 0)] * (x.ndim - 1) + [(before, after)])


def _flatten(ctx: _Context, node: Mapping, x: np.ndarray) -> np.ndarray:
    if x.ndim == 2:
        return x
    _need_rank(node, x, 4)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)).reshape(x.shape[0], -1)  # PyTorch's NCHW order


_OPS: dict[str, Callable[..., np.ndarray]] = {
    "binary_conv2d": _binary_conv2d,
    "binary_linear": _binary_linear,
    "conv2d": _conv2d,
    "batch_norm": _batch_norm,
    "hardtanh": _hardtanh,
    "relu": _relu,
    "prelu": _prelu,
    "channel_bias": _channel_bias,
    "add": _add,
    "avg_pool2d": _avg_pool2d,
    "max_pool2d": _max_pool2d,
    "global_avg_pool": _global_avg_pool,
    "pad_channels": _pad_channels,
    "flatten": _flatten,
    "linear": _linear,
}


def _graph_of(meta: Mapping, source: str = "deployment file") -> dict:
    """``meta["graph"]``, or the error saying why the file has none."""
    graph = meta.get("graph")
    if graph is None:
        why = meta.get("graph_unsupported") or "it was written by a recu without graph export"
        raise DeployFileError(f"{source}: the file has no graph: {why}".replace("\n", " "))
    return graph


def run_graph(meta: Mapping, tensors: Mapping[str, np.ndarray], x: np.ndarray, *,
              source: str = "deployment file") -> np.ndarray:
    """The network's output (the logits) for the float input ``x``, computed from the graph in NumPy.

    Args:
        meta: the file's metadata (``recu.deploy.read_metadata``), with ``graph`` and ``binary_layers``.
        tensors: the file's tensors as NumPy arrays (``safetensors.numpy.load_file``).
        x: float input, NCHW ``(N, C, H, W)`` (or ``(N, C)`` for a network that starts with a linear layer).
        source: what the errors call the file (its path).

    Returns:
        float32, the output in PyTorch's layout ((N, classes) for a classifier).

    Raises:
        DeployFileError: (a ValueError) the file has no graph (the message says why), or the graph or a
            tensor it reads fails its checks (:func:`recu.deploy.validate.check_graph`, run on every
            call; :func:`run_checked_graph` runs a checked file without them).
        ValueError: an input whose shape the network cannot take.
    """
    _graph_of(meta, source)  # no graph: say why, before checking one
    check_graph(meta, tensors, source)
    return run_checked_graph(meta, tensors, x)


def run_checked_graph(meta: Mapping, tensors: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """:func:`run_graph` on a file that passed its checks (a loaded model's, once at load): no checks."""
    graph = _graph_of(meta)
    x = np.asarray(x)
    if x.ndim not in (2, 4) or not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"input must be a numeric (N, C, H, W) or (N, C) array, got shape {x.shape}, dtype {x.dtype}")
    channels = graph["input"].get("channels")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"the network takes {channels} input channels, got input of shape {x.shape}")
    x = x.astype(np.float32)
    values = {graph["input"]["name"]: np.ascontiguousarray(x.transpose(0, 2, 3, 1) if x.ndim == 4 else x)}
    last_use = {name: i for i, node in enumerate(graph["nodes"]) for name in node["inputs"]}
    ctx = _Context(meta, tensors)
    for i, node in enumerate(graph["nodes"]):
        values[node["name"]] = _OPS[node["op"]](ctx, node, *(values[name] for name in node["inputs"]))
        for name in node["inputs"]:  # free activations nothing later reads
            if last_use[name] == i and name != graph["output"]:
                values.pop(name, None)
    out = values[graph["output"]]
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2) if out.ndim == 4 else out, dtype=np.float32)
