"""A ResNet-20 trained by `recu train` on real CIFAR-10, exported to 1 bit and run with the packed
kernels, predicts exactly what the PyTorch model predicts on all 10,000 test images."""

from pathlib import Path

import pytest
import torch

from recu.data import build_loaders
from recu.deploy import export, load
from recu.train import load_checkpoint, model_from_checkpoint

pytestmark = pytest.mark.cifar


@pytest.mark.parametrize("engine", ["plan", "layers"])
def test_packed_predictions_equal_pytorch_on_the_whole_test_set(trained_resnet20, cifar_dir, tmp_path, engine):
    ckpt = Path(trained_resnet20["run_dir"]) / "last.pt"
    model = model_from_checkpoint(load_checkpoint(ckpt)).eval()
    export(model, tmp_path / "r20.recu")
    packed = load(tmp_path / "r20.recu", engine=engine)
    data = build_loaders("cifar10", cifar_dir, batch_size=128, eval_batch_size=1000,
                         device=torch.device("cpu"), seed=0)
    ours, theirs, n, worst = [], [], 0, 0.0
    with torch.no_grad():
        for x, _ in data.test:
            got, want = packed(x), model(x)
            ours.append(got.argmax(dim=1))
            theirs.append(want.argmax(dim=1))
            # relative to each row's largest logit: the 1e-5 criterion
            worst = max(worst, float(((got - want).abs() / want.abs().amax(1, keepdim=True)).max()))
            n += x.shape[0]
    assert n == 10_000
    assert torch.equal(torch.cat(ours), torch.cat(theirs))
    assert worst <= 1e-5
    size_ratio = ckpt.stat().st_size / (tmp_path / "r20.recu").stat().st_size
    assert size_ratio > 5  # ResNet-20's first conv, BN and classifier stay float32
