"""Shipped weights: ``create(name, pretrained=True)``, the 1-bit file, their sha256 checks and errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

import recu.pretrained as P
from recu.models import create


def _sha(file: Path) -> str:
    return hashlib.sha256(file.read_bytes()).hexdigest()


# The float stem conv is the only step before a binary layer's sign whose float32 bits depend on the CPU (oneDNN
# picks a summation order per CPU, the plan sums one fixed fma chain; a value next to 0 could take either sign).
# Dyadic stems and inputs make its sums exact in any order; real ones are compared with the plan's own order.
def _fixed_order_logits(model, x):  # type: ignore[no-untyped-def]
    from recu.deploy.exporter.fixed_order import fixed_order_float_convs

    with torch.no_grad():
        return fixed_order_float_convs(model)(torch.as_tensor(x)).numpy()


def _top1_of(got: torch.Tensor, want: torch.Tensor, rtol: float = 1e-5) -> torch.Tensor:
    """Per row: ``got`` (classes) is a top-1 of ``want`` (logits) up to the classifier's rounding, ``rtol`` of the
    row's largest |logit| (the plan sums it in float64, PyTorch in float32): a closer tie may go either way."""
    scale = want.abs().amax(1)
    return want.gather(1, got[:, None])[:, 0] >= want.amax(1) - 2 * rtol * scale


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """A temporary table entry for a seeded ResNet-20 (random weights, BN statistics set), as a
    finished run would ship it: a recu checkpoint and its 1-bit export."""
    pytest.importorskip("safetensors")
    from recu.deploy import export

    torch.manual_seed(0)
    model = create("resnet20_1w1a")
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
        model.conv1.weight.copy_(torch.round(model.conv1.weight * 256) / 256)  # 2^-8 grid: exact stem sums
    ckpt = tmp_path / "r20.pt"
    torch.save({"model": model.state_dict(), "model_spec": model.recu_spec, "epoch": 99, "config": {},
                "metrics": {}}, ckpt)
    export(model.eval(), tmp_path / "r20.recu")
    entry = P.PretrainedWeights("resnet20_1w1a", "cifar10", "r20.pt", _sha(ckpt), "r20.recu",
                                _sha(tmp_path / "r20.recu"), 12.34, "test")
    monkeypatch.setattr(P, "_files_dir", lambda: tmp_path)
    monkeypatch.setattr(P, "PRETRAINED", {"resnet20_1w1a": entry})
    return model, tmp_path


def test_create_pretrained_returns_the_shipped_weights(shipped):
    model, _ = shipped
    loaded = create("resnet20_1w1a", pretrained=True)
    own, got = model.state_dict(), loaded.state_dict()
    assert own.keys() == got.keys()
    for k in own:
        assert torch.equal(own[k], got[k]), k
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(model.eval()(x), loaded.eval()(x))


def test_the_shipped_1bit_file_predicts_as_the_float_model(shipped):
    from recu.deploy import load

    model, _ = shipped
    packed = load(P.path("resnet20_1w1a", "deploy"))
    x = torch.round(torch.randn(16, 3, 32, 32) * 16) / 16  # 2^-4 grid: |stem sum| * 2^12 < 2^24, exact in any order
    with torch.no_grad():
        expected = model.eval()(x)
    got = torch.as_tensor(packed(x))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(got.argmax(1), expected.argmax(1))


def test_pretrained_refuses_what_would_change_the_architecture(shipped):
    with pytest.raises(ValueError, match="has 10 classes.*not 100"):
        create("resnet20_1w1a", num_classes=100, pretrained=True)
    with pytest.raises(ValueError, match="cannot be combined with pretrained"):
        create("resnet20_1w1a", config={"clamp": "mask"}, pretrained=True)


def test_a_damaged_or_missing_file_is_an_error(shipped):
    _, folder = shipped
    data = bytearray((folder / "r20.pt").read_bytes())
    data[-100] ^= 1
    (folder / "r20.pt").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256 .* expected .*damaged"):
        create("resnet20_1w1a", pretrained=True)
    (folder / "r20.recu").unlink()
    with pytest.raises(FileNotFoundError, match="deploy file of 'resnet20_1w1a' is missing"):
        P.path("resnet20_1w1a", "deploy")


def test_a_model_without_weights_names_the_models_that_have_them(shipped):
    with pytest.raises(ValueError, match=r"no pretrained weights for model 'vgg_small_1w1a'; models with "
                                         r"weights: resnet20_1w1a"):
        create("vgg_small_1w1a", pretrained=True)
    with pytest.raises(ValueError, match="kind must be"):
        P.path("resnet20_1w1a", "onnx")  # type: ignore[arg-type]


# The weights the package really ships (docs/results.md): these read the installed files, no fixture.
SHIPPED = "resnet20_1w1a"


def test_the_shipped_resnet20_loads_without_data_and_its_1bit_file_agrees():
    from recu.deploy import load

    entry = P.info(SHIPPED)  # an error, not a skip, if the table lost its entry
    model = create(SHIPPED, pretrained=True).eval()
    assert model.recu_spec["config"]["compute_dtype"] == "float32"  # trained in bf16, shipped float32
    packed = load(P.path(SHIPPED, "deploy"))
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        expected = torch.as_tensor(_fixed_order_logits(model, x))  # the plan's stem order: its signs on any CPU
    got = torch.as_tensor(packed(x))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(got.argmax(1), expected.argmax(1))
    assert 84.0 <= entry.test_top1 < 100.0


@pytest.mark.cifar
def test_the_shipped_resnet20_reaches_its_documented_accuracy_and_packed_predicts_identically(cifar_dir):
    from recu.data import build_test_loader
    from recu.deploy import load

    entry = P.info(SHIPPED)
    model = create(SHIPPED, pretrained=True).eval()
    packed = load(P.path(SHIPPED, "deploy"))
    loader = build_test_loader("cifar10", cifar_dir, batch_size=1000, device=torch.device("cpu"), workers=0)
    correct = same = n = 0
    with torch.no_grad():
        for x, y in loader:
            want = torch.as_tensor(_fixed_order_logits(model, x))
            got = torch.as_tensor(packed(x.numpy())).argmax(1)  # the plan's fixed kernels: the same on every CPU
            correct += int((got == y).sum())
            same += int(_top1_of(got, want).sum())
            n += x.shape[0]
    assert n == 10_000
    assert same == n  # the 1-bit file predicts the float model's class on every test image (up to exact ties)
    assert 100.0 * correct / n == pytest.approx(entry.test_top1, abs=0.005)
