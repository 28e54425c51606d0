"""``recu convert-authors``: an authors' checkpoint becomes a recu checkpoint for ``recu eval``, the
analysis commands and (with ``--sign-at-zero plus_one``) ``recu export``; export refuses sign 0."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from _authors_models import authors_resnet20, randomize, save_as_authors
from recu.analysis.rundata import load_checkpoint_weights
from recu.cli import main
from recu.deploy import export, load
from recu.models import create, load_authors_checkpoint
from recu.nn import BinaryConfig
from recu.train import load_checkpoint, model_from_checkpoint


@pytest.fixture()
def authors_file(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    model = authors_resnet20(num_classes=10)
    randomize(model, 0)
    with torch.no_grad():  # stem weights on a 2^-8 grid: with 2^-4-grid inputs its sums are exact in any order
        model.conv1.weight.copy_(torch.round(model.conv1.weight * 256) / 256)
    path = tmp_path / "model_best.pth.tar"
    save_as_authors(model.eval(), path, data_parallel=True)  # their main.py wrote epoch 7
    return path, model


def test_converted_checkpoint_is_a_recu_checkpoint(authors_file, tmp_path: Path, capsys) -> None:
    path, authors = authors_file
    out = tmp_path / "r20.pt"
    assert main(["convert-authors", str(path), "--model", "resnet20_1w1a", "-o", str(out)]) == 0
    assert "sign_at_zero=zero" in capsys.readouterr().out
    state = load_checkpoint(out)  # what recu eval reads
    assert state["epoch"] == 6 and state["config"]["dataset"] == "cifar10"
    assert state["model_spec"]["config"]["sign_at_zero"] == "zero"
    model = model_from_checkpoint(state, str(out)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), authors(x), rtol=1e-5, atol=1e-5)
    weights, taus, _ = load_checkpoint_weights(out)  # what recu analyze reads
    assert len(weights) == 18 and all(t == pytest.approx(0.9) for t in taus.values())


def test_export_refuses_sign_zero_and_takes_plus_one(authors_file, tmp_path: Path, capsys) -> None:
    path, _ = authors_file
    zero, plus = tmp_path / "zero.pt", tmp_path / "plus.pt"
    assert main(["convert-authors", str(path), "--model", "resnet20_1w1a", "-o", str(zero)]) == 0
    capsys.readouterr()
    assert main(["export", str(zero), "-o", str(tmp_path / "zero.recu")]) == 1
    err = capsys.readouterr().err
    assert "sign_at_zero='zero'" in err and "1 bit cannot hold" in err and err.count("\n") == 1
    assert not (tmp_path / "zero.recu").exists()

    assert main(["convert-authors", str(path), "--model", "resnet20_1w1a", "-o", str(plus),
                 "--sign-at-zero", "plus_one"]) == 0
    assert main(["export", str(plus), "-o", str(tmp_path / "plus.recu")]) == 0
    model = load_authors_checkpoint(path, "resnet20_1w1a", sign_at_zero="plus_one")
    x = torch.round(torch.randn(2, 3, 32, 32) * 16) / 16  # 2^-4 grid: stem sums exact, the same signs on any CPU
    with torch.no_grad():
        torch.testing.assert_close(load(tmp_path / "plus.recu")(x), model(x), rtol=1e-4, atol=1e-5)


def test_export_function_refuses_any_zero_sign_layer(tmp_path: Path) -> None:
    model = create("resnet20_1w1a", config=BinaryConfig(sign_at_zero="zero")).eval()
    with pytest.raises(ValueError, match=r"binary layer 'layers.0.0.conv1' \(and 17 more\) uses sign_at_zero='zero'"):
        export(model, tmp_path / "m.recu")


def test_convert_errors_are_one_line(tmp_path: Path, capsys) -> None:
    noise = tmp_path / "noise.pth.tar"
    noise.write_bytes(bytes(range(256)) * 4)
    assert main(["convert-authors", str(noise), "--model", "resnet20_1w1a", "-o", str(tmp_path / "o.pt")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("recu convert-authors: error:") and err.count("\n") == 1
    assert not (tmp_path / "o.pt").exists()
    with pytest.raises(SystemExit):  # argparse: not one of the authors' models
        main(["convert-authors", str(noise), "--model", "resnet20_fp", "-o", str(tmp_path / "o.pt")])
