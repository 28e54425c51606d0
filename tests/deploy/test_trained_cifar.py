"""A ResNet-20 trained by `recu train` on real CIFAR-10, exported to 1 bit and run with the packed
kernels, predicts what the PyTorch model predicts on all 10,000 test images (the same top-1 up to exact
ties, logits to 1e-5), on every CPU."""

from pathlib import Path

import pytest
import torch

from recu.data import build_loaders
from recu.deploy import export, load
from recu.deploy.exporter.fixed_order import fixed_order_float_convs
from recu.train import load_checkpoint, model_from_checkpoint

from ._helpers import assert_same_logits

pytestmark = pytest.mark.cifar


@pytest.mark.parametrize("engine", ["plan", "layers"])
def test_packed_predictions_equal_pytorch_on_the_whole_test_set(trained_resnet20, cifar_dir, tmp_path, engine):
    ckpt = Path(trained_resnet20["run_dir"]) / "last.pt"
    model = model_from_checkpoint(load_checkpoint(ckpt)).eval()
    export(model, tmp_path / "r20.recu")
    packed = load(tmp_path / "r20.recu", engine=engine)
    # The layers engine runs the model's own float convs; the plan sums them in its fixed order, so its
    # reference is the model with that order (PyTorch's oneDNN order is the same on some CPUs only:
    # docs/deploy.md, "Exactness"). Either way the two sides take the same signs on every CPU.
    reference = model if engine == "layers" else fixed_order_float_convs(model)
    data = build_loaders("cifar10", cifar_dir, batch_size=128, eval_batch_size=1000,
                         device=torch.device("cpu"), seed=0)
    n = 0
    with torch.no_grad():
        for x, _ in data.test:
            assert_same_logits(packed(x).numpy(), reference(x).numpy())  # 1e-5 of each row's largest logit
            n += x.shape[0]
    assert n == 10_000
    size_ratio = ckpt.stat().st_size / (tmp_path / "r20.recu").stat().st_size
    assert size_ratio > 5  # ResNet-20's first conv, BN and classifier stay float32
