"""ONNX export (``recu.deploy.export_onnx``, ``recu export --format onnx``) checked with onnxruntime.

Sessions: "written" runs the graph as written (onnxruntime's graph optimisations off): the same
float32 steps as the PyTorch layers (exact integer dot products of +-1 operands, then * alpha,
+ bias). "recommended" is ``onnxruntime_session``: every optimisation except the fusions that fold
alpha and BatchNorm into the +-1 conv weights. onnxruntime's plain default session does fold them;
the float sums then round differently and a pre-activation next to 0 can flip its sign, which the
later binary layers amplify, so only single layers are compared against it here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from recu import BinaryConfig, ReCUConv1d, ReCUConv2d, ReCULinear, models  # noqa: E402
from recu.cli import main  # noqa: E402
from recu.deploy import export_onnx  # noqa: E402
from recu.deploy.exporter.onnx_export import DEFAULT_OPSET, default_input_shape, onnxruntime_session  # noqa: E402

from ._helpers import dyadic, make_float_convs_exact, randomize  # noqa: E402


def session(path: Path, kind: str) -> "ort.InferenceSession":
    """"written" (no graph optimisation), "recommended" (onnxruntime_session) or onnxruntime's "default"."""
    if kind == "recommended":
        return onnxruntime_session(path, num_threads=1)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    if kind == "written":
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    else:
        assert kind == "default"
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run(sess: "ort.InferenceSession", x: torch.Tensor) -> np.ndarray:
    return sess.run(None, {"input": x.numpy()})[0]


def assert_close_logits(got: np.ndarray, want: np.ndarray) -> None:
    """Logits within 1e-4 of the largest |logit| and the same top-1 in every row."""
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    assert np.array_equal(got.argmax(axis=1), want.argmax(axis=1))


def initializers(proto: "onnx.ModelProto") -> dict[str, np.ndarray]:
    return {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}


# ---- single layers: the exact computation -------------------------------------------------------------


def reference_conv2d(layer: ReCUConv2d, x: torch.Tensor, pad_value: float = 0.0,
                     sign_zero: float = 1.0) -> torch.Tensor:
    """float64 conv(sign(x), sign(W - mean_c W)) * alpha + bias, written from the method, not from the layer.

    sign(ReCU(W1)) = sign(W - mean_c W): standardising multiplies each filter by a positive number and the
    clamp keeps signs. ``pad_value`` / ``sign_zero`` give the wrong variants the test must tell apart.
    """
    w = layer.weight.detach().double()
    centred = w - w.mean(dim=(1, 2, 3), keepdim=True)
    wb = torch.where(centred >= 0, 1.0, -1.0).double()
    xd = x.double()
    xb = torch.where(xd > 0, 1.0, torch.where(xd < 0, -1.0, sign_zero)).double()
    ph, pw = layer.padding
    xb = F.pad(xb, (pw, pw, ph, ph), value=pad_value)
    y = F.conv2d(xb, wb, stride=layer.stride)
    y = y * layer.alpha.detach().double().reshape(1, -1, 1, 1)
    if layer.bias is not None:
        y = y + layer.bias.detach().double().reshape(1, -1, 1, 1)
    return y


