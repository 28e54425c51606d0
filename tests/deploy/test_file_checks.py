"""A deployment file is checked before anything runs it (recu.deploy.runtime.validate).

A small network using every graph op is exported once; hypothesis then mutates the file hundreds of
ways (metadata fields, graph order and names, tensor shapes and dtypes, missing and extra tensors). Each
mutated file must either be refused with :class:`DeployFileError` (one line naming the file) or run to
exactly the original output, on the compiled plan and on the NumPy graph runner alike: never another
exception, a crash, or a silently different output.
"""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file
from torch import nn

from recu import ReCUConv2d
from recu.cli import main
from recu.deploy import DeployFileError, export, load, read_metadata, read_tensors
from recu.deploy.runtime.fileio import METADATA_KEY
from recu.deploy.exporter.graph import OPS as GRAPH_OPS
from recu.deploy.runtime.graph_numpy import run_graph
from recu.deploy.runtime.kernels import numba_available
from recu.deploy.runtime.validate import OPS, check_file
from recu.models._common import PadShortcut
from recu.models.reactnet import LearnableBias
from recu.nn import ReCULinear

from ._helpers import randomize

pytestmark = pytest.mark.skipif(not numba_available(), reason="the compiled plan needs numba")


class AllOps(nn.Module):
    """Every op of the graph IR on an 8x8 image: float conv + BatchNorm, channel bias, PReLU, binary
    convs (a tap-packed one too) with folded BatchNorms and skip connections, the PadShortcut, pools,
    global pool, flatten, BatchNorm1d, binary and float linear layers."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(12)
        self.move = LearnableBias(12)
        self.act = nn.PReLU(12)
        self.conv = ReCUConv2d(12, 12, 3, padding=1)
        self.bn = nn.BatchNorm2d(12)
        self.down = ReCUConv2d(12, 16, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.short = PadShortcut(12, 16, 2)
        self.taps = ReCUConv2d(16, 16, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(16)
        self.maxp = nn.MaxPool2d(3, 1, 1)
        self.avg = nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.bn1d = nn.BatchNorm1d(16)
        self.fc1 = ReCULinear(16, 24)
        self.fc = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.move(self.bn0(self.stem(x))))
        x = F.hardtanh(self.bn(self.conv(x)) + x)
        y = self.bn2(self.down(x)) + self.short(x)
        y = F.hardtanh(self.bn3(self.taps(y)) + y)
        y = F.relu(self.avg(self.maxp(y)) + y)
        return self.fc(torch.relu(self.fc1(self.bn1d(self.pool(y).flatten(1)))))


class Base:
    """The exported file, its metadata and tensors, and both engines' outputs on one input."""

    def __init__(self, folder: Path) -> None:
        model = randomize(AllOps())
        with torch.no_grad():
            for p in (model.move.bias, model.act.weight):  # their inits are constants
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(2)) * 0.2)
        self.folder = folder
        self.path = folder / "base.recu"
        export(model, self.path)
        self.meta = read_metadata(self.path)
        self.tensors = read_tensors(self.path)
        self.x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
        self.plan_out = load(self.path, engine="plan", num_threads=1)(self.x)
        self.graph_out = run_graph(self.meta, self.tensors, self.x)
        self.names = itertools.count()

    def write(self, meta: dict, tensors: dict[str, np.ndarray]) -> Path:
        path = self.folder / f"mutated_{next(self.names)}.recu"
        save_file({k: v if v.flags.c_contiguous else v.copy() for k, v in tensors.items()}, str(path),  # (0-d kept)
                  metadata={METADATA_KEY: json.dumps(meta)})
        return path


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Base:
    return Base(tmp_path_factory.mktemp("file_checks"))


