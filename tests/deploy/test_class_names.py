"""A deployment file can carry the class names and the input preprocessing of a folder data set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from recu.deploy import DeployFileError, export, load, read_metadata, read_tensors
from recu.deploy.runtime.validate import check_file
from recu.models import create

NAMES = [f"class_{i}" for i in range(10)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("names") / "mlp.recu"
    export(create("mlp_1w1a").eval(), path, class_names=NAMES,
           preprocessing={"image_size": 8, "in_channels": 1, "mean": [0.3], "std": [0.2]})
    return path


@pytest.mark.parametrize("engine", ["plan", "layers"])
def test_both_engines_give_the_class_names(exported: Path, engine: str) -> None:
    model = load(exported, engine=engine)
    assert model.class_names == NAMES
    logits = model(torch.randn(3, 1, 8, 8))
    assert [model.class_names[i] for i in torch.as_tensor(logits).argmax(1).tolist()][0] in NAMES
    assert model.metadata["preprocessing"]["mean"] == [0.3]


def test_a_file_without_names_has_none(tmp_path: Path) -> None:
    export(create("mlp_1w1a").eval(), tmp_path / "plain.recu")
    assert load(tmp_path / "plain.recu").class_names is None


def test_names_that_do_not_fit_the_model_are_refused(exported: Path) -> None:
    meta, tensors = read_metadata(exported), read_tensors(exported)
    for bad, message in [(NAMES[:3], "names 3 classes, the model has 10"), ([1, 2], "must be a list of strings")]:
        with pytest.raises(DeployFileError, match=message):
            check_file({**json.loads(json.dumps(meta)), "class_names": bad}, tensors, "f.recu")
    with pytest.raises(ValueError, match="class_names must be a list of strings"):
        export(create("mlp_1w1a"), exported.parent / "x.recu", class_names="cat")