def test_binary_conv_is_exact_sign_at_zero_and_zero_padding(tmp_path: Path) -> None:
    layer = randomize(ReCUConv2d(5, 7, 3, stride=2, padding=1, bias=True))
    x = torch.randn(3, 5, 9, 9)
    x[0, :, 2:5, 2:5] = 0.0  # exact zeros: +1
    x[1, :, 4:7, 4:7] = -0.0  # negative zero: +1 too (-0.0 >= 0)
    x[2] = -x[2].abs() - 0.1  # an all-negative sample: every binarised input is -1, so a border that
    #                           padded with -1 instead of 0 would differ from the reference
    path = tmp_path / "conv.onnx"
    info = export_onnx(layer, path, input_shape=(5, 9, 9))
    assert info["binary_layers"] == 1 and info["opset"] == DEFAULT_OPSET

    want = reference_conv2d(layer, x)
    # the wrong variants differ from the reference, so agreeing with it pins the right one
    assert not torch.allclose(reference_conv2d(layer, x, pad_value=-1.0), want, rtol=1e-3, atol=1e-3)
    assert not torch.allclose(reference_conv2d(layer, x, sign_zero=0.0), want, rtol=1e-3, atol=1e-3)

    written = torch.from_numpy(run(session(path, "written"), x))
    assert torch.allclose(written.double(), want, rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        assert torch.equal(written, layer(x))  # same float32 steps as the PyTorch layer: bit for bit
    default = torch.from_numpy(run(session(path, "default"), x))
    assert torch.allclose(default.double(), want, rtol=1e-5, atol=1e-5)

    # the graph: Where(GreaterOrEqual(x, 0), 1, -1) -> Conv with +-1 constant weights, pads 1 -> Mul(alpha)
    proto = onnx.load(str(path))
    ops = [n.op_type for n in proto.graph.node]
    assert ops[:3] == ["GreaterOrEqual", "Where", "Conv"] and "Mul" in ops
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    weight = initializers(proto)[conv.input[1]]
    assert weight.shape == (7, 5, 3, 3) and set(np.unique(weight)) == {-1.0, 1.0}
    assert dict((a.name, list(a.ints)) for a in conv.attribute)["pads"] == [1, 1, 1, 1]


LAYER_CASES = {
    "linear_analytic_scale": (lambda: ReCULinear(12, 6, bias=True, config=BinaryConfig(scale="analytic")), (12,)),
    "conv1d_dilated": (lambda: ReCUConv1d(4, 6, 3, padding=2, dilation=2), (4, 11)),
    "conv2d_grouped_mean_abs": (lambda: ReCUConv2d(4, 6, 3, padding=1, groups=2,
                                                   config=BinaryConfig(scale="mean_abs")), (4, 7, 7)),
    "conv2d_real_activations": (lambda: ReCUConv2d(4, 6, 3, padding=1,
                                                   config=BinaryConfig(binary_activations=False)), (4, 7, 7)),
    "conv2d_real_weights_no_scale": (lambda: ReCUConv2d(4, 6, 1, config=BinaryConfig(binary_weights=False,
                                                                                       scale="none")), (4, 5, 5)),
}


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_layer_variants_equal_pytorch(tmp_path: Path, case: str) -> None:
    make, shape = LAYER_CASES[case]
    layer = randomize(make())
    x = torch.randn(4, *shape)
    x.view(-1)[::7] = 0.0
    path = tmp_path / f"{case}.onnx"
    export_onnx(layer, path, input_shape=shape)
    with torch.no_grad():
        want = layer(x)
    written = torch.from_numpy(run(session(path, "written"), x))
    if layer.config.fully_binary:  # +-1 operands: exact integer dot products, then PyTorch's own float steps
        assert torch.equal(written, want)
    else:  # real operands: onnxruntime's and PyTorch's convolutions sum in different orders
        assert torch.allclose(written, want, rtol=1e-5, atol=1e-5)
    assert torch.allclose(torch.from_numpy(run(session(path, "default"), x)), want, rtol=1e-5, atol=1e-5)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert ("Where" in ops) == layer.config.binary_activations


def test_sign_at_zero_zero_is_exported_as_sign(tmp_path: Path) -> None:
    layer = randomize(ReCUConv2d(3, 4, 3, padding=1, config=BinaryConfig(sign_at_zero="zero")))
    x = torch.randn(2, 3, 6, 6)
    x[:, :, 1:4, 1:4] = 0.0  # torch.sign gives 0 here, unlike the default +1
    path = tmp_path / "zero.onnx"
    export_onnx(layer, path, input_shape=(3, 6, 6))
    with torch.no_grad():
        want = layer(x)
    got = torch.from_numpy(run(session(path, "written"), x))
    assert torch.equal(got, want)
    assert "Sign" in {n.op_type for n in onnx.load(str(path)).graph.node}
    # the same layer with +1 at 0 computes something else on this input
    with torch.no_grad():
        plus_one = ReCUConv2d(3, 4, 3, padding=1)
        plus_one.load_state_dict(layer.state_dict())
        assert not torch.allclose(plus_one.eval()(x), want)


def test_bfloat16_compute_rounds_as_pytorch(tmp_path: Path) -> None:
    # A 1x1 conv over 515 channels fed filter 0's own signs: its dot product is 515, which bfloat16 (8
    # significant bits, spacing 4 in [512, 1024)) rounds to 516 (truncation would give 512).
    layer = randomize(ReCUConv2d(515, 2, 1, config=BinaryConfig(compute_dtype="bfloat16")))
    with torch.no_grad():
        signs = layer.binary_weight()[0, :, 0, 0]
    x = signs.reshape(1, 515, 1, 1) * (torch.rand(2, 515, 3, 3) + 0.5)
    path = tmp_path / "bf16.onnx"
    export_onnx(layer, path, input_shape=(515, 3, 3))
    with torch.no_grad():
        want = layer(x)
    assert torch.equal(want[:, 0], torch.full_like(want[:, 0], 516.0) * layer.alpha[0])
    assert torch.equal(torch.from_numpy(run(session(path, "written"), x)), want)
    assert torch.equal(torch.from_numpy(run(session(path, "default"), x)), want)


def test_recommended_session_keeps_the_integer_dot_products(tmp_path: Path) -> None:
    layer = randomize(ReCUConv2d(64, 32, 3, padding=1))
    x = torch.randn(2, 64, 8, 8)
    path = tmp_path / "conv.onnx"
    export_onnx(layer, path, input_shape=(64, 8, 8))
    with torch.no_grad():
        want = layer(x)
    # exact +-1 sums, then * alpha: PyTorch's float32 steps, bit for bit
    assert torch.equal(torch.from_numpy(run(onnxruntime_session(path, num_threads=1), x)), want)
    # with alpha folded into the weights (onnxruntime's default) the sums are rounded: close, not equal
    folded = torch.from_numpy(run(onnxruntime_session(path, num_threads=1, fold_into_weights=True), x))
    assert torch.allclose(folded, want, rtol=1e-5, atol=1e-5) and not torch.equal(folded, want)
    with pytest.raises(ValueError, match="num_threads"):
        onnxruntime_session(path, num_threads=0)


# ---- the paper's networks --------------------------------------------------------------------------------

NETS = [("resnet20_1w1a", 32, 18), ("vgg_small_1w1a", 32, 5), ("resnet18_1w1a_imagenet", 64, 16)]


@pytest.mark.parametrize("name,size,n_binary", NETS)
def test_network_matches_pytorch(tmp_path: Path, name: str, size: int, n_binary: int) -> None:
    # float convs exact in any order (make_float_convs_exact, dyadic input): onnxruntime's MLAS and PyTorch's
    # oneDNN sum in different, CPU-dependent orders, and a value next to 0 before a sign would decide the test
    model = make_float_convs_exact(randomize(models.create(name, num_classes=10))).train()  # left in train
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = tmp_path / f"{name}.onnx"
    info = export_onnx(model, path, input_shape=(3, size, size))
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert info["binary_layers"] == n_binary

    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert {e.domain: e.version for e in proto.opset_import}[""] == DEFAULT_OPSET
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("GreaterOrEqual") == ops.count("Where") == n_binary  # one sign per binary layer
    binary_convs = [n for n in proto.graph.node if n.op_type == "Conv" and n.input[0].startswith("where")]
    weights = initializers(proto)
    assert len(binary_convs) == n_binary
    assert all(set(np.unique(weights[n.input[1]])) == {-1.0, 1.0} for n in binary_convs)
    batch = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param == "batch"  # dynamic batch size
    assert {p.key for p in proto.metadata_props} >= {"recu_version", "recu_model_spec"}

    model.eval()
    for kind in ("written", "recommended"):
        sess = session(path, kind)
        for n in (8, 3):  # two batch sizes through the one graph
            x = dyadic(torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(n)), 1 / 8, 4.0)
            with torch.no_grad():
                want = model(x).numpy()
            assert_close_logits(run(sess, x), want)


