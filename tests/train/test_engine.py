"""The engine on real data (scikit-learn's digits): exact resume, a killed run, torchrun/DDP."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from recu.train import TrainConfig, load_checkpoint, train

from _tiny import TINY_BASE, assert_same_weights, checkpoint_weights, tiny_config

TINY = TINY_BASE + ["monitor=true"]


def _cfg(tmp_path: Path, name: str, *extra: str) -> TrainConfig:
    return tiny_config(tmp_path, name, TINY, *extra)



def test_two_epochs_equal_one_plus_resume_one(tmp_path):
    straight = train(_cfg(tmp_path, "straight", "epochs=2"))
    assert straight["final_top1"] > 50  # it learns: 10 classes, chance is 10%
    train(_cfg(tmp_path, "split", "epochs=2"), stop_after=1)
    resumed = train(_cfg(tmp_path, "split", "epochs=2"), resume=True)
    assert_same_weights(checkpoint_weights(tmp_path / "straight" / "last.pt"), checkpoint_weights(tmp_path / "split" / "last.pt"))
    assert resumed["final_top1"] == straight["final_top1"]
    lines = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2  # one record per epoch, none duplicated by the resume


def test_recu_eval_reproduces_the_final_test_accuracy(tmp_path, capsys):
    import json

    from recu.cli import main

    # the run evaluates in recu eval's batches of 97: other shapes may sum the float stem in another order, flip a sign
    res = train(_cfg(tmp_path, "e", "epochs=1", "warmup_epochs=0", "eval_batch_size=97"))
    assert main(["eval", str(tmp_path / "e" / "last.pt"), "--device", "cpu", "--batch-size", "97"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["epoch"] == 0
    assert abs(out["top1"] - res["final_top1"]) < 1e-9  # same model, same test split, same batches: same bits


def test_existing_run_is_not_overwritten(tmp_path):
    train(_cfg(tmp_path, "r", "epochs=2"))
    with pytest.raises(ValueError, match="already holds a run.*--resume"):
        train(_cfg(tmp_path, "r", "epochs=2"))


def _cli(tmp_path: Path, name: str, *extra: str) -> list[str]:
    args = [sys.executable, "-m", "recu.cli", "train"]
    for item in TINY + [f"out_dir={tmp_path}", f"name={name}", "batch_size=16", "epochs=3", *extra]:
        args += ["--set", item]
    return args


def test_sigkill_mid_epoch_then_resume_gives_the_same_weights(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    subprocess.run(_cli(tmp_path, "reference"), env=env, check=True, capture_output=True, timeout=600)

    proc = subprocess.Popen(_cli(tmp_path, "killed"), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 1:
            break
        assert proc.poll() is None, proc.stdout.read().decode()
        time.sleep(0.05)
    time.sleep(0.3)  # into the second epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(metrics.read_text().splitlines())
    assert 1 <= done < 3, "the run was meant to die mid-way"
    subprocess.run(_cli(tmp_path, "killed") + ["--resume"], env=env, check=True, capture_output=True, timeout=600)
    assert_same_weights(checkpoint_weights(tmp_path / "reference" / "last.pt"), checkpoint_weights(tmp_path / "killed" / "last.pt"))
    assert len(metrics.read_text().splitlines()) == 3


def test_torchrun_two_processes_match_one(tmp_path):
    """Same global batch on 2 gloo processes as on 1: DDP averages the gradient of the two halves.
    The model has no BatchNorm, whose batch statistics would differ per process (use sync_bn on GPUs)."""
    # float64 binary MLP (_float64_cli.py): in float32 the two gradient sums crossed a sign/hardtanh edge, 1 seed in 4
    extra = ["model=mlp_1w1a_float64", "epochs=2", "batch_size=64", "lr=0.05"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cli = str(Path(__file__).with_name("_float64_cli.py"))
    one = [sys.executable, cli, "train"]
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", cli, "train"]
    for cmd, name in ((one, "one"), (two, "two")):
        args = list(cmd)
        for item in TINY + [f"out_dir={tmp_path}", f"name={name}", *extra]:
            args += ["--set", item]
        out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stdout + out.stderr
    a, b = checkpoint_weights(tmp_path / "one" / "last.pt"), checkpoint_weights(tmp_path / "two" / "last.pt")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-9, atol=1e-12, msg=k)  # float64 runs differ by ~1e-15


class _TenSecondEpochs:
    """A callback that makes every epoch last exactly 10 s on the engine's (fake) clock."""

    def __init__(self, clock: list) -> None:
        self.clock = clock

    def on_train_begin(self, model, run_dir, epochs):
        pass

    def on_epoch_end(self, model, epoch):
        self.clock[0] += 10.0

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_time_limit_stops_after_the_last_epoch_that_fits_and_resume_finishes(tmp_path, monkeypatch):
    from recu.train import engine

    clock = [0.0]
    monkeypatch.setattr(engine, "_clock", lambda: clock[0])
    # epochs end at 10, 20, 30 s; after epoch 3 the next would end at 30 + 1.1 * 10 = 41 > 35
    cut = train(_cfg(tmp_path, "cut", "epochs=5"), callbacks=[_TenSecondEpochs(clock)], time_limit=35.0)
    assert cut["stopped_by_time_limit"] and cut["last_epoch"] == 3
    assert len((tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()) == 3
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 2
    clock[0] = 0.0
    done = train(_cfg(tmp_path, "cut", "epochs=5"), callbacks=[_TenSecondEpochs(clock)], resume=True,
                 time_limit=1000.0)
    assert not done["stopped_by_time_limit"] and done["last_epoch"] == 5
    straight = train(_cfg(tmp_path, "straight", "epochs=5"))
    assert_same_weights(checkpoint_weights(tmp_path / "straight" / "last.pt"), checkpoint_weights(tmp_path / "cut" / "last.pt"))
    assert done["final_top1"] == straight["final_top1"]


def test_time_limit_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="time_limit must be a positive"):
        train(_cfg(tmp_path, "x", "epochs=2"), time_limit=0)
