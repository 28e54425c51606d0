"""ReCUCallback (the tau schedule and dead-weight monitor in a user's own loop), its Lightning adapter,
and the two examples that show them."""

from __future__ import annotations

import io
import runpy
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import recu
from recu.train import ReCUCallback

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _model() -> nn.Module:
    return recu.binarize(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 2)))


def _perturb(model: nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))


def test_it_sets_the_schedules_tau_and_reports_the_monitor_each_epoch() -> None:
    model = _model()
    cb = ReCUCallback(epochs=4)
    taus = []
    for epoch in range(4):
        taus.append(cb.on_epoch_start(model, epoch))
        assert recu.get_tau(model) == pytest.approx(taus[-1])
        _perturb(model)
        record = cb.on_epoch_end(model, epoch)
        assert record["epoch"] == epoch and record["tau"] == taus[-1]
        assert record["dead_weight"]["total"]["flip_ratio"] > 0
    assert taus == [recu.ExponentialTau(0.85, 0.99, 4).value(e) for e in range(4)]


def test_its_state_survives_a_checkpoint_loaded_weights_only(tmp_path: Path) -> None:
    model = _model()
    first = ReCUCallback(epochs=4, schedule="linear")
    for epoch in range(2):
        first.on_epoch_start(model, epoch)
        _perturb(model)
        first.on_epoch_end(model, epoch)
    torch.save({"model": model.state_dict(), "recu": first.state_dict()}, tmp_path / "ckpt.pt")
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    second = ReCUCallback(epochs=4, schedule="linear")
    second.load_state_dict(state["recu"])
    assert second.schedule.last_tau == first.schedule.last_tau
    second.on_epoch_start(model, 2)
    record = second.on_epoch_end(model, 2)  # flips counted against the signs at the end of epoch 2 - 1
    assert record["dead_weight"]["start_epoch"] == first.monitor.start_epoch == -1
    with pytest.raises(ValueError, match="LinearTau.epochs is 5"):
        ReCUCallback(epochs=5, schedule="linear").load_state_dict(state["recu"])


def test_without_the_monitor_it_only_sets_tau() -> None:
    cb = ReCUCallback(epochs=3, schedule="constant", tau_start=0.9, monitor=False)
    model = _model()
    assert cb.on_epoch_start(model, 0) == 0.9 and cb.on_epoch_end(model, 0) == {"epoch": 0, "tau": 0.9}
    with pytest.raises(RuntimeError, match="on_epoch_start first"):
        ReCUCallback(epochs=3, monitor=False).on_epoch_end(model, 0)


def test_the_own_loop_example_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    history = runpy.run_path(str(EXAMPLES / "own_training_loop.py"))["main"](epochs=3)
    assert [r["epoch"] for r in history] == [0, 1, 2] and history[0]["tau"] == 0.85
    assert history[0]["dead_weight"]["total"]["flip_ratio"] > history[-1]["dead_weight"]["total"]["flip_ratio"]


def test_the_lightning_example_runs_and_a_lightning_checkpoint_resumes_the_schedule(tmp_path: Path) -> None:
    pytest.importorskip("lightning")
    example = runpy.run_path(str(EXAMPLES / "lightning_callback.py"))
    cb = example["main"](epochs=2)
    assert [r["tau"] for r in cb.history] == [0.85, recu.ExponentialTau(0.85, 0.99, 2).value(1)]
    assert "flip_ratio" in cb.history[0]["dead_weight"]["total"]

    import lightning.pytorch as pl

    from recu.train.lightning import ReCULightningCallback

    first = ReCULightningCallback(epochs=4)
    example["main"](epochs=2, callbacks=[first], enable_checkpointing=True, default_root_dir=str(tmp_path))
    ckpt = next(tmp_path.rglob("*.ckpt"))
    resumed = ReCULightningCallback(epochs=4)
    trainer = pl.Trainer(max_epochs=4, callbacks=[resumed], accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    x = torch.randn(64, 3, 16, 16)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, (x.mean((1, 2, 3)) > 0).long()), 32)
    trainer.fit(example["Classifier"](), data, ckpt_path=str(ckpt))
    assert [r["epoch"] for r in resumed.history] == [2, 3]
    assert resumed.recu.schedule.last_tau == pytest.approx(recu.ExponentialTau(0.85, 0.99, 4).value(3))
    assert resumed.history[0]["dead_weight"]["start_epoch"] == -1  # the monitor's state came with the checkpoint


def test_the_lightning_callback_writes_snapshots_on_global_rank_zero_only(tmp_path: Path) -> None:
    """Under DDP every process runs the callback on the same weights; only global rank 0 gets the run_dir."""
    pytest.importorskip("lightning")
    from types import SimpleNamespace

    from recu.train.lightning import ReCULightningCallback

    for zero, want in ((True, tmp_path), (False, None)):
        cb = ReCULightningCallback(epochs=3, run_dir=tmp_path)
        recu_cb = cb._callback(SimpleNamespace(max_epochs=3, is_global_zero=zero))
        assert recu_cb.run_dir == want and recu_cb.epochs == 3
