"""A run that diverges stops (on_nonfinite: stop) or skips the step (skip), on scikit-learn's digits.

A nan is put into the batch of a known (epoch, step) by wrapping the training loader, so the step the
engine names can be checked exactly; the reference runs drop that batch or never see it. In the binary
network the nan never reaches the loss (sign() makes it +1) but its gradients are nan; in the
full-precision one the loss is nan.
"""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import torch

import recu.data
from recu.train import TrainConfig, TrainingDiverged, load_checkpoint, train
from recu.train.engine import Trainer

from _tiny import TINY_BASE, assert_same_weights, checkpoint_weights, tiny_config

TINY = TINY_BASE + ["monitor=false"]
STEPS = 22  # 1437 digits training images / 64


def _cfg(tmp_path: Path, name: str, *extra: str) -> TrainConfig:
    return tiny_config(tmp_path, name, TINY, *extra)



def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _assert_finite(state: dict) -> None:
    for k, v in state.items():
        if v.is_floating_point():
            assert torch.isfinite(v).all(), k


class _NanBatches:
    """The training loader, with the batches at ``at`` ((epoch, step) pairs, from 0) made nan or dropped."""

    def __init__(self, loader: Any, at: set[tuple[int, int]], drop: bool) -> None:
        self.loader, self.at, self.drop = loader, at, drop
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.loader.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def num_samples(self) -> int:
        return self.loader.num_samples

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for step, (x, y) in enumerate(self.loader):  # every batch is drawn: the others stay the same
            if (self.epoch, step) not in self.at:
                yield x, y
            elif not self.drop:
                yield torch.full_like(x, float("nan")), y


