"""The exported graph IR (meta["graph"]) and its NumPy runner against the PyTorch models."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.numpy import load_file
from torch import nn

from recu import BinaryConfig, ReCUConv2d, models
from recu.deploy import export, load, read_metadata
from recu.deploy.exporter.graph import graph_tensor_keys
from recu.deploy.runtime.graph_numpy import run_graph
from recu.models._common import PadShortcut
from recu.models.reactnet import LearnableBias
from recu.nn import ReCULinear

from ._helpers import assert_same_logits, fixed_order_logits, randomize

# name, input shape, exact op counts of the graph (worked out from each model's forward). The large
# networks run one image: NumPy's reference binary conv is slow.
NETS = [
    ("resnet20_1w1a", (2, 3, 32, 32), {
        # 9 blocks x (2 bconv, 2 add, 2 hardtanh) + stem hardtanh; 2 PadShortcuts (pool + pad);
        # BNs of the bconvs folded: only the stem's and the BN1d remain.
        "binary_conv2d": 18, "add": 18, "hardtanh": 19, "conv2d": 1, "batch_norm": 2, "avg_pool2d": 2,
        "pad_channels": 2, "global_avg_pool": 1, "flatten": 1, "linear": 1}),
    pytest.param("resnet18_1w1a", (1, 3, 16, 16), {
        # 8 blocks x (2 bconv, 1 add, 2 hardtanh), stem without activation, 3 PadShortcuts.
        "binary_conv2d": 16, "add": 8, "hardtanh": 16, "conv2d": 1, "batch_norm": 2, "avg_pool2d": 3,
        "pad_channels": 3, "global_avg_pool": 1, "flatten": 1, "linear": 1}, marks=pytest.mark.slow),
    pytest.param("vgg_small_1w1a", (1, 3, 32, 32), {
        # A maxpool or an Identity sits between each bconv and its BN, so no BN is folded.
        "binary_conv2d": 5, "conv2d": 1, "batch_norm": 6, "hardtanh": 6, "max_pool2d": 3, "flatten": 1,
        "linear": 1}, marks=pytest.mark.slow),
    pytest.param("resnet18_1w1a_imagenet", (1, 3, 64, 64), {
        # 3 downsamples = FP 1x1 conv + BN each.
        "binary_conv2d": 16, "add": 16, "hardtanh": 17, "conv2d": 4, "batch_norm": 5, "max_pool2d": 1,
        "global_avg_pool": 1, "flatten": 1, "linear": 1}, marks=pytest.mark.slow),
    pytest.param("reactnet_resnet18", (1, 3, 64, 64), {
        # 16 blocks x (3 LearnableBias, PReLU, add); 3 downsamples = AvgPool2d + 1x1 conv + BN.
        "binary_conv2d": 16, "channel_bias": 48, "prelu": 16, "add": 16, "conv2d": 4, "batch_norm": 4,
        "avg_pool2d": 3, "max_pool2d": 1, "global_avg_pool": 1, "flatten": 1, "linear": 1}, marks=pytest.mark.slow),
    ("digits_cnn_1w1a", (2, 1, 8, 8), {
        "conv2d": 1, "batch_norm": 2, "hardtanh": 3, "binary_conv2d": 2, "max_pool2d": 2, "flatten": 1,
        "linear": 1}),
    ("mlp_1w1a", (2, 1, 8, 8), {"flatten": 1, "linear": 2, "hardtanh": 3, "binary_linear": 2}),
]


def _randomize_alpha(model: nn.Module) -> nn.Module:
    """randomize() leaves ReCULinear's alpha, PReLU and LearnableBias at their constant inits; vary them too."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, ReCULinear) and m.alpha is not None:
                m.alpha.copy_(torch.rand(m.alpha.shape, generator=g) + 0.1)
            if isinstance(m, (nn.PReLU, LearnableBias)):  # both start at constants (0.25, 0)
                for p in m.parameters():
                    p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def _export(model: nn.Module, path: Path, **kwargs: object) -> tuple[dict, dict[str, np.ndarray]]:
    meta = export(model, path, **kwargs)
    assert read_metadata(path)["graph"] == meta["graph"]  # what the file holds, not only the return value
    return meta, load_file(str(path))


def _assert_logits_match(got: np.ndarray, want: np.ndarray) -> None:
    """The NumPy graph against PyTorch with its float convs in the plan's order (the same signs on every
    CPU, ``fixed_order_logits``): logits to 1e-5 of the row's largest, the same top-1 up to exact ties."""
    assert_same_logits(got, want)


