"""``recu export`` and ``recu bench``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from recu import models
from recu.cli import main
from recu.deploy import load


def make_checkpoint(path: Path) -> torch.nn.Module:
    model = models.create("resnet20_1w1a").eval()
    torch.save({"model": model.state_dict(), "model_spec": model.recu_spec, "epoch": 3}, path)
    return model


def test_export_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt, out = tmp_path / "last.pt", tmp_path / "model.recu"
    model = make_checkpoint(ckpt)
    assert main(["export", str(ckpt), "-o", str(out)]) == 0
    assert "18 packed binary layers" in capsys.readouterr().out
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(load(out)(x), model(x), rtol=1e-4, atol=1e-5)


def test_export_rejects_incompatible_checkpoints(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bare = tmp_path / "bare.pt"
    torch.save(models.create("resnet20_1w1a").state_dict(), bare)  # a state_dict, not a checkpoint
    assert main(["export", str(bare), "-o", str(tmp_path / "x.recu")]) == 1
    assert "not a recu checkpoint" in capsys.readouterr().err

    wrong = tmp_path / "wrong.pt"
    model = models.create("resnet20_1w1a")
    torch.save({"model": model.state_dict(), "model_spec": {**model.recu_spec, "name": "resnet18_1w1a"}}, wrong)
    assert main(["export", str(wrong), "-o", str(tmp_path / "x.recu")]) == 1
    assert "does not fit" in capsys.readouterr().err

    assert main(["export", str(tmp_path / "missing.pt"), "-o", str(tmp_path / "x.recu")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_bench_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt, out = tmp_path / "last.pt", tmp_path / "model.recu"
    make_checkpoint(ckpt)
    assert main(["export", str(ckpt), "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["bench", str(out), "--batch", "1", "2", "--repeat", "2", "--no-compile", "--threads", "1",
                 "--top", "3"]) == 0
    text = capsys.readouterr().out
    assert "packed" in text and "eager" in text and "per layer" in text
    assert "max relative difference 0" in text or "e-0" in text


def test_bench_unknown_target(capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "no_such_model_or_file"]) == 1
    assert "neither a file nor a model name" in capsys.readouterr().err