# ---- input shape, refusals, CLI ------------------------------------------------------------------------


def test_default_input_shape_from_spec() -> None:
    assert default_input_shape(models.create("resnet20_1w1a")) == (3, 32, 32)
    assert default_input_shape(models.create("resnet18_1w1a_imagenet")) == (3, 224, 224)
    assert default_input_shape(models.create("resnet20_1w1a", in_channels=1)) == (1, 32, 32)
    with pytest.raises(ValueError, match="pass input_shape"):
        default_input_shape(nn.Sequential(ReCUConv2d(3, 4, 3)))


class _Subclass(ReCUConv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2


class _TwoOutputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = ReCUConv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.conv(x), x


@pytest.mark.parametrize("make,kwargs,message", [
    (lambda: nn.Sequential(_Subclass(3, 4, 3)), {"input_shape": (3, 8, 8)}, "only ReCUConv2d"),
    (lambda: nn.Sequential(ReCUConv2d(3, 4, 3)).half(), {"input_shape": (3, 8, 8)}, "float32"),
    (lambda: models.create("vgg_small_1w1a"), {"input_shape": (3, 16, 16)}, "does not run on input of shape"),
    (lambda: nn.Sequential(ReCUConv2d(3, 4, 3)), {}, "pass input_shape"),
    (lambda: nn.Sequential(ReCUConv2d(3, 4, 3)), {"input_shape": (3, 8, 8), "opset": 17}, "opset must be"),
    (lambda: nn.Sequential(ReCUConv2d(3, 4, 3)), {"input_shape": (3, 0, 8)}, "input_shape must be"),
    (lambda: _TwoOutputs(), {"input_shape": (3, 8, 8)}, "returns one tensor"),
])
def test_refuses_what_it_cannot_express(tmp_path: Path, make, kwargs: dict, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message) as err:
        export_onnx(make(), tmp_path / "x.onnx", **kwargs)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "x.onnx").exists()


