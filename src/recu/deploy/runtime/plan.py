"""The whole network as one compiled call: :class:`CompiledModel`, built from a file's graph.

:func:`load_plan` reads a deployment file (safetensors + the graph IR that
:func:`recu.deploy.export` writes, ``docs/file-format.md``) and returns a :class:`CompiledModel`:
numpy (or torch) NCHW images in, logits out. For each input shape it builds a plan once - the
graph's operations as rows of an int64 table, with BatchNorm + activation and add + activation
fused, a residual add + activation run inside the binary conv that feeds it, a BatchNorm +
activation inside the float conv that feeds it (row by row, while the row is in cache) and the
ImageNet stem's max pool inside the stem's row, every activation at a fixed offset of one float32
arena (buffers reused once their last reader has run), the parameters and binary weights in flat
arrays laid out for the chosen kernels - and each call is then a single numba call (:func:`recu.deploy.runtime.kernels.plan_exec.run_plan`).
Without numba the same graph runs on NumPy (:mod:`recu.deploy.graph_numpy`), slowly.

Nothing here imports torch: a deployment machine needs numpy, numba and safetensors only.
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Optional, Union

import numpy as np

from .fileio import read_metadata, read_tensors
from .kernels.cpu import ENV_VAR, has_vpopcntdq, layer_kernel, numba_available, resolve_kernel, target_has_avx512f
from .kernels.reference import epilogue_table
from .kernels.weights import PackedConvWeights
from .pack import unpackbits_bytes
from .validate import DeployFileError, check_file

__all__ = ["CompiledModel", "load_plan", "PlanError"]

ACT_NONE, ACT_HARDTANH, ACT_RELU = 0, 1, 2
_ALIGN = 16  # float32 elements: every arena and parameter offset on a 64-byte boundary
_FUSABLE_ACTS = ("hardtanh", "relu")


def taps_enabled() -> bool:
    """Tap-row packing of narrow layers on the avx512 path (:mod:`.kernels.taps`); ``RECU_DEPLOY_TAPS=0``
    turns it off (to measure against the one-word-per-tap kernel: both give the same bits)."""
    return os.environ.get("RECU_DEPLOY_TAPS", "1").strip() != "0"


def packs_taps(kind: str, c_in: int, kw: int) -> bool:
    """Whether the plan runs a binary conv on kernel path ``kind`` with its kernel rows' taps packed
    together (``c_in`` input channels, kernel width ``kw``)."""
    from .kernels.taps import use_taps

    return kind == "avx512" and use_taps(c_in, kw) and taps_enabled()


def plan_layer_kernel(impl: Optional[str], c_in: int, kw: int) -> str:
    """The path of one binary conv in a plan: :func:`~recu.deploy.runtime.kernels.cpu.layer_kernel`, except that an
    ``auto`` choice of ``amx`` takes the kernel-row packed ``avx512`` path for every layer it packs
    (``C % 16 == 0``, kernel width > 1): in a plan that path writes the next layer's signs from its
    register epilogue, fuses the skip connection and runs the edge columns in register blocks. In
    ResNet-18's benchmark (2026-12-01) it met 10x against float PyTorch on one thread in 6 runs of 6,
    AMX from 128 channels in 3 of 6 (slow spells cost AMX ~2x), and on two threads AMX rows ran slower
    than on one; in quiet minutes AMX was ~5% faster on one thread. An explicit ``amx`` is kept, and so
    is AMX in the per-layer engine."""
    kind = layer_kernel(impl, c_in)
    choice = impl if impl is not None else os.environ.get(ENV_VAR, "auto")
    if kind == "amx" and choice.strip().lower() == "auto" and has_vpopcntdq() and packs_taps("avx512", c_in, kw):
        return "avx512"
    return kind


class PlanError(DeployFileError):
    """The file's graph cannot be planned (an operation or shape the compiled runtime does not run, or
    an input shape the graph cannot take); a :class:`~recu.deploy.validate.DeployFileError`."""


def _round_up(v: int, m: int) -> int:
    return -(-v // m) * m


@dataclass
class _Arrays:
    """Growing flat arrays of one dtype with aligned offsets."""

    dtype: Any
    align: int = _ALIGN
    parts: list = field(default_factory=list)
    size: int = 0

    def add(self, values: np.ndarray) -> int:
        values = np.ascontiguousarray(values, dtype=self.dtype).reshape(-1)
        start = _round_up(self.size, self.align)
        if start > self.size:
            self.parts.append(np.zeros(start - self.size, self.dtype))
        self.parts.append(values)
        self.size = start + values.size
        return start

    def array(self) -> np.ndarray:
        from .kernels.amx import aligned_empty

        out = aligned_empty(max(self.size, 1), self.dtype)
        out[:self.size] = np.concatenate(self.parts) if self.parts else np.zeros(0, self.dtype)
        return out


class _Arena:
    """Offsets of activation buffers: a buffer is reused once its value's last reader has run."""

    def __init__(self) -> None:
        self.size = 0
        self.free: list[tuple[int, int]] = []  # (offset, capacity)

    def take(self, n: int) -> int:
        n = _round_up(max(n, 1), _ALIGN)
        fits = [i for i, (_, cap) in enumerate(self.free) if cap >= n]
        if fits:
            i = min(fits, key=lambda j: self.free[j][1])
            return self.free.pop(i)[0]
        ofs = self.size
        self.size += n
        return ofs

    def give(self, ofs: int, n: int) -> None:
        self.free.append((ofs, _round_up(max(n, 1), _ALIGN)))


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, (int, np.integer)) else (int(v[0]), int(v[1]))