@pytest.mark.parametrize("name,shape,ops", NETS)
def test_registry_model_graph_runs_like_pytorch(tmp_path: Path, name: str, shape: tuple, ops: dict) -> None:
    model = _randomize_alpha(randomize(models.create(name, num_classes=10)))
    meta, tensors = _export(model, tmp_path / f"{name}.recu")
    graph = meta["graph"]
    assert graph is not None and meta["graph_unsupported"] is None
    assert Counter(n["op"] for n in graph["nodes"]) == Counter(ops)
    # Every packed layer runs exactly once, every named tensor is in the file.
    binary_nodes = [n["attrs"]["layer"] for n in graph["nodes"] if n["op"].startswith("binary_")]
    assert sorted(binary_nodes) == sorted(layer["name"] for layer in meta["binary_layers"])
    assert graph_tensor_keys(graph) <= set(tensors)

    x = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    _assert_logits_match(run_graph(meta, tensors, x.numpy()), fixed_order_logits(model, x))


def test_resnet20_graph_structure(tmp_path: Path) -> None:
    meta, tensors = _export(randomize(models.create("resnet20_1w1a", num_classes=10)), tmp_path / "r20.recu")
    graph = meta["graph"]
    nodes = {n["name"]: n for n in graph["nodes"]}
    assert graph["input"] == {"name": "x", "channels": 3}
    first = graph["nodes"][0]
    assert (first["op"], first["inputs"]) == ("conv2d", ["x"])
    assert (first["attrs"]["kernel"], first["attrs"]["padding"]) == ([3, 3], [1, 1])
    assert first["tensors"] == {"weight": "float.conv1.weight"}
    # Each add joins one binary conv (its folded BN inside) with the block's shortcut value.
    for add in (n for n in graph["nodes"] if n["op"] == "add"):
        assert [nodes[i]["op"] for i in add["inputs"]].count("binary_conv2d") == 1, add
    # The two PadShortcuts: pool by 2, then (out - in) / 2 zero channels each side.
    pads = [n for n in graph["nodes"] if n["op"] == "pad_channels"]
    assert [(p["attrs"]["before"], p["attrs"]["after"]) for p in pads] == [(8, 8), (16, 16)]
    for p in pads:
        pool = nodes[p["inputs"][0]]
        assert pool["op"] == "avg_pool2d" and pool["attrs"] == {"kernel": [2, 2], "stride": [2, 2], "padding": [0, 0],
                                                                "count_include_pad": True}
    # Head: global pool -> flatten -> BatchNorm1d -> fc.
    out = nodes[graph["output"]]
    assert out["op"] == "linear" and out["tensors"] == {"weight": "float.fc.weight", "bias": "float.fc.bias"}
    chain = [nodes[out["inputs"][0]]]
    while chain[-1]["inputs"][0] in nodes and len(chain) < 3:
        chain.append(nodes[chain[-1]["inputs"][0]])
    assert [n["op"] for n in chain] == ["batch_norm", "flatten", "global_avg_pool"]