@pytest.fixture
def nan_at(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """``nan_at({(epoch, step)}, drop=False)``: later runs in this test get those batches nan (or dropped)."""
    build = recu.data.build_loaders

    def install(at: set[tuple[int, int]], drop: bool = False) -> None:
        def patched(*args: Any, **kwargs: Any) -> Any:
            bundle = build(*args, **kwargs)
            bundle.train = _NanBatches(bundle.train, at, drop)
            return bundle

        monkeypatch.setattr(recu.data, "build_loaders", patched)

    return install


class _Snapshots:
    """A callback that keeps a copy of the weights at the end of every epoch (what last.pt then holds)."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def on_train_begin(self, model, run_dir, epochs):  # type: ignore[no-untyped-def]
        pass

    def on_epoch_end(self, model, epoch):  # type: ignore[no-untyped-def]
        self.states.append({k: v.detach().clone() for k, v in model.state_dict().items()})

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def test_a_nan_batch_stops_at_its_step_keeps_the_last_finite_checkpoints_and_resume_finishes(tmp_path, nan_at):
    snaps = _Snapshots()
    straight = train(_cfg(tmp_path, "straight", "epochs=3"), callbacks=[snaps])

    nan_at({(1, 4)})
    with pytest.raises(TrainingDiverged) as info:
        train(_cfg(tmp_path, "run", "epochs=3"))
    e = info.value
    assert (e.epoch, e.step, e.checkpoint_epoch) == (2, 5, 1)
    assert re.match(rf"training diverged at epoch 2, step 5/{STEPS}: gradients are not finite though the loss "
                    rf"is \d\.\d+ \(lr 0\.075\); "
                    rf".*last\.pt holds epoch 1, the last finite state; lower lr and continue with --resume, "
                    rf"or --set on_nonfinite=skip$", str(e)), str(e)
    run = tmp_path / "run"
    # epoch 2's nan weights reached neither checkpoint: both hold epoch 1, as the straight run had it
    for name in ("last.pt", "best.pt"):
        state = torch.load(run / name, map_location="cpu", weights_only=True)
        assert state["epoch"] == 0, name
        _assert_finite(state["model"])
        assert_same_weights(state["model"], snaps.states[0])
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1  # no record of the diverged epoch

    nan_at(set())
    resumed = train(_cfg(tmp_path, "run", "epochs=3"), resume=True)
    assert resumed["last_epoch"] == 3
    assert_same_weights(checkpoint_weights(run / "last.pt"), checkpoint_weights(tmp_path / "straight" / "last.pt"))
    assert resumed["final_top1"] == straight["final_top1"]


def test_a_nan_loss_is_named_at_its_step(tmp_path, nan_at):
    nan_at({(0, 6)})
    with pytest.raises(TrainingDiverged, match=rf"at epoch 1, step 7/{STEPS}: loss is nan \(lr 0\.1\); "):
        train(_cfg(tmp_path, "fp", "epochs=2", "model=digits_cnn_fp"))


def test_a_divergence_in_the_first_epoch_writes_no_checkpoint_and_the_run_can_start_again(tmp_path):
    with pytest.raises(TrainingDiverged, match=rf"at epoch 1, step \d+/{STEPS}: (loss is|gradients are) .*"
                                               r"\(lr 1e\+12\); no epoch finished with finite weights, so no "
                                               r"checkpoint was written; lower lr and start again") as info:
        train(_cfg(tmp_path, "r", "epochs=2", "lr=1e12"))
    assert info.value.epoch == 1 and info.value.checkpoint_epoch is None
    assert not (tmp_path / "r" / "last.pt").exists() and not (tmp_path / "r" / "best.pt").exists()
    # nothing blocks the same command with a sane lr (no --resume: there is nothing to resume)
    assert train(_cfg(tmp_path, "r", "epochs=1", "warmup_epochs=0"))["last_epoch"] == 1


def test_recu_train_prints_one_line_and_exits_1(tmp_path, capsys):
    from recu.cli import main

    args = ["train"]
    for item in TINY + [f"out_dir={tmp_path}", "name=cli", "epochs=2", "lr=1e12"]:
        args += ["--set", item]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("recu train: error: training diverged at epoch 1, step "), err


def test_non_finite_weights_after_the_last_step_stop_the_run(tmp_path, monkeypatch):
    """Every loss finite, but the weights not after the epoch's last step: caught before the checkpoint."""
    calls = [0]
    original = Trainer._train_step

    def step_then_spoil(self: Trainer, x, y, sums):  # type: ignore[no-untyped-def]
        out = original(self, x, y, sums)
        calls[0] += 1
        if calls[0] == 2 * STEPS:  # epoch 2's last step
            with torch.no_grad():
                self.model.head[2].bias[3] = float("inf")
        return out

    monkeypatch.setattr(Trainer, "_train_step", step_then_spoil)
    with pytest.raises(TrainingDiverged, match=rf"at epoch 2, step {STEPS}/{STEPS}: the weights or optimizer "
                                               rf"state are not finite after it") as info:
        train(_cfg(tmp_path, "w", "epochs=3"))
    assert info.value.checkpoint_epoch == 1
    assert load_checkpoint(tmp_path / "w" / "last.pt")["epoch"] == 0
    _assert_finite(checkpoint_weights(tmp_path / "w" / "last.pt"))


def test_skip_leaves_the_state_as_a_run_without_that_batch(tmp_path, nan_at, capsys):
    """The nan batch also passes through BatchNorm in training mode: its running statistics must be put back."""
    nan_at({(1, 4)}, drop=True)
    without = train(_cfg(tmp_path, "without", "epochs=2", "on_nonfinite=skip"))
    nan_at({(1, 4)})
    skipped = train(_cfg(tmp_path, "skipped", "epochs=2", "on_nonfinite=skip"))
    records = _records(tmp_path / "skipped")
    assert [r["skipped_steps"] for r in records] == [0, 1]
    assert "| skipped 1 non-finite step |" in capsys.readouterr().out
    a, b = checkpoint_weights(tmp_path / "skipped" / "last.pt"), checkpoint_weights(tmp_path / "without" / "last.pt")
    assert_same_weights(a, b)  # weights, BatchNorm statistics and batch counts
    _assert_finite(a)
    assert skipped["final_top1"] == without["final_top1"]
    reference = _records(tmp_path / "without")
    assert records[1]["train_loss"] == reference[1]["train_loss"]  # the skipped step is not in the mean
    momentum = [load_checkpoint(tmp_path / n / "last.pt")["optimizer"]["state"] for n in ("skipped", "without")]
    assert momentum[0].keys() == momentum[1].keys() and momentum[0]
    for k in momentum[0]:
        assert_same_weights(momentum[0][k], momentum[1][k])  # the skipped step left the momentum alone too


def test_float16_grad_scaler_runs_stop_at_the_nan_batch_and_skip_it_exactly(tmp_path, nan_at):
    """The GradScaler skips non-finite gradients itself; the engine watches the BatchNorm statistics
    that a nan forward pass spoils, names that step (stop) or puts them back (skip)."""
    fp16 = ["epochs=2", "amp=float16", "subset=320", "batch_size=32"]  # slow on the CPU: 10 small steps an epoch
    nan_at({(1, 4)})
    with pytest.raises(TrainingDiverged, match=r"at epoch 2, step 5/10: buffers \(BatchNorm statistics\) "
                                               r"are not finite though the loss is "):
        train(_cfg(tmp_path, "stop", *fp16))
    train(_cfg(tmp_path, "skipped", *fp16, "on_nonfinite=skip"))
    nan_at({(1, 4)}, drop=True)
    train(_cfg(tmp_path, "without", *fp16, "on_nonfinite=skip"))
    assert [r["skipped_steps"] for r in _records(tmp_path / "skipped")] == [0, 1]
    a, b = (load_checkpoint(tmp_path / n / "last.pt") for n in ("skipped", "without"))
    assert_same_weights(a["model"], b["model"])
    assert a["grad_scaler"] == b["grad_scaler"]  # the skipped step left the scale alone


def test_skip_stops_when_a_whole_epoch_is_skipped(tmp_path, nan_at):
    nan_at({(1, s) for s in range(STEPS)})
    with pytest.raises(TrainingDiverged, match=rf"at epoch 2: the loss or gradients of all its {STEPS} steps were "
                                               rf"not finite, all skipped \(lr 0\.075\); .*last\.pt holds epoch 1, "
                                               rf"the last finite state; lower lr and continue with --resume$"):
        train(_cfg(tmp_path, "all", "epochs=3", "on_nonfinite=skip"))
    assert load_checkpoint(tmp_path / "all" / "last.pt")["epoch"] == 0


def test_on_nonfinite_is_a_checked_config_value():
    assert TrainConfig().on_nonfinite == "stop"
    assert TrainConfig.from_yaml(None, ["on_nonfinite=skip"]).on_nonfinite == "skip"
    with pytest.raises(ValueError, match="on_nonfinite must be one of"):
        TrainConfig.from_yaml(None, ["on_nonfinite=ignore"])


_DDP_DRIVER = """
import os, sys
import torch
import recu.data
from recu.cli import main

build = recu.data.build_loaders

def nan_on_rank_1(*args, **kwargs):
    bundle = build(*args, **kwargs)
    loader = bundle.train

    class Loader:
        epoch = 0
        def set_epoch(self, e): self.epoch = e; loader.set_epoch(e)
        def __len__(self): return len(loader)
        num_samples = property(lambda self: loader.num_samples)
        def __iter__(self):
            for step, (x, y) in enumerate(loader):
                spoil = os.environ["RANK"] == "1" and (self.epoch, step) == (1, 3)
                yield (torch.full_like(x, float("nan")) if spoil else x), y

    bundle.train = Loader()
    return bundle

recu.data.build_loaders = nan_on_rank_1
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_torchrun_processes_take_the_same_decision(tmp_path, mode):
    """A nan batch on rank 1 only: both processes stop at the same step (stop) or skip it (skip); no hang."""
    driver = tmp_path / "driver.py"
    driver.write_text(textwrap.dedent(_DDP_DRIVER))
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(driver),
            "train"]
    for item in TINY + [f"out_dir={tmp_path}", "name=ddp", "model=mlp_1w1a", "epochs=2", "lr=0.05",
                        f"on_nonfinite={mode}"]:
        args += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    if mode == "stop":
        assert out.returncode != 0
        # rank 0's batch was finite, but DDP averaged rank 1's nan gradients into its own: both name step 4
        # (counted in the whole stream: the two processes' lines can interleave on the shared stderr)
        errors = out.stderr.count("recu train: error:")
        named = out.stderr.count(f"recu train: error: training diverged at epoch 2, step 4/{STEPS}: "
                                 "gradients are not finite")
        assert errors == named == 2, out.stderr
        assert load_checkpoint(tmp_path / "ddp" / "last.pt")["epoch"] == 0
    else:
        assert out.returncode == 0, out.stdout + out.stderr
        records = _records(tmp_path / "ddp")
        assert [r["skipped_steps"] for r in records] == [0, 1]
        _assert_finite(checkpoint_weights(tmp_path / "ddp" / "last.pt"))