def _pool_size(size: int, k: int, s: int, p: int) -> int:
    return (size + 2 * p - k) // s + 1


def _out_size(node: "_Node", size: int, k: int, s: int, p: int) -> int:
    """:func:`_pool_size`, refusing an input too small for the window (a value of no pixels would be
    a buffer of negative size)."""
    out = _pool_size(size, k, s, p)
    if out < 1:
        raise PlanError(f"node {node.name}: a size-{size} input is smaller than its {k}-wide window")
    return out


def _vector(node: "_Node", role: str, v: np.ndarray, channels: int, one: bool = False) -> np.ndarray:
    """A per-channel parameter after checking its length against the input's channels: the kernels
    read ``channels`` values from its offset in the parameter array (``one``: a single value may be
    broadcast). The file's checks cannot do this where a flatten of an unknown image size precedes."""
    if v.size != channels and not (one and v.size == 1):
        raise PlanError(f"node {node.name} ({node.op}): {v.size} {role} values for an input of {channels} channels")
    return v


@dataclass
class _Node:
    """A graph node after fusion: op, inputs, attrs, tensors, the activation fused into it."""

    name: str
    op: str
    inputs: list[str]
    attrs: dict
    tensors: dict
    act: int = ACT_NONE
    lo: float = -1.0
    hi: float = 1.0
    residual: Optional[str] = None  # binary conv: the skip connection added to its output (then ``act``)
    bn: Optional["_Node"] = None  # float conv: the BatchNorm applied to its output (then ``act``)
    pool: Optional["_Node"] = None  # float conv with ``bn``: the max pool reading its output


def _act_of(node: dict) -> tuple[int, float, float]:
    if node["op"] == "relu":
        return ACT_RELU, 0.0, 0.0
    a = node.get("attrs", {})
    return ACT_HARDTANH, float(a.get("min", -1.0)), float(a.get("max", 1.0))


def _count_users(input_lists: Iterable[list[str]], output: str) -> dict[str, int]:
    """How many nodes read each value (the graph's output counts as one reader)."""
    users = {output: 1}
    for inputs in input_lists:
        for i in inputs:
            users[i] = users.get(i, 0) + 1
    return users


def fuse_graph(graph: dict) -> tuple[list[_Node], str]:
    """Nodes with each activation folded into a batch_norm, add, channel_bias or float conv that
    feeds it alone; returns (nodes, output name)."""
    nodes = graph["nodes"]
    users = _count_users((nd["inputs"] for nd in nodes), graph["output"])
    out: list[_Node] = []
    by_name: dict[str, _Node] = {}
    renamed: dict[str, str] = {}
    for nd in nodes:
        inputs = [renamed.get(i, i) for i in nd["inputs"]]
        src = by_name.get(inputs[0]) if inputs else None
        if (nd["op"] in _FUSABLE_ACTS and src is not None and src.act == ACT_NONE
                and src.op in ("batch_norm", "add", "channel_bias") and users.get(inputs[0], 0) == 1):
            src.act, src.lo, src.hi = _act_of(nd)
            renamed[nd["name"]] = src.name
            continue
        node = _Node(nd["name"], nd["op"], inputs, dict(nd.get("attrs") or {}), dict(nd.get("tensors") or {}))
        if node.op in _FUSABLE_ACTS:
            node.act, node.lo, node.hi = _act_of(nd)
        out.append(node)
        by_name[node.name] = node
    return out, renamed.get(graph["output"], graph["output"])


# fold(node, nodes by name, reader counts) -> (the producer it absorbs, the fused node) or None
_Fold = Callable[[_Node, dict[str, _Node], dict[str, int]], Optional[tuple[_Node, _Node]]]


def _fold_into_producers(nodes: list[_Node], output: str, fold: _Fold) -> tuple[list[_Node], str]:
    """Each node that ``fold`` fuses with a producer is replaced, at its own place and under its own
    name, by the fused node; the producer's own entry is dropped."""
    users = _count_users((nd.inputs for nd in nodes), output)
    by_name = {nd.name: nd for nd in nodes}
    moved: set[int] = set()
    out: list[_Node] = []
    for nd in nodes:
        fused = fold(nd, by_name, users)
        if fused is not None:
            producer, nd = fused
            moved.add(id(producer))
        out.append(nd)
    return [nd for nd in out if id(nd) not in moved], output


def _residual_into_binary_conv(nd: _Node, by_name: dict[str, _Node],
                               users: dict[str, int]) -> Optional[tuple[_Node, _Node]]:
    if nd.op != "add" or len(nd.inputs) != 2 or nd.inputs[0] == nd.inputs[1]:
        return None
    for mine, other in (nd.inputs, nd.inputs[::-1]):
        conv = by_name.get(mine)
        if conv is not None and conv.op == "binary_conv2d" and users.get(mine) == 1:
            return conv, replace(conv, name=nd.name, residual=other, act=nd.act, lo=nd.lo, hi=nd.hi)
    return None