def test_batch_norm_tensors_are_pytorch_bit_exact(tmp_path: Path) -> None:
    model = randomize(models.create("resnet20_1w1a", num_classes=10))
    meta, tensors = _export(model, tmp_path / "r20.recu")
    bn = next(n for n in meta["graph"]["nodes"] if n["op"] == "batch_norm")
    scale, shift = tensors[bn["tensors"]["scale"]], tensors[bn["tensors"]["shift"]]
    x = torch.randn(4, 16, 9, 9, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = model.bn1(x).numpy()
    # The runner's batch_norm (fma emulated in float64) on the file's tensors == PyTorch's CPU BatchNorm.
    one_node = {"binary_layers": [], "graph": {"version": 1, "input": {"name": "x", "channels": 16},
                                               "nodes": [{**bn, "inputs": ["x"]}], "output": bn["name"]}}
    assert np.array_equal(run_graph(one_node, tensors, x.numpy()), want)
    # And the values are the BatchNorm's affine (independent float64 formula).
    g, b = model.bn1.weight.detach().double(), model.bn1.bias.detach().double()
    m, v = model.bn1.running_mean.double(), model.bn1.running_var.double()
    a64 = (g / torch.sqrt(v + model.bn1.eps)).numpy()
    np.testing.assert_allclose(scale, a64, rtol=1e-6)
    np.testing.assert_allclose(shift, (b - m * g / torch.sqrt(v + model.bn1.eps)).numpy(), rtol=1e-5, atol=1e-6)


def test_unfolded_batch_norms(tmp_path: Path) -> None:
    model = randomize(models.create("resnet20_1w1a", num_classes=10))
    meta, tensors = _export(model, tmp_path / "r20.recu", fold_bn=False)
    assert Counter(n["op"] for n in meta["graph"]["nodes"])["batch_norm"] == 20
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    _assert_logits_match(run_graph(meta, tensors, x.numpy()), fixed_order_logits(model, x))


class EveryForm(nn.Module):
    """Every module and call form the graph accepts, with nontrivial attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 12, (3, 5), stride=(1, 2), padding=(1, 2), bias=True)
        self.move = LearnableBias(12)
        self.act = nn.PReLU()
        self.conv = ReCUConv2d(12, 20, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(20)
        self.short = PadShortcut(12, 20, 2)
        self.avg = nn.AvgPool2d(3, 2, 1, count_include_pad=False)
        self.avg2 = nn.AvgPool2d(3, 1, 1)
        self.maxp = nn.MaxPool2d(3, 2, 1)
        self.skip = nn.Identity()
        self.bn1d = nn.BatchNorm1d(160)
        self.fc1 = ReCULinear(160, 24)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.move(self.stem(x)))
        y = torch.add(self.bn(self.conv(x)), self.short(x))
        y = F.hardtanh(F.relu(y) + y, -0.5, 0.75)
        y = self.avg2(self.avg(y)) + self.skip(self.maxp(y))
        y = y.view(y.size(0), -1)
        y = torch.relu(self.fc1(self.bn1d(y.contiguous())))
        return self.fc(self.relu(y.reshape(y.shape[0], -1)))


def test_every_supported_form(tmp_path: Path) -> None:
    model = _randomize_alpha(randomize(EveryForm()))
    meta, tensors = _export(model, tmp_path / "every.recu")
    graph = meta["graph"]
    assert meta["graph_unsupported"] is None
    assert Counter(n["op"] for n in graph["nodes"]) == Counter({
        "conv2d": 1, "channel_bias": 1, "prelu": 1, "binary_conv2d": 1, "avg_pool2d": 3, "pad_channels": 1,
        "add": 3, "relu": 3, "hardtanh": 1, "max_pool2d": 1, "flatten": 2, "batch_norm": 1, "binary_linear": 1,
        "linear": 1})
    nodes = {n["name"]: n for n in graph["nodes"]}
    assert nodes["stem"]["attrs"] == {"kernel": [3, 5], "stride": [1, 2], "padding": [1, 2], "in_channels": 3,
                                      "out_channels": 12}
    assert nodes["stem"]["tensors"] == {"weight": "float.stem.weight", "bias": "float.stem.bias"}
    assert nodes["avg"]["attrs"]["count_include_pad"] is False
    assert nodes["move"]["tensors"] == {"bias": "float.move.bias"}
    hardtanh = next(n for n in graph["nodes"] if n["op"] == "hardtanh")
    assert hardtanh["attrs"] == {"min": -0.5, "max": 0.75}
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    _assert_logits_match(run_graph(meta, tensors, x.numpy()), fixed_order_logits(model, x))


@pytest.mark.parametrize("k,s,p", [(3, 2, 1), (2, 2, 0), (3, 1, 1), (5, 2, 2)])
@pytest.mark.parametrize("count_include_pad", [True, False])
def test_pools_are_pytorch_bit_exact(k: int, s: int, p: int, count_include_pad: bool) -> None:
    x = torch.randn(2, 7, 11, 9, generator=torch.Generator().manual_seed(k * 10 + s + p))
    meta = {"binary_layers": [], "graph": {"version": 1, "input": {"name": "x", "channels": 7}, "output": "m",
            "nodes": [
                {"name": "a", "op": "avg_pool2d", "inputs": ["x"], "tensors": {},
                 "attrs": {"kernel": [k, k], "stride": [s, s], "padding": [p, p],
                           "count_include_pad": count_include_pad}},
                {"name": "m", "op": "max_pool2d", "inputs": ["a"], "tensors": {},
                 "attrs": {"kernel": [k, k], "stride": [s, s], "padding": [p, p]}}]}}
    want = F.max_pool2d(F.avg_pool2d(x, k, s, p, count_include_pad=count_include_pad), k, s, p)
    assert np.array_equal(run_graph(meta, {}, x.numpy()), want.numpy())


# -- what the graph cannot express ----------------------------------------------------------------
class Gate(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


class WithCustomModule(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.gate = Gate()
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.gate(self.conv(x)).mean((2, 3)))


class WithGroupedConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(4, 8, 3, padding=1, groups=2)
        self.conv = ReCUConv2d(8, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(self.stem(x))).flatten(1)


class WithLeaf(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = ReCUConv2d(3, 8, 3, padding=1)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.1), nn.Linear(8 * 16, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x))


class WithRealWeightLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = ReCUConv2d(3, 8, 3, padding=1, config=BinaryConfig(binary_weights=False))
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(x)).flatten(1)


class WithControlFlow(WithGroupedConv):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            x = -x
        return super().forward(x)


UNSUPPORTED = [
    (WithCustomModule, (1, 3, 4, 4), ["torch.sigmoid", "'gate'", "Gate"]),
    (WithGroupedConv, (1, 4, 4, 4), ["conv2d 'stem'", "groups=2"]),
    (WithLeaf, (1, 3, 4, 4), ["'head.1'", "Dropout"]),
    (WithRealWeightLayer, (1, 3, 4, 4), ["binary layer 'conv'", "not packed", "not binary"]),
    (WithControlFlow, (1, 4, 4, 4), ["torch.fx could not trace"]),
]


@pytest.mark.filterwarnings("ignore:recu.deploy. torch.fx could not trace:RuntimeWarning")
@pytest.mark.parametrize("cls,shape,words", UNSUPPORTED, ids=[u[0].__name__ for u in UNSUPPORTED])
def test_unsupported_model_has_no_graph_and_says_why(tmp_path: Path, cls: type, shape: tuple, words: list) -> None:
    model = randomize(cls())
    path = tmp_path / "net.recu"
    meta, tensors = _export(model, path)
    assert meta["graph"] is None
    reason = meta["graph_unsupported"]
    assert isinstance(reason, str) and "\n" not in reason
    for word in words:
        assert word in reason, reason
    assert not any(k.startswith("graph.") for k in tensors)
    with pytest.raises(ValueError, match=re.escape(f"the file has no graph: {reason}")):
        run_graph(meta, tensors, np.zeros(shape, np.float32))
    # The per-layer PyTorch path still runs the file (numpy kernels: no numba compilation in this test).
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        assert torch.allclose(load(path, model=cls(), impl="numpy")(x), model(x), rtol=1e-4, atol=1e-5)


def test_run_graph_refuses_bad_graphs_and_inputs(tmp_path: Path) -> None:
    meta, tensors = _export(randomize(models.create("digits_cnn_1w1a", num_classes=10)), tmp_path / "d.recu")
    with pytest.raises(ValueError, match="input channels"):
        run_graph(meta, tensors, np.zeros((1, 3, 8, 8), np.float32))
    newer = {**meta, "graph": {**meta["graph"], "version": 2}}
    with pytest.raises(ValueError, match="graph version 2"):
        run_graph(newer, tensors, np.zeros((1, 1, 8, 8), np.float32))
    bad_op = {**meta, "graph": {**meta["graph"], "nodes": [{**meta["graph"]["nodes"][0], "op": "gelu"}]}}
    with pytest.raises(ValueError, match="unknown op 'gelu'"):
        run_graph(bad_op, tensors, np.zeros((1, 1, 8, 8), np.float32))
    missing = {k: v for k, v in tensors.items() if not k.startswith("float.stem.0")}
    with pytest.raises(ValueError, match="float.stem.0.weight"):
        run_graph(meta, missing, np.zeros((1, 1, 8, 8), np.float32))


_TORCH_FREE_RUN = """
import json, sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, NoTorch())
import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file
from recu.deploy.runtime.graph_numpy import run_graph
path, x_path, out_path = sys.argv[1:4]
with safe_open(path, framework="np") as f:
    meta = json.loads(f.metadata()["recu_deploy"])
np.save(out_path, run_graph(meta, load_file(path), np.load(x_path)))
assert "torch" not in sys.modules
"""


def test_run_graph_without_torch(tmp_path: Path) -> None:
    """The exported file runs in a process that cannot import torch, with the same logits."""
    model = randomize(models.create("digits_cnn_1w1a", num_classes=10))
    path = tmp_path / "d.recu"
    export(model, path)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(8))
    np.save(tmp_path / "x.npy", x.numpy())
    subprocess.run([sys.executable, "-c", _TORCH_FREE_RUN, str(path), str(tmp_path / "x.npy"),
                    str(tmp_path / "out.npy")], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    _assert_logits_match(np.load(tmp_path / "out.npy"), fixed_order_logits(model, x))