def assert_refused_or_same(base: Base, path: Path) -> str:
    """Load ``path`` with the plan engine and run it, and run its graph in NumPy: each either raises
    DeployFileError (one line naming the file) or gives the original output. Returns the outcomes."""
    outcomes = []
    for engine in ("plan", "numpy"):
        try:  # run_graph checks the file on each call, the plan at load
            if engine == "plan":
                model = load(path, engine="plan", num_threads=1)
            else:
                out = run_graph(read_metadata(path), read_tensors(path), base.x, source=str(path))
        except DeployFileError as e:
            assert "\n" not in str(e) and str(path) in str(e), str(e)
            outcomes.append("refused")
            continue
        if engine == "plan":  # a plan that loads runs (no error at the first call)
            out = model(base.x)
        np.testing.assert_array_equal(out, base.plan_out if engine == "plan" else base.graph_out)  # bit for bit
        outcomes.append("same")
    return "/".join(outcomes)


# -- mutations -------------------------------------------------------------------------------------
Path_ = tuple  # a path into the metadata: keys and list indices

# Integer fields whose value is the model's choice (a different valid value is a different valid
# model), so only invalid values are tried; every other integer is tied to a tensor or a channel count.
_FREE = {"stride", "padding"}
_FREE_POOL = {"kernel", "stride", "padding"}