def test_missing_package_gives_the_install_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript now raises ModuleNotFoundError
    with pytest.raises(ModuleNotFoundError, match=r"recu-bnn\[onnx\]"):
        export_onnx(nn.Sequential(ReCUConv2d(3, 4, 3)), tmp_path / "x.onnx", input_shape=(3, 8, 8))
    ckpt = tmp_path / "last.pt"
    model = models.create("resnet20_1w1a")
    torch.save({"model": model.state_dict(), "model_spec": model.recu_spec}, ckpt)
    assert main(["export", str(ckpt), "--format", "onnx", "-o", str(tmp_path / "x.onnx")]) == 1
    err = capsys.readouterr().err
    assert "recu-bnn[onnx]" in err and err.count("\n") == 1


def test_cli_export_onnx(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt, out = tmp_path / "last.pt", tmp_path / "model.onnx"
    model = make_float_convs_exact(randomize(models.create("resnet20_1w1a")))  # as test_network_matches_pytorch
    torch.save({"model": model.state_dict(), "model_spec": model.recu_spec, "epoch": 3}, ckpt)
    assert main(["export", str(ckpt), "--format", "onnx", "-o", str(out)]) == 0  # default input 3x32x32
    text = capsys.readouterr().out
    assert f"ONNX opset {DEFAULT_OPSET}" in text and "18 binary layers" in text
    x = dyadic(torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(5)), 1 / 8, 4.0)
    with torch.no_grad():
        want = model(x).numpy()
    assert_close_logits(run(session(out, "recommended"), x), want)

    # options of the other format are refused, one line each
    assert main(["export", str(ckpt), "--format", "onnx", "--no-fold", "-o", str(out)]) == 1
    assert "--no-fold applies to --format recu only" in capsys.readouterr().err
    assert main(["export", str(ckpt), "--opset", "18", "-o", str(tmp_path / "m.recu")]) == 1
    assert "apply to --format onnx only" in capsys.readouterr().err


# ---- real CIFAR-10 ---------------------------------------------------------------------------------------


@pytest.mark.cifar
def test_trained_resnet20_predicts_like_pytorch_on_cifar10(trained_resnet20: dict, cifar_dir: str,
                                                            tmp_path: Path) -> None:
    """The ResNet-20 the suite trains on CIFAR-10 (shared with test_trained_cifar), exported to ONNX, on
    all 10,000 test images: top-1 and logits (within 1e-4) as PyTorch's.

    Not every image: onnxruntime's float32 stem convolution sums in another order than PyTorch's, and a
    stem output within ~1e-7 of 0 then takes the other sign in the first binary layer; in this briefly
    trained network one such flip spreads to hundreds of activations. Measured here: 8-9 images with
    logits beyond 1e-4 and 0-1 with another top-1 (the plain default session, which also folds alpha and
    BatchNorm into the +-1 weights: 466 and 67). The bounds below leave room for that, not for an error
    of structure, which moves every image.
    """
    from recu.data import build_test_loader
    from recu.train import load_checkpoint, model_from_checkpoint

    model = model_from_checkpoint(load_checkpoint(Path(trained_resnet20["run_dir"]) / "last.pt")).eval()
    path = tmp_path / "r20.onnx"
    export_onnx(model, path)
    sessions = {kind: session(path, kind) for kind in ("written", "recommended")}
    loader = build_test_loader("cifar10", cifar_dir, batch_size=1000, device=torch.device("cpu"), workers=0)
    n = 0
    same_top1 = {kind: 0 for kind in sessions}
    close = {kind: 0 for kind in sessions}
    for x, _ in loader:
        with torch.no_grad():
            want = model(x).numpy()
        for kind, sess in sessions.items():
            got = run(sess, x)
            same_top1[kind] += int((got.argmax(axis=1) == want.argmax(axis=1)).sum())
            close[kind] += int((np.abs(got - want).max(axis=1) <= 1e-4 * np.abs(want).max(axis=1)).sum())
        n += x.shape[0]
    assert n == 10_000
    for kind in sessions:
        assert same_top1[kind] >= 9_995, (kind, same_top1)
        assert close[kind] >= 9_970, (kind, close)
