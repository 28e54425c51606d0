import os

import pytest
import torch

from recu.models import create
from recu.train.checkpoint import (load_checkpoint, load_model_state, rng_state, save_checkpoint,
                                   set_rng_state)


def test_round_trip_with_weights_only(tmp_path):
    model = create("resnet20_1w1a")
    save_checkpoint({"model": model.state_dict(), "rng": rng_state(), "epoch": 3}, tmp_path / "c.pt")
    state = load_checkpoint(tmp_path / "c.pt")
    assert state["epoch"] == 3
    other = create("resnet20_1w1a")
    load_model_state(other, state["model"])
    for k, v in model.state_dict().items():
        assert torch.equal(v, other.state_dict()[k]), k


def test_a_failed_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.ones(3)}, "epoch": 1}, path)

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of the write

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"model": {"w": torch.zeros(3)}, "epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert os.listdir(tmp_path) == ["last.pt"]  # no temporary file left behind


def test_loading_never_runs_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    torch.save({"model": {}, "payload": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="corrupt or not a recu checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()


def test_corrupt_and_missing_files(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"\x00not a zip")
    with pytest.raises(ValueError, match="bad.pt is corrupt"):
        load_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")
    torch.save({"weights": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="no 'model' entry"):
        load_checkpoint(tmp_path / "other.pt")


def test_incompatible_checkpoint_names_the_mismatch():
    with pytest.raises(ValueError, match="incompatible.*(missing keys|shape mismatches)"):
        load_model_state(create("resnet20_1w1a"), create("resnet18_1w1a").state_dict())
    with pytest.raises(ValueError, match=r"shape mismatches \['fc.weight"):
        load_model_state(create("resnet20_1w1a"), create("resnet20_1w1a", num_classes=100).state_dict())


def test_rng_state_restores_every_generator():
    import random

    import numpy as np

    state = rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
