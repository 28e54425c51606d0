"""Export -> load on the project's networks: exact binary layers, matching logits, 1-bit file size."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from recu import ReCUConv2d, binary_layers, models
from recu import functional as RF
from recu.deploy import PackedConv2d, export, load, read_metadata
from recu.deploy.runtime.kernels import has_amx, has_vpopcntdq, numba_available

from ._helpers import assert_same_logits, fixed_order_logits, randomize

IMPLS = (["amx"] if has_amx() else []) + (["avx512"] if has_vpopcntdq() else []) + (["portable"] if numba_available() else ["numpy"])


def layer_inputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The input each binary layer of the float model sees."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: seen.__setitem__(name, args[0]))
             for name, m in binary_layers(model)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


NETS = [("resnet20_1w1a", 32, 18), ("resnet18_1w1a", 32, 16), ("resnet18_1w1a_imagenet", 64, 16)]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name,size,n_binary", NETS)
def test_network_exact(tmp_path: Path, name: str, size: int, n_binary: int, impl: str) -> None:
    model = randomize(models.create(name, num_classes=10))
    path = tmp_path / f"{name}.recu"
    meta = export(model, path)
    assert len(meta["binary_layers"]) == n_binary
    assert len(meta["folded_bn"]) == n_binary  # every binary conv feeds its own BN in these nets
    packed = load(path, impl=impl, engine="layers")
    assert len(packed.packed_layers()) == n_binary

    x = torch.randn(2, 3, size, size)
    # Integer outputs of every packed layer == F.conv2d(sign(A), sign(W - mean W)) on the same input.
    inputs = layer_inputs(model, x)
    layers = dict(binary_layers(model))
    meta_folded = {conv: bn for bn, conv in meta["folded_bn"].items()}
    for lname, p in packed.packed_layers():
        ref = layers[lname]
        a = inputs[lname]
        with torch.no_grad():
            want = F.conv2d(RF.sign(a), RF.sign(RF.center_filters(ref.weight)), stride=ref.stride, padding=ref.padding)
        got = p.dot(a)
        assert got.dtype == torch.int32
        assert torch.equal(got, want.round().to(torch.int32)), lname

        # Float output too: packed layer (alpha and BN in its epilogue) == PyTorch's layer then BN, bit for bit.
        bn = dict(model.named_modules())[meta_folded[lname]]
        with torch.no_grad():
            want_f = bn(ref(a))
        assert torch.equal(p(a), want_f), lname

    # The packed model runs PyTorch's own float layers in channels-last: given that memory format, the
    # logits are bit-identical on every CPU. (Against the NCHW call oneDNN may sum the stem in another
    # order on some CPUs, and a stem output next to 0 would then flip a sign: not compared.)
    got = packed(x)
    with torch.no_grad():
        assert torch.equal(got, model(x.contiguous(memory_format=torch.channels_last)))


def test_resnet18_file_is_20x_smaller(tmp_path: Path) -> None:
    model = models.create("resnet18_1w1a", num_classes=10)
    float_path = tmp_path / "float.pt"
    torch.save({k: v.float() for k, v in model.state_dict().items()}, float_path)
    path = tmp_path / "r18.recu"
    export(model, path)
    ratio = os.path.getsize(float_path) / os.path.getsize(path)
    assert ratio >= 20, f"only {ratio:.1f}x smaller"


def test_custom_model_without_spec_and_untraceable(tmp_path: Path) -> None:
    class Net(nn.Module):  # data-dependent control flow: torch.fx cannot trace it
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 70, 3, padding=1)
            self.conv = ReCUConv2d(70, 33, 3, stride=2, padding=1)
            self.bn = nn.BatchNorm2d(33)
            self.fc = nn.Linear(33, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.stem(x)
            if x.sum() > 1e9:
                x = x * 2
            return self.fc(self.bn(self.conv(x)).mean((2, 3)))

    model = randomize(Net())
    path = tmp_path / "net.recu"
    with pytest.warns(RuntimeWarning, match="not folded"):
        meta = export(model, path)
    assert meta["model_spec"] is None and meta["folded_bn"] == {}
    with pytest.raises(ValueError, match="model spec"):
        load(path)
    packed = load(path, model=Net())
    x = torch.randn(3, 3, 9, 9)
    with torch.no_grad():  # PyTorch's own float layers, in the packed model's memory format: bit for bit
        assert torch.equal(packed(x), model(x.contiguous(memory_format=torch.channels_last)))


def test_binary_linear_layers_are_packed(tmp_path: Path) -> None:
    from recu.deploy import PackedLinear

    model = randomize(models.create("mlp_1w1a", hidden=70))  # 70: a partial last word
    path = tmp_path / "mlp.recu"
    meta = export(model, path)
    assert [l["kind"] for l in meta["binary_layers"]] == ["linear", "linear"]
    packed = load(path, engine="layers")
    layers = packed.packed_layers()
    assert len(layers) == 2 and all(isinstance(m, PackedLinear) for _, m in layers)
    x = torch.randn(5, 64)
    h = model.net[2](model.net[1](x))  # the first binary layer's input
    with torch.no_grad():
        want = F.linear(RF.sign(h), RF.sign(model.net[3].clamped_weight()))
    assert torch.equal(layers[0][1].dot(h), want.round().to(torch.int32))
    with torch.no_grad():
        assert torch.equal(packed(x.reshape(5, 1, 8, 8)), model(x.reshape(5, 1, 8, 8)))


def test_unpackable_layers_stay_float(tmp_path: Path) -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        ReCUConv2d(8, 8, 3, padding=1, groups=2),  # grouped: runs in PyTorch
        nn.BatchNorm2d(8),
        ReCUConv2d(8, 8, 3, padding=1),
    )
    randomize(model)
    path = tmp_path / "m.recu"
    meta = export(model, path)
    assert [l["name"] for l in meta["binary_layers"]] == ["3"]
    assert "1" in meta["float_layers"]
    packed = load(path, model=model)
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():  # PyTorch's own float layers, in the packed model's memory format: bit for bit
        assert torch.equal(packed(x), model(x.contiguous(memory_format=torch.channels_last)))
    assert isinstance(packed.model[3], PackedConv2d) and isinstance(packed.model[1], ReCUConv2d)


def test_file_is_safetensors_with_versioned_metadata(tmp_path: Path) -> None:
    from safetensors import safe_open

    model = models.create("resnet20_1w1a")
    path = tmp_path / "r20.recu"
    export(model, path)
    meta = read_metadata(path)
    assert meta["format"] == "recu-deploy" and meta["version"] == 1
    assert meta["model_spec"]["name"] == "resnet20_1w1a"
    with safe_open(str(path), framework="pt") as f:
        bits = f.get_tensor("binary.layers.0.0.conv1.bits")
    assert bits.dtype == torch.uint8 and tuple(bits.shape) == (16, 3, 3, 2)
    # A file with a newer version is refused with a clear message.
    from safetensors.torch import save_file

    bad = tmp_path / "bad.recu"
    save_file({"x": torch.zeros(1)}, str(bad), metadata={"recu_deploy": json.dumps({**meta, "version": 99})})
    with pytest.raises(ValueError, match="version 99"):
        load(bad)
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(1)}, str(plain))
    with pytest.raises(ValueError, match="not a recu deployment file"):
        load(plain)


def test_wrapped_model_exports_its_inner_module(tmp_path: Path) -> None:
    model = randomize(models.create("resnet20_1w1a"))
    path = tmp_path / "dp.recu"
    meta = export(nn.DataParallel(model), path)
    assert meta["model_spec"]["name"] == "resnet20_1w1a"
    assert not any(k.startswith("module.") for k in meta["float_keys"])
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    assert_same_logits(load(path)(x).numpy(), fixed_order_logits(model, x))  # the plan: its order, on every CPU


def test_numpy_reference_path_runs_the_whole_network(tmp_path: Path) -> None:
    model = randomize(models.create("resnet20_1w1a"))
    path = tmp_path / "r20.recu"
    export(model, path)
    x = torch.randn(1, 3, 32, 32)
    ref = load(path, impl="numpy", engine="layers")
    assert all(p.impl == "numpy" for _, p in ref.packed_layers())
    with torch.no_grad():  # NumPy's epilogue rounds its fma once, as the kernels: bit for bit
        assert torch.equal(ref(x), model(x.contiguous(memory_format=torch.channels_last)))


def test_concurrent_calls_from_python_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from recu.deploy.runtime.kernels import threads as nk

    monkeypatch.setattr(nk, "PARALLEL_MIN_WORK", 0)  # every kernel on numba's worker threads
    model = randomize(models.create("resnet20_1w1a"))
    export(model, tmp_path / "r20.recu")
    packed = load(tmp_path / "r20.recu", num_threads=2, engine="layers")
    xs = [torch.randn(2, 3, 32, 32) for _ in range(6)]
    with torch.no_grad():
        want = [model(x.contiguous(memory_format=torch.channels_last)) for x in xs]
    with ThreadPoolExecutor(max_workers=3) as pool:
        got = list(pool.map(packed, xs))
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))


def _input_shape(name: str) -> tuple[int, int, int]:
    if name.startswith(("digits", "mlp")):
        return (1, 8, 8)
    if "imagenet" in name or name.startswith("reactnet"):
        return (3, 64, 64)
    return (3, 32, 32)


@pytest.mark.parametrize("name", [n for n in models.available() if models.is_binary(n)])
def test_every_registry_model_is_bit_identical(tmp_path: Path, name: str) -> None:
    model = randomize(models.create(name))
    path = tmp_path / f"{name}.recu"
    export(model, path)
    x = torch.randn(2, *_input_shape(name))
    with torch.no_grad():
        want = model(x.contiguous(memory_format=torch.channels_last))
    assert torch.equal(load(path, engine="layers")(x), want)