def _batch_norm_into_conv(nd: _Node, by_name: dict[str, _Node],
                          users: dict[str, int]) -> Optional[tuple[_Node, _Node]]:
    conv = by_name.get(nd.inputs[0]) if nd.op == "batch_norm" and nd.inputs else None
    if (conv is None or conv.op != "conv2d" or conv.bn is not None or conv.act != ACT_NONE
            or users.get(conv.name) != 1):
        return None
    return conv, replace(conv, name=nd.name, bn=nd, act=nd.act, lo=nd.lo, hi=nd.hi)


def _channel_pad_into_avg_pool(nd: _Node, by_name: dict[str, _Node],
                               users: dict[str, int]) -> Optional[tuple[_Node, _Node]]:
    pool = by_name.get(nd.inputs[0]) if nd.op == "pad_channels" and nd.inputs else None
    if (pool is None or pool.op != "avg_pool2d" or pool.act != ACT_NONE or nd.act != ACT_NONE
            or "pad_before" in pool.attrs or users.get(pool.name) != 1):
        return None
    attrs = {**pool.attrs, "pad_before": int(nd.attrs["before"]), "pad_after": int(nd.attrs["after"])}
    return pool, replace(pool, name=nd.name, attrs=attrs)


def _max_pool_into_conv(nd: _Node, by_name: dict[str, _Node],
                        users: dict[str, int]) -> Optional[tuple[_Node, _Node]]:
    conv = by_name.get(nd.inputs[0]) if nd.op == "max_pool2d" and nd.inputs else None
    if (conv is None or conv.op != "conv2d" or conv.bn is None or conv.pool is not None or nd.act != ACT_NONE
            or users.get(conv.name) != 1):
        return None
    return conv, replace(conv, name=nd.name, pool=nd)


def fuse_conv_max_pool(nodes: list[_Node], output: str) -> tuple[list[_Node], str]:
    """Fold each ``max_pool2d`` into the float conv (with its BatchNorm fused) that feeds it alone - the
    ImageNet stem: one row computes the conv's rows a band at a time and pools each band while it is
    in cache (on one thread), instead of reading the 3.2 MB conv output back from memory."""
    return _fold_into_producers(nodes, output, _max_pool_into_conv)


def fuse_pool_channel_pad(nodes: list[_Node], output: str) -> tuple[list[_Node], str]:
    """Fold each ``pad_channels`` into the ``avg_pool2d`` that feeds it alone (the option-A shortcut of
    the CIFAR ResNets): one pass writes the pooled channels and the zeros around them."""
    return _fold_into_producers(nodes, output, _channel_pad_into_avg_pool)


def fuse_residuals(nodes: list[_Node], output: str) -> tuple[list[_Node], str]:
    """Fold each ``add`` (with its activation) into a binary conv that feeds that add alone: the conv's
    row then adds the skip connection and applies the activation to each output row while it is still
    in cache, instead of a pass of its own. The fused node runs where the add ran (both the conv's
    input and the skip exist there) under the add's name, so the add's users read it unchanged."""
    return _fold_into_producers(nodes, output, _residual_into_binary_conv)


def fuse_conv_batch_norm(nodes: list[_Node], output: str) -> tuple[list[_Node], str]:
    """Fold each ``batch_norm`` (with its activation) into the float conv that feeds it alone: the conv
    row applies it to each output row while it is in cache (the same float32 steps; not folded into
    the weights, which would round differently). The fused node takes the BatchNorm's name and place."""
    return _fold_into_producers(nodes, output, _batch_norm_into_conv)


def pad_input_for_conv(nodes: list[_Node], name: str, tensors: dict) -> int:
    """Zero columns the input row writes around the network input: the horizontal padding of the float
    conv that is its only reader (the stem), which then runs on register blocks alone, no edge pixels
    (marked on the node as ``input_padded``). Exact: the fma chain starts at +0.0 and never becomes
    -0.0, so a padding tap adds an exact 0 - unless a weight is inf or NaN (then 0 * w is NaN)."""
    readers = [nd for nd in nodes if name in nd.inputs]
    if len(readers) != 1 or readers[0].op != "conv2d" or readers[0].inputs != [name]:
        return 0
    conv = readers[0]
    pw = _pair(conv.attrs.get("padding", 0))[1]
    key = conv.tensors.get("weight")
    if pw == 0 or key not in tensors or not np.isfinite(np.asarray(tensors[key], np.float32)).all():
        return 0
    conv.attrs["input_padded"] = pw
    return pw