def _leaves(obj: Any, path: Path_ = ()) -> list[tuple[Path_, Any]]:
    """Every (path, value) in the JSON metadata, containers included."""
    out = [(path, obj)]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _leaves(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _leaves(v, path + (i,))
    return out


def _get(obj: Any, path: Path_) -> Any:
    for k in path:
        obj = obj[k]
    return obj


def _is_free(meta: dict, path: Path_) -> bool:
    """An int the model chooses freely (a stride, a padding, a pool's kernel), or inside model_spec."""
    if path[:1] == ("model_spec",):
        return True
    if len(path) >= 2 and path[0] == "binary_layers" and path[2:3] and path[2] in _FREE:
        return True
    if path[:2] == ("graph", "nodes") and len(path) >= 5 and path[3] == "attrs":
        op = meta["graph"]["nodes"][path[2]]["op"]
        return path[4] in (_FREE_POOL if op.endswith("pool2d") else _FREE)
    return False


_WRONG_TYPES = [None, "7", [1], {}, 1.5, True]
_NEVER_VALID_INTS = [-1, -(2 ** 40), 2 ** 31, 2 ** 63, 10 ** 30]


@st.composite
def int_field(draw: st.DrawFn, meta: dict) -> tuple[Path_, Any]:
    ints = [(p, v) for p, v in _leaves(meta) if isinstance(v, int) and not isinstance(v, bool)]
    path, v = draw(st.sampled_from(ints))
    bad = _NEVER_VALID_INTS + _WRONG_TYPES + [float(v), str(v)]
    return path, draw(st.sampled_from(bad if _is_free(meta, path) else bad + [v + 1, v - 1, 0, 2 * v + 1]))


@st.composite
def other_field(draw: st.DrawFn, meta: dict) -> tuple[Path_, Any]:
    """A float, bool or string field set to a value of another type, an invalid value, or a name
    nothing defines (never another existing name: that can be a valid other model)."""
    fields = [(p, v) for p, v in _leaves(meta) if isinstance(v, (float, bool, str)) and p]
    path, v = draw(st.sampled_from(fields))
    if isinstance(v, bool):
        return path, draw(st.sampled_from([0, 1, "true", None, [v]]))
    if isinstance(v, float):  # hardtanh bounds
        crossed = 5.0 if path[-1] == "min" else -5.0  # min above max
        return path, draw(st.sampled_from([float("nan"), float("inf"), -float("inf"), 10 ** 400, crossed, "1.0",
                                           None, [v], True]))
    return path, draw(st.sampled_from(["no_such_name", "", 7, None, [v], v + "\n"]))


# Op changes that must be refused (another op with the same attributes could be a valid other model).
_OP_SWAPS = {"binary_conv2d": "binary_linear", "binary_linear": "binary_conv2d", "conv2d": "linear",
             "linear": "conv2d", "batch_norm": "channel_bias", "channel_bias": "prelu", "prelu": "batch_norm",
             "add": "relu", "relu": "add", "pad_channels": "conv2d", "flatten": "add"}


def _set(meta: dict, path: Path_, value: Any) -> dict:
    meta = copy.deepcopy(meta)
    _get(meta, path[:-1])[path[-1]] = value
    return meta


def _delete(meta: dict, path: Path_) -> dict:
    meta = copy.deepcopy(meta)
    del _get(meta, path[:-1])[path[-1]]
    return meta


Mutation = Callable[[st.DataObject, dict, dict], tuple[dict, dict]]


def m_int(data: st.DataObject, meta: dict, tensors: dict) -> tuple[dict, dict]:
    path, value = data.draw(int_field(meta))
    return _set(meta, path, value), tensors


def m_other(data: st.DataObject, meta: dict, tensors: dict) -> tuple[dict, dict]:
    path, value = data.draw(other_field(meta))
    return _set(meta, path, value), tensors


def m_wrong_container(data: st.DataObject, meta: dict, tensors: dict) -> tuple[dict, dict]:
    paths = [p for p, v in _leaves(meta) if p and isinstance(v, (dict, list))]
    path = data.draw(st.sampled_from(paths))
    original = _get(meta, path)
    return _set(meta, path, data.draw(st.sampled_from([v for v in _WRONG_TYPES + [[], 0]
                                                        if type(v) is not type(original)]))), tensors


def m_op(data: st.DataObject, meta: dict, tensors: dict) -> tuple[dict, dict]:
    i = data.draw(st.integers(0, len(meta["graph"]["nodes"]) - 1))
    op = meta["graph"]["nodes"][i]["op"]
    new = data.draw(st.sampled_from([_OP_SWAPS.get(op, "gelu"), "gelu", ""]))
    return _set(meta, ("graph", "nodes", i, "op"), new), tensors


def m_delete_key(data: st.DataObject, meta: dict, tensors: dict) -> tuple[dict, dict]:
    paths = [p for p, _ in _leaves(meta) if p and isinstance(_get(meta, p[:-1]), dict)]
    return _delete(meta, data.draw(st.sampled_from(paths))), tensors


def m_add_key(data: st.DataObject, meta: dict, tensors: dict) -> tuple[dict, dict]:
    """An unknown key: a new optional field is allowed within a version (docs: compatibility rules)."""
    paths = [p for p, v in _leaves(meta) if isinstance(v, dict)]
    path = data.draw(st.sampled_from(paths))
    return _set(meta, path + ("zz_extra",), data.draw(st.sampled_from([1, "x", None, [2], {"a": 1}]))), tensors


def m_graph_order(data: st.DataObject, meta: dict, tensors: dict) -> tuple[dict, dict]:
    meta = copy.deepcopy(meta)
    nodes = meta["graph"]["nodes"]
    i = data.draw(st.integers(0, len(nodes) - 2))
    j = data.draw(st.integers(i + 1, len(nodes) - 1))
    how = data.draw(st.sampled_from(["swap", "later_input", "missing_input", "duplicate_name", "missing_output",
                                     "drop_node", "copy_node"]))
    if how == "swap":  # valid when neither reads the other (and nothing between reads the later one)
        nodes[i], nodes[j] = nodes[j], nodes[i]
    elif how == "later_input":
        nodes[i]["inputs"][-1] = nodes[j]["name"]
    elif how == "missing_input":
        nodes[j]["inputs"][0] = "no_such_node"
    elif how == "duplicate_name":
        nodes[j]["name"] = nodes[i]["name"]
    elif how == "missing_output":
        meta["graph"]["output"] = "no_such_node"
    elif how == "drop_node":
        del nodes[i]
    else:
        nodes.insert(i + 1, copy.deepcopy(nodes[i]))
    return meta, tensors


def _reshaped(data: st.DataObject, a: np.ndarray) -> np.ndarray:
    kinds = ["longer", "shorter", "leading", "trailing"]
    if a.ndim > 1:
        kinds += ["flat"]
    if a.ndim > 1 and a.shape[::-1] != a.shape:
        kinds += ["transposed"]
    kind = data.draw(st.sampled_from(kinds))
    if a.ndim == 0:
        return a.reshape(1) if kind != "leading" else a.reshape(1, 1)
    if kind == "longer":
        return np.concatenate([a] * data.draw(st.sampled_from([2, 3])), axis=0)
    if kind == "shorter":
        return a[:-1]
    if kind == "leading":
        return a[None]
    if kind == "trailing":
        return a[..., None]
    if kind == "flat":
        return a.reshape(-1)
    return a.transpose()


def m_shape(data: st.DataObject, meta: dict, tensors: dict) -> tuple[dict, dict]:
    key = data.draw(st.sampled_from(sorted(tensors)))
    return meta, {**tensors, key: _reshaped(data, tensors[key])}


def m_dtype(data: st.DataObject, meta: dict, tensors: dict) -> tuple[dict, dict]:
    key = data.draw(st.sampled_from(sorted(tensors)))
    dtypes = [d for d in ("float64", "float16", "float32", "int32", "int64", "uint8") if d != tensors[key].dtype]
    return meta, {**tensors, key: tensors[key].astype(data.draw(st.sampled_from(dtypes)))}


def m_tensor_set(data: st.DataObject, meta: dict, tensors: dict) -> tuple[dict, dict]:
    """A tensor dropped, or one added that nothing names (or that float_keys names: then valid)."""
    how = data.draw(st.sampled_from(["drop", "add", "add_listed", "float_key_dropped", "float_key_added"]))
    if how == "drop":
        key = data.draw(st.sampled_from(sorted(tensors)))
        return meta, {k: v for k, v in tensors.items() if k != key}
    if how == "add":
        key = data.draw(st.sampled_from(["float.extra.weight", "graph.nowhere.scale", "binary.nowhere.bits",
                                         "binary.conv.extra", "stray"]))
        return meta, {**tensors, key: np.zeros(4, np.float32)}
    if how == "add_listed":  # an extra state_dict entry the graph does not read: runs unchanged
        return _set(meta, ("float_keys",), meta["float_keys"] + ["extra.buffer"]), {
            **tensors, "float.extra.buffer": np.ones(3, np.float32)}
    keys = meta["float_keys"]
    if how == "float_key_dropped":
        return _set(meta, ("float_keys",), keys[1:]), tensors
    return _set(meta, ("float_keys",), keys + [data.draw(st.sampled_from(["missing", keys[0]]))]), tensors


MUTATIONS: list[Mutation] = [m_int, m_other, m_wrong_container, m_op, m_delete_key, m_add_key, m_graph_order,
                             m_shape, m_dtype, m_tensor_set]


@pytest.mark.parametrize("mutate", MUTATIONS, ids=[m.__name__[2:] for m in MUTATIONS])
@settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_mutated_files_are_refused_or_run_unchanged(base: Base, mutate: Mutation, data: st.DataObject) -> None:
    meta, tensors = mutate(data, base.meta, base.tensors)
    outcome = assert_refused_or_same(base, base.write(meta, tensors))
    event(f"{mutate.__name__}: {outcome}")  # pytest --hypothesis-show-statistics tallies them


def test_the_original_runs_and_checks_are_cheap(base: Base) -> None:
    """The unmutated file passes, its own rewrite too (the harness itself is sound)."""
    assert assert_refused_or_same(base, base.write(base.meta, base.tensors)) == "same/same"
    assert set(OPS) == set(GRAPH_OPS)


# -- the named cases ---------------------------------------------------------------------------------
def _refusals(base: Base, path: Path, words: list[str]) -> None:
    """Every reader refuses ``path`` with one line naming it and ``words``: the plan, the NumPy graph,
    the PyTorch layers engine (with the skeleton: the model has no spec)."""
    attempts = {"plan": lambda: load(path, engine="plan"),
                "numpy": lambda: run_graph(read_metadata(path), read_tensors(path), base.x, source=str(path)),
                "layers": lambda: load(path, AllOps(), engine="layers", impl="numpy")}
    for engine, attempt in attempts.items():
        with pytest.raises(DeployFileError) as info:
            attempt()
        message = str(info.value)
        assert "\n" not in message and message.startswith(str(path)), (engine, message)
        for word in words:
            assert word in message, (engine, message)


def test_batch_norm_scale_three_times_too_long(base: Base) -> None:
    bn = next(n for n in base.meta["graph"]["nodes"] if n["op"] == "batch_norm")
    key = bn["tensors"]["scale"]
    c = len(base.tensors[key])
    path = base.write(base.meta, {**base.tensors, key: np.tile(base.tensors[key], 3)})
    _refusals(base, path, [repr(key), f"shape ({3 * c},)", f"needs ({c},)"])


def test_bits_stored_as_float64(base: Base) -> None:
    key = "binary.conv.bits"
    path = base.write(base.meta, {**base.tensors, key: base.tensors[key].astype(np.float64)})
    _refusals(base, path, [repr(key), "dtype float64", "uint8"])


def test_node_input_computed_later_is_no_key_error(base: Base) -> None:
    meta = copy.deepcopy(base.meta)
    nodes = meta["graph"]["nodes"]
    nodes[1]["inputs"] = [nodes[5]["name"]]
    path = base.write(meta, base.tensors)
    for attempt in (lambda: load(path, engine="plan"),
                    lambda: run_graph(read_metadata(path), read_tensors(path), base.x, source=str(path))):
        with pytest.raises(DeployFileError, match=f"reads '{nodes[5]['name']}', which a later node computes"):
            attempt()


def test_kernel_size_that_disagrees_with_the_bits(base: Base) -> None:
    """The plan's kernels index the packed bits with the metadata's kernel size: a 5x5 claim on 3x3 bits
    would read past them."""
    meta = copy.deepcopy(base.meta)
    layer = next(la for la in meta["binary_layers"] if la["name"] == "taps")
    layer["kernel_size"], layer["padding"] = [5, 5], [2, 2]
    _refusals(base, base.write(meta, base.tensors), ["binary layer 'taps'", "(16, 5, 5, 2)"])


def test_plan_notes_cannot_be_set_by_a_file(base: Base) -> None:
    """The plan notes fusions in a node's attributes (the stem's input padding, a pool's channel pad):
    a file setting them would make the plan compute something else than the NumPy runner."""
    for op, note in (("conv2d", "input_padded"), ("avg_pool2d", "pad_before")):
        meta = copy.deepcopy(base.meta)
        next(n for n in meta["graph"]["nodes"] if n["op"] == op)["attrs"][note] = 1
        path = base.write(meta, base.tensors)
        with pytest.raises(DeployFileError, match=f"unknown attribute '{note}'"):
            load(path, engine="plan")


def test_layers_engine_checks_the_skeleton(base: Base) -> None:
    """A binary layer's geometry and the float tensors must be the skeleton's (else PyTorch fails at the
    first call with a shape error, or casts): refused at load, one line."""
    meta = copy.deepcopy(base.meta)
    next(la for la in meta["binary_layers"] if la["name"] == "conv")["padding"] = [0, 0]
    with pytest.raises(DeployFileError, match=r"binary layer 'conv' has kernel, stride, padding .* the model's"):
        load(base.write(meta, base.tensors), AllOps(), engine="layers", impl="numpy")
    key = "float.bn1d.running_var"
    path = base.write(base.meta, {**base.tensors, key: np.ones(15, np.float32)})
    with pytest.raises(DeployFileError, match=r"tensor 'float.bn1d.running_var' is float32 \(15,\), the model's"):
        load(path, AllOps(), engine="layers", impl="numpy")


def test_bench_command_prints_one_line(base: Base, capsys: pytest.CaptureFixture) -> None:
    key = "binary.down.alpha"
    path = base.write(base.meta, {**base.tensors, key: base.tensors[key][:-1]})
    assert main(["bench", str(path), "--no-compile", "--repeat", "1", "--batch", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"recu bench: error: {path}: ") and "\n" not in err and repr(key) in err


def test_shipped_file_passes() -> None:
    from recu.pretrained import path as pretrained_path

    path = pretrained_path("resnet20_1w1a", "deploy")
    check_file(read_metadata(path), read_tensors(path), str(path))