class _Builder:
    """Turns fused nodes into the executor's tables for one input shape, kernel choice and thread count."""

    def __init__(self, meta: dict, tensors: dict, impl: Optional[str], threads: int) -> None:
        from .kernels import plan_exec as pk

        self.pk = pk
        self.meta, self.tensors, self.impl, self.threads = meta, tensors, impl, threads
        self.layers = {layer["name"]: layer for layer in meta["binary_layers"]}
        self.fp = _Arrays(np.float32)
        self.fp.add(np.array([-1.0, 1.0], np.float32))  # offset 0: the default clamp bounds
        self.u64 = _Arrays(np.uint64, 8)
        self.i8 = _Arrays(np.int8, 64)
        self.i64 = _Arrays(np.int64, 8)
        self.rows: list[np.ndarray] = []
        self.vals: list[list[int]] = []
        self.value_of: dict[str, int] = {}
        self.pk_words = 1
        self.producer_row: dict[int, int] = {}
        self.scratch_rows: dict[int, int] = {}  # row -> its scratch value (read as F_IN1, see _scratch)
        self.sign_words = 0  # row buffers of tap-packed rows, placed after the packing scratch
        self.sign_patches: list[tuple[int, int]] = []  # (row, parameter) holding an offset into them
        self.x8_bytes = 64
        self.uses_amx = False

    # -- values ---------------------------------------------------------------------------------
    def _value(self, name: str, shape: tuple[int, int, int, int]) -> int:
        self.value_of[name] = len(self.vals)
        self.vals.append([0, *shape])
        return self.value_of[name]

    def shape(self, name: str) -> tuple[int, int, int, int]:
        return tuple(self.vals[self.value_of[name]][1:])  # type: ignore[return-value]

    def _row(self, op: int, ins: list[str], out: int, params: list[int], work: int) -> None:
        from .kernels.threads import PARALLEL_MIN_WORK

        row = np.zeros(self.pk.N_FIELDS, np.int64)
        row[self.pk.F_OP] = op
        row[self.pk.F_IN0] = self.value_of[ins[0]] if ins else -1
        row[self.pk.F_IN1] = self.value_of[ins[1]] if len(ins) > 1 else -1
        row[self.pk.F_OUT] = out
        row[self.pk.F_PARALLEL] = int(self.threads > 1 and work >= PARALLEL_MIN_WORK)
        row[self.pk.F_P:self.pk.F_P + len(params)] = params
        self.producer_row[out] = len(self.rows)
        self.rows.append(row)

    def _scratch(self, name: str, shape: tuple[int, int, int, int]) -> str:
        """A value that only the next row writes and reads (its arena buffer lives for that row)."""
        self.scratch_rows[len(self.rows)] = self._value(name, shape)
        return name

    @staticmethod
    def _pool_params(node: _Node) -> list[int]:
        """kh, kw, sh, sw, ph, pw of a pooling node."""
        kh, kw = _pair(node.attrs["kernel"])
        sh, sw = _pair(node.attrs.get("stride") or node.attrs["kernel"])
        ph, pw = _pair(node.attrs.get("padding", 0))
        return [kh, kw, sh, sw, ph, pw]

    def _tensor(self, node: _Node, role: str) -> np.ndarray:
        key = node.tensors.get(role)
        if key is None or key not in self.tensors:
            raise PlanError(f"node {node.name} ({node.op}): the file lacks its {role!r} tensor ({key})")
        return np.asarray(self.tensors[key], dtype=np.float32)

    def _act_params(self, node: _Node) -> list[int]:
        bounds = 0 if (node.lo, node.hi) == (-1.0, 1.0) else self.fp.add(np.array([node.lo, node.hi], np.float32))
        return [node.act, bounds]

    # -- operations -----------------------------------------------------------------------------
    def input(self, name: str, shape: tuple[int, int, int, int], pad: int = 0) -> None:
        """The NCHW input as an NHWC value with ``pad`` zero columns each side."""
        n, h, w, c = shape
        v = self._value(name, (n, h, w + 2 * pad, c))
        self._row(self.pk.OP_INPUT, [], v, [pad], int(np.prod(shape)))

    def binary(self, node: _Node) -> None:
        layer = self.layers.get(node.attrs.get("layer"))
        if layer is None:
            raise PlanError(f"node {node.name}: no binary layer {node.attrs.get('layer')!r} in the file")
        n, h, w, c = self.shape(node.inputs[0])
        if node.op == "binary_linear":
            if (h, w) != (1, 1):
                raise PlanError(f"node {node.name}: a binary linear layer needs (N, C) input")
        c_in, c_out = int(layer["in_channels"]), int(layer["out_channels"])
        if c != c_in:
            raise PlanError(f"node {node.name}: input has {c} channels, the layer {c_in}")
        kh, kw = _pair(layer["kernel_size"])
        sh, sw = _pair(layer["stride"])
        ph, pw = _pair(layer["padding"])
        oh, ow = _pool_size(h, kh, sh, ph), _pool_size(w, kw, sw, pw)
        if oh < 1 or ow < 1:
            raise PlanError(f"node {node.name}: a {h}x{w} input is smaller than the {kh}x{kw} kernel")
        name = layer["name"]
        bits = unpackbits_bytes(np.asarray(self.tensors[f"binary.{name}.bits"]), c_in)
        weights = PackedConvWeights(bits, c_in)
        if weights.kernel_size != (kh, kw) or weights.out_channels != c_out:  # the kernels index bits so
            raise PlanError(f"node {node.name}: bits {bits.shape} do not fit {c_out} outputs of a {kh}x{kw} kernel")
        epi = epilogue_table(c_out, *(self.tensors[f"binary.{name}.{k}"] for k in ("alpha", "bias", "bn_scale",
                                                                                       "bn_shift")))
        if node.residual is not None and self.shape(node.residual) != (n, oh, ow, c_out):
            raise PlanError(f"node {node.name}: adds {self.shape(node.residual)} to {(n, oh, ow, c_out)}")
        kind = plan_layer_kernel(self.impl, c_in, kw)
        cw = bits.shape[3]
        work = n * oh * ow * bits.size // 8
        params = [c_out, kh, kw, sh, sw, ph, pw, self.fp.add(epi)]
        v = self._value(node.name, (n, oh, ow, c_out))
        if kind == "amx":
            self._amx(weights, (n, h, w, c), (kh, kw, sh, sw, ph, pw), params, work, node, v)
            return
        if packs_taps(kind, c_in, kw):
            self._taps(bits, c_in, (n, h, w), (kw, sw, pw, oh, ow), params, work, node, v)
            return
        self.pk_words = max(self.pk_words, n * h * w * cw)
        if kind == "avx512":
            op, wb = self.pk.OP_BCONV_AVX512, weights.blocked()
        elif kind == "avx2":
            op, wb = self.pk.OP_BCONV_AVX2, weights.blocked_avx2()
        else:
            op, wb = self.pk.OP_BCONV_PORTABLE, weights.bits
        params += [self.u64.add(wb), wb.size]
        self._binary_row(op, node, v, params, work)

    def _taps(self, bits: np.ndarray, c_in: int, xshape: tuple, geom: tuple, params: list[int], work: int,
              node: _Node, v: int) -> None:
        """A narrow layer on the avx512 path with each kernel row's taps packed together, reading its
        input's signs from row buffers of its own; a tap-packed producer of that input writes them."""
        from .kernels import taps as tk

        pk = self.pk
        n, h, w = xshape
        kw, sw, pw, oh, ow = geom
        kh, sh, ph = params[1], params[3], params[5]
        variant, taps, ranges = tk.column_variants(w, kw, sw, pw, ow)
        if tk.all_blocks(params[0], ow):
            ranges = ranges[:1]  # every column reads the full kernel's weights: no variants
        rowvar, row_pairs = tk.row_variants(h, kh, sh, ph, oh)
        starts = tk.padding_starts(bits, c_in, w, sw, pw, ow, row_pairs)
        wb = tk.block_tap_weights(bits, c_in, ranges)
        rowbytes = tk.row_bytes(w, c_in, pw)
        signs = self.sign_words
        self.sign_words += n * h * rowbytes // 8
        params += [self.u64.add(wb), wb.size, tk.tap_words(c_in, kw),
                   self.u64.add(np.concatenate([variant, taps, rowvar]).astype(np.uint64)),
                   *tk.interior_columns(variant), rowbytes, signs,
                   int(self._link_signs(node.inputs[0], signs, rowbytes, pw * c_in // 8)), -1, 0, 0]
        self.sign_patches.append((len(self.rows), pk.P_TAP_SIGNS))
        self._binary_row(pk.OP_BCONV_TAPS, node, v, params, work)
        row = self.rows[-1]  # its padding starts go after the skip connection's columns
        row[pk.F_P + pk.P_TAP_STARTS] = self.u64.add(starts.view(np.uint64))
        row[pk.F_P + pk.P_TAP_STARTS_SIZE] = starts.size

    def _link_signs(self, value: str, signs: int, rowbytes: int, col0: int) -> bool:
        """Let the row that produces ``value`` write its signs into the row buffers at ``signs`` if it can:
        a tap-packed row with a multiple of 16 output channels (its values are final in registers)
        whose signs no other layer takes yet."""
        pk = self.pk
        r = self.producer_row.get(self.value_of[value])
        if r is None:
            return False
        row = self.rows[r]
        if row[pk.F_OP] != pk.OP_BCONV_TAPS or row[pk.F_P] % 16 != 0 or row[pk.F_P + pk.P_TAP_OUT] >= 0:
            return False
        row[pk.F_P + pk.P_TAP_OUT], row[pk.F_P + pk.P_TAP_OUT_ROW], row[pk.F_P + pk.P_TAP_OUT_COL0] = signs, rowbytes, col0
        self.sign_patches.append((r, pk.P_TAP_OUT))
        return True

    def _amx(self, weights: PackedConvWeights, xshape: tuple, geom: tuple, params: list[int], work: int,
             node: _Node, v: int) -> None:
        from .kernels import amx as ak
        from .kernels.threads import PARALLEL_MIN_WORK

        n, h, w, c = xshape
        kh, kw, sh, sw, ph, pw = geom
        cw = weights.bits.shape[3]
        toff, abase, astride, pix, nbytes = ak.plan(n, h, w, cw, kh, kw, sh, sw, ph, pw)
        tiles = weights.amx_tiles()
        if tiles.dtype == np.int8:
            op, start = self.pk.OP_BCONV_AMX8, self.i8.add(tiles)
        else:
            op, start = self.pk.OP_BCONV_AMX1, self.u64.add(tiles)
        parallel = self.threads > 1 and work >= PARALLEL_MIN_WORK
        params += [start, tiles.size, self.i64.add(toff), toff.size, self.i64.add(abase), abase.size,
                   self.i64.add(pix), pix.size, astride, 64 * cw, 4 * self.threads if parallel else 1, nbytes]
        self.x8_bytes = max(self.x8_bytes, nbytes)
        self.uses_amx = True
        self._binary_row(op, node, v, params, work)

    def _binary_row(self, op: int, node: _Node, v: int, params: list[int], work: int) -> None:
        """A binary conv's row; with its skip connection fused, the residual is the row's second input."""
        ins = node.inputs
        if node.residual is not None:
            ins = [node.inputs[0], node.residual]
            params = params + [0] * (self.pk.P_RES_ACT - len(params)) + self._act_params(node)
        self._row(op, ins, v, params, work)

    def float_node(self, node: _Node) -> None:
        pk = self.pk
        n, h, w, c = self.shape(node.inputs[0])
        size = n * h * w * c
        act = self._act_params(node)
        op = node.op
        if op == "conv2d":
            weight = self._tensor(node, "weight")  # (O, C, KH, KW)
            o, ci, kh, kw = weight.shape
            if ci != c:
                raise PlanError(f"node {node.name}: input has {c} channels, the conv {ci}")
            sh, sw = _pair(node.attrs.get("stride", 1))
            ph, pw = _pair(node.attrs.get("padding", 0))
            pw -= int(node.attrs.get("input_padded", 0))  # columns its input already has
            bias = self._tensor(node, "bias") if "bias" in node.tensors else np.zeros(o, np.float32)
            _vector(node, "bias", bias, o)
            oh, ow = _out_size(node, h, kh, sh, ph), _out_size(node, w, kw, sw, pw)
            ins = node.inputs
            if node.pool is None:
                v = self._value(node.name, (n, oh, ow, o))
            else:  # the conv's output is the row's own scratch (F_IN1), the pooled value its output
                ins = [node.inputs[0], self._scratch(node.name + "/conv", (n, oh, ow, o))]
                pool_params = self._pool_params(node.pool)
                pooled = (_out_size(node, oh, *pool_params[0::2]),  # kh sh ph
                          _out_size(node, ow, *pool_params[1::2]))  # kw sw pw
                v = self._value(node.name, (n, *pooled, o))
            params = act + [kh, kw, self.fp.add(weight.transpose(2, 3, 1, 0)), self.fp.add(bias), sh, sw, ph, pw]
            assert len(params) == pk.P_CONV_BN
            if node.bn is not None:
                scale, shift = (_vector(node.bn, k, self._tensor(node.bn, k), o) for k in ("scale", "shift"))
                params += [1, self.fp.add(scale), self.fp.add(shift)]
            else:
                params += [0, 0, 0]
            params.append(int(target_has_avx512f()))
            assert len(params) == pk.P_CONV_POOL
            params += [0] * 7 if node.pool is None else [1, *pool_params]
            self._row(pk.OP_CONV, ins, v, params, n * oh * ow * o * c * kh * kw // 8)
        elif op == "batch_norm":
            v = self._value(node.name, (n, h, w, c))
            scale, shift = (_vector(node, k, self._tensor(node, k), c) for k in ("scale", "shift"))
            params = act + [self.fp.add(scale), self.fp.add(shift)]
            self._row(pk.OP_AFFINE_ACT, node.inputs, v, params, size)
        elif op == "add":
            if self.shape(node.inputs[1]) != (n, h, w, c):
                raise PlanError(f"node {node.name}: adds {self.shape(node.inputs[1])} to {(n, h, w, c)}")
            v = self._value(node.name, (n, h, w, c))
            self._row(pk.OP_ADD_ACT, node.inputs, v, act, size)
        elif op == "channel_bias":
            v = self._value(node.name, (n, h, w, c))
            bias = self._tensor(node, "bias").reshape(-1)  # stored as the module's (1, C, 1, 1)
            _vector(node, "bias", bias, c)
            self._row(pk.OP_BIAS_ACT, node.inputs, v, act + [self.fp.add(bias)], size)
        elif op in _FUSABLE_ACTS:
            v = self._value(node.name, (n, h, w, c))
            self._row(pk.OP_ACT, node.inputs, v, act, size)
        elif op == "prelu":
            weight = _vector(node, "weight", self._tensor(node, "weight").reshape(-1), c, one=True)
            v = self._value(node.name, (n, h, w, c))
            self._row(pk.OP_PRELU, node.inputs, v, act + [self.fp.add(weight), weight.size], size)
        elif op in ("avg_pool2d", "max_pool2d"):
            kh, kw, sh, sw, ph, pw = self._pool_params(node)
            oh, ow = _out_size(node, h, kh, sh, ph), _out_size(node, w, kw, sw, pw)
            before, after = int(node.attrs.get("pad_before", 0)), int(node.attrs.get("pad_after", 0))
            v = self._value(node.name, (n, oh, ow, before + c + after))
            params = act + [kh, kw, sh, sw, ph, pw]
            if op == "avg_pool2d":
                params += [int(bool(node.attrs.get("count_include_pad", True))), before, after]
            self._row(pk.OP_AVG_POOL if op == "avg_pool2d" else pk.OP_MAX_POOL, node.inputs, v, params, size)
        elif op == "global_avg_pool":
            v = self._value(node.name, (n, 1, 1, c))
            self._row(pk.OP_GLOBAL_AVG_POOL, node.inputs, v, act, size)
        elif op == "pad_channels":
            before, after = int(node.attrs["before"]), int(node.attrs["after"])
            v = self._value(node.name, (n, h, w, c + before + after))
            self._row(pk.OP_PAD_CHANNELS, node.inputs, v, act + [before, after], size)
        elif op == "flatten" and (h, w) == (1, 1):  # NHWC (N, 1, 1, C) is already (N, C): the same value
            self.value_of[node.name] = self.value_of[node.inputs[0]]
        elif op == "flatten":
            v = self._value(node.name, (n, 1, 1, h * w * c))
            self._row(pk.OP_FLATTEN, node.inputs, v, act, size)
        elif op == "linear":
            weight = self._tensor(node, "weight")
            o, i = weight.shape
            if (h, w, c) != (1, 1, i):
                raise PlanError(f"node {node.name}: linear layer of {i} inputs on a {(c, h, w)} input")
            bias = self._tensor(node, "bias") if "bias" in node.tensors else np.zeros(o, np.float32)
            _vector(node, "bias", bias, o)
            v = self._value(node.name, (n, 1, 1, o))
            self._row(pk.OP_LINEAR, node.inputs, v, act + [self.fp.add(weight), self.fp.add(bias)], n * o * i // 8)
        else:
            raise PlanError(f"node {node.name}: operation {op!r} is not supported by the compiled runtime")

    # -- memory ---------------------------------------------------------------------------------
    def place_values(self, output: int) -> int:
        """Arena offsets for every value (reusing dead buffers); returns the arena size."""
        pk = self.pk
        last = {}
        for r, row in enumerate(self.rows):
            for f in (pk.F_IN0, pk.F_IN1):
                if row[f] >= 0:
                    last[int(row[f])] = r
        last[output] = len(self.rows)
        arena = _Arena()
        for r, row in enumerate(self.rows):
            v = int(row[pk.F_OUT])
            self.vals[v][0] = arena.take(int(np.prod(self.vals[v][1:])))
            if r in self.scratch_rows:  # given back below, this row being its last reader
                u = self.scratch_rows[r]
                self.vals[u][0] = arena.take(int(np.prod(self.vals[u][1:])))
            for f in (pk.F_IN0, pk.F_IN1):
                u = int(row[f])
                if u >= 0 and last.get(u) == r and u != v and (f == pk.F_IN0 or u != row[pk.F_IN0]):
                    arena.give(self.vals[u][0], int(np.prod(self.vals[u][1:])))
        return arena.size


@dataclass
class _Plan:
    """Everything one input shape needs: the executor's tables and its arrays."""

    ops: np.ndarray
    vals: np.ndarray
    arena: np.ndarray
    fp: np.ndarray
    u64: np.ndarray
    i8: np.ndarray
    i64: np.ndarray
    pk: np.ndarray
    x8: np.ndarray
    output: int
    uses_amx: bool
    logits: np.ndarray = field(init=False)  # the output value's arena view as (N, features)

    def __post_init__(self) -> None:
        o = self.vals[self.output]
        n, h, w, c = (int(v) for v in o[1:])
        self.logits = self.arena[o[0]:o[0] + n * h * w * c].reshape(n, h * w * c)


def build_plan(meta: dict, tensors: dict, input_shape: tuple[int, int, int, int], *, impl: Optional[str] = None,
               threads: int = 1) -> _Plan:
    """The plan of the file's graph for an NCHW ``input_shape``."""
    from .kernels import amx as ak

    graph = meta.get("graph")
    if not graph:
        raise PlanError(meta.get("graph_unsupported") or "the file has no graph (written by an older recu?)")
    nodes, output = fuse_conv_max_pool(*fuse_conv_batch_norm(*fuse_residuals(*fuse_graph(graph))))
    nodes, output = fuse_pool_channel_pad(nodes, output)
    b = _Builder(meta, tensors, impl, threads)
    n, c, h, w = input_shape
    b.input(graph["input"]["name"], (n, h, w, c), pad=pad_input_for_conv(nodes, graph["input"]["name"], tensors))
    for node in nodes:
        if node.op in ("binary_conv2d", "binary_linear"):
            b.binary(node)
        else:
            b.float_node(node)
    out = b.value_of[output]
    size = b.place_values(out)
    for r, col in b.sign_patches:  # the tap-packed rows' buffers go after the packing scratch
        b.rows[r][b.pk.F_P + col] += b.pk_words
    ops = np.stack(b.rows)
    vals = np.asarray(b.vals, dtype=np.int64)
    scratch = ak.aligned_empty(b.pk_words + b.sign_words, np.uint64)
    scratch[:] = 0  # the row buffers' padding: their producers write only the pixels
    return _Plan(ops, vals, ak.aligned_empty(size, np.float32), b.fp.array(), b.u64.array(), b.i8.array(),
                 b.i64.array(), scratch, ak.aligned_empty(b.x8_bytes, np.int8),
                 out, b.uses_amx)


def _as_numpy(x: Any) -> tuple[np.ndarray, bool]:
    """(float32 C-contiguous array, whether ``x`` was a torch tensor) - without importing torch."""
    is_torch = type(x).__module__.startswith("torch")
    if is_torch:
        x = x.detach().cpu().float().contiguous().numpy()
    return np.ascontiguousarray(x, dtype=np.float32), is_torch


class CompiledModel:
    """A deployment file's network as one compiled call: ``model(x)`` -> logits.

    ``x``: float (N, C, H, W) images as a numpy array or a torch tensor; the result is of the same
    kind, float32 (N, classes). Plans are built per input shape and thread count and kept (a few).
    Thread-safe: calls from several Python threads are serialised (the plan's buffers are shared).
    ``meta`` and ``tensors`` are checked here (:func:`recu.deploy.validate.check_file`; errors name
    ``source``), once: the calls trust them.
    """

    def __init__(self, meta: dict, tensors: dict, *, impl: Optional[str] = None,
                 num_threads: Optional[int] = None, source: str = "deployment file") -> None:
        if not meta.get("graph"):
            raise PlanError(meta.get("graph_unsupported") or "the file has no graph (written by an older recu?)")
        check_file(meta, tensors, source)
        self.source = source
        self.metadata = meta
        self.tensors = tensors
        self.num_threads = num_threads
        self.impl = impl
        self.kernel = resolve_kernel(impl)
        channels = meta["graph"]["input"].get("channels")  # None: the model flattens its input first
        self.input_channels = None if channels is None else int(channels)
        self._plans: dict[tuple, _Plan] = {}
        self._lock = threading.Lock()
        self._pk: Any = None

    @property
    def class_names(self) -> Optional[list[str]]:
        """The name of each output class (logit column), when the file has them (a folder data set's)."""
        return self.metadata.get("class_names")

    def set_kernel(self, impl: Optional[str]) -> None:
        """Select the kernel path (None: ``RECU_DEPLOY_KERNEL`` / auto); plans are rebuilt."""
        self.kernel = resolve_kernel(impl)
        self.impl = impl
        self._plans.clear()

    def set_num_threads(self, n: Optional[int]) -> None:
        """Kernel threads (None: numba's default, all cores)."""
        self.num_threads = n

    def _threads(self) -> int:
        set_threads, default = self._executor()[1:]
        return set_threads(self.num_threads or default)

    def _check(self, x: np.ndarray) -> None:
        c = self.input_channels
        if x.ndim != 4 or (c is not None and x.shape[1] != c) or min(x.shape) < 1:
            raise ValueError(f"expected images (N, {'C' if c is None else c}, H, W), got shape {tuple(x.shape)}")

    def __call__(self, x: Any) -> Any:
        arr, is_torch = _as_numpy(x)
        self._check(arr)
        if self.kernel == "numpy":
            from .graph_numpy import run_checked_graph

            logits = run_checked_graph(self.metadata, self.tensors, arr)
        else:
            logits = self._run(arr)
        if is_torch:  # a tensor came in, so PyTorch is imported
            return sys.modules["torch"].from_numpy(logits)
        return logits

    def _run(self, x: np.ndarray) -> np.ndarray:
        pk = self._executor()[0]
        with self._lock:
            threads = self._threads()
            plan = self._plans.get((x.shape, threads)) or self._new_plan(x.shape, threads)
            if plan.uses_amx:
                from .kernels.amx import TILE_CONFIG
                from .kernels.cpu import request_amx

                if not request_amx():  # an AMX instruction without the OS's grant is SIGILL
                    raise RuntimeError("this process has no AMX tile state; use kernel 'avx512' or 'portable'")
                pk.run_plan_amx(plan.ops, plan.vals, plan.arena, plan.fp, plan.u64, plan.i8, plan.i64, plan.pk,
                                plan.x8, TILE_CONFIG, x)
            else:
                pk.run_plan(plan.ops, plan.vals, plan.arena, plan.fp, plan.u64, plan.pk, x)
            return plan.logits.copy()

    def _executor(self):  # type: ignore[no-untyped-def]
        """(the compiled executor module, set_num_threads, numba's default thread count), the on-disk
        cache checked once (kept: at batch 1 a ResNet-20 runs in ~0.2 ms, and per-call imports and checks
        were measurable)."""
        if self._pk is None:
            import numba

            from .kernels import plan_exec as pk
            from .kernels.cache import ensure_fresh_cache
            from .kernels.threads import set_num_threads

            ensure_fresh_cache()
            self._pk = (pk, set_num_threads, numba.config.NUMBA_NUM_THREADS)
        return self._pk

    def _new_plan(self, shape: tuple, threads: int) -> _Plan:
        if len(self._plans) >= 8:
            self._plans.clear()
        try:
            plan = build_plan(self.metadata, self.tensors, shape, impl=self.impl, threads=threads)
        except PlanError as e:  # the graph does not take this input shape: say which file
            raise PlanError(f"{self.source}: {e}".replace("\n", "\\n")) from None  # one line, whatever the names
        self._plans[(shape, threads)] = plan
        return plan

    def __repr__(self) -> str:
        spec = self.metadata.get("model_spec") or {}
        return (f"CompiledModel({spec.get('name', 'model')!r}, kernel={self.kernel!r}, "
                f"nodes={len(self.metadata['graph']['nodes'])})")


def load_plan(path: Union[str, os.PathLike], *, impl: Optional[str] = None,
              num_threads: Optional[int] = None) -> CompiledModel:
    """A deployment file as a :class:`CompiledModel` (needs the graph that ``recu.deploy.export`` writes).

    Raises:
        DeployFileError: (a ValueError; :class:`PlanError` for a file without a graph) the file is not a
            deployment file or fails its checks (:func:`recu.deploy.validate.check_file`).
    """
    meta = read_metadata(path)
    if not meta.get("graph"):
        why = meta.get("graph_unsupported")
        why = why.replace("\n", " ") if isinstance(why, str) and why else "no graph (written by an older recu?)"
        raise PlanError(f"{path}: {why}; load it with engine='layers' (needs PyTorch)")
    if impl is not None:
        resolve_kernel(impl)
    if not numba_available() and resolve_kernel(impl) != "numpy":
        raise RuntimeError("the compiled runtime needs numba (pip install recu-bnn[runtime]); or impl='numpy'")
    return CompiledModel(meta, read_tensors(path), impl=impl, num_threads=num_threads, source=str(path))
