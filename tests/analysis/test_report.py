"""``recu analyze`` on a run directory made by actually running the monitor, and on checkpoints."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import recu
from recu.analysis import DeadWeightMonitor
from recu.analysis import stats as S
from recu.analysis.monitor import RESULT_KEY
from recu.analysis.report import analyze
from recu.analysis.rundata import find_monitor, load_run
from recu.cli import main as cli_main

EPOCHS = 6
PNG = b"\x89PNG\r\n\x1a\n"


def tiny_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3), recu.ReCUConv2d(8, 16, 3), recu.ReCUConv2d(16, 16, 3),
                         recu.ReCULinear(64, 10), nn.Linear(10, 2))


def fabricate_run(run_dir: Path) -> tuple[list[dict], nn.Module]:
    """A run directory as the engine writes it, the monitor records coming from the real monitor."""
    torch.manual_seed(0)
    model = tiny_model()
    mon = DeadWeightMonitor(since_epochs=[2])
    mon.on_train_begin(model, run_dir, EPOCHS)
    g = torch.Generator().manual_seed(0)
    results = []
    with open(run_dir / "metrics.jsonl", "w") as f:
        for epoch in range(EPOCHS):
            recu.set_tau(model, 0.85 + 0.14 * epoch / (EPOCHS - 1))
            with torch.no_grad():
                for _, m in recu.binary_layers(model):
                    m.weight.add_(0.4 / (epoch + 1) * m.weight.std() * torch.randn(m.weight.shape, generator=g))
            out = mon.on_epoch_end(model, epoch)
            results.append(out[RESULT_KEY])
            record = {"epoch": epoch, "lr": 0.1, "tau": 0.85, "train_loss": 1.0, "test_top1": 40.0 + 3 * epoch,
                      "monitor": out}
            f.write(json.dumps(record) + "\n")
    (run_dir / "config.yaml").write_text("model: tiny\ndataset: cifar10\nepochs: 6\n")
    return results, model


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[dict], nn.Module]:
    run_dir = tmp_path_factory.mktemp("run")
    results, model = fabricate_run(run_dir)
    out = analyze(run_dir)
    return run_dir, out, results, model


def test_report_files(report: tuple) -> None:
    run_dir, out, _, _ = report
    assert out == run_dir / "report"
    names = {p.name for p in out.iterdir()}
    pngs = {"flip_ratio.png", "flips_by_bucket.png", "never_flipped.png", "clamped_share.png",
            "distribution_fit.png", "weights_hist.png", "weights_hist_layers.png", "training.png"}
    assert pngs | {"summary.md", "numbers.json"} == names
    for name in pngs:
        data = (out / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000, name


def test_numbers_match_the_monitor(report: tuple) -> None:
    _, out, results, _ = report
    numbers = json.loads((out / "numbers.json").read_text())
    assert numbers["mode"] == "run"
    assert numbers["training"] == {"epochs_logged": EPOCHS, "final_epoch": 5, "final_top1": 55.0,
                                   "best_top1": 55.0, "best_epoch": 5}
    assert numbers["monitor_final"] == results[-1]
    assert numbers["series"]["flip_ratio"] == [r["total"]["flip_ratio"] for r in results]
    assert numbers["series"]["never_flipped"]["2"] == [None, None] + [r["total"]["never_flipped"]["2"]
                                                                      for r in results[2:]]
    buckets = numbers["buckets_all_epochs"]
    assert buckets["flips"] == [sum(r["layers"][n]["bucket_flips"][i] for r in results for n in r["layers"])
                                for i in range(10)]
    n_weights = results[0]["total"]["numel"]
    assert sum(buckets["weight_epochs"]) == EPOCHS * n_weights
    assert sum(buckets["flips"]) == sum(r["total"]["flips"] for r in results)


def test_snapshot_statistics(report: tuple) -> None:
    run_dir, out, _, model = report
    numbers = json.loads((out / "numbers.json").read_text())
    assert list(numbers["snapshots"]) == ["init", "middle", "end"]
    assert [numbers["snapshots"][s]["epoch"] for s in ("init", "middle", "end")] == [-1, EPOCHS // 2, EPOCHS - 1]
    end = numbers["snapshots"]["end"]["layers"]
    for name, layer in recu.binary_layers(model):  # the end snapshot holds the final W1
        w1 = layer.standardized_weight().detach()
        assert end[name]["kurtosis"] == pytest.approx(float(S.kurtosis(w1)), rel=1e-6)
        assert end[name]["b_hat"] == pytest.approx(float(w1.abs().mean()), rel=1e-6)
        assert end[name]["tau"] == pytest.approx(0.99, abs=1e-6)
        assert end[name]["clamped_share"] == pytest.approx(float((w1.abs() > layer.quantile(w1)).double().mean()))
    init = numbers["snapshots"]["init"]["pooled"]
    assert init["kurtosis"] == pytest.approx(1.8, abs=0.15)  # default Conv2d init is uniform: kurtosis 9/5


def test_summary_markdown(report: tuple) -> None:
    _, out, results, _ = report
    md = (out / "summary.md").read_text()
    assert md.startswith("# ReCU run report")
    assert "- model: tiny" in md and "final test top-1: 55.00% (epoch index 5)" in md
    assert f"{100 * results[-1]['total']['flip_ratio']:.1f}% of {results[-1]['total']['numel']:,}" in md
    for name in results[-1]["layers"]:
        assert f"| `{name}` |" in md
    for png in ("flip_ratio.png", "weights_hist.png"):
        assert f"]({png})" in md


def test_find_monitor_nested_and_absent() -> None:
    inner = {"kind": "recu.dead_weight", "layers": {}}
    assert find_monitor({"monitor": {"dead_weight": inner, "other": 1}}) is inner
    assert find_monitor({"monitor": inner}) is inner
    assert find_monitor({"monitor": {"loss_scale": 3.0}}) is None
    assert find_monitor({"epoch": 0}) is None


def test_run_without_monitor_records(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"epoch": 0, "test_top1": 10.0}) + "\n")
    out = analyze(tmp_path, tmp_path / "r")
    assert "No DeadWeightMonitor records" in (out / "summary.md").read_text()
    assert json.loads((out / "numbers.json").read_text())["figures"] == ["training.png"]
    # with a last.pt but no snapshots, the final weights come from the checkpoint
    model = tiny_model()
    torch.save({"model": model.state_dict(), "epoch": 0}, tmp_path / "last.pt")
    numbers = json.loads((analyze(tmp_path, tmp_path / "r2") / "numbers.json").read_text())
    assert list(numbers["snapshots"]) == ["last.pt"] and numbers["snapshots"]["last.pt"]["epoch"] == 0
    assert set(numbers["snapshots"]["last.pt"]["layers"]) == {"1", "2", "3"}
    assert "weights_hist.png" in numbers["figures"]


def test_bad_inputs_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a run directory"):
        load_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match="line 1 is not valid JSON"):
        load_run(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        analyze(tmp_path / "missing.pt")
    torch.save({"model": nn.Linear(2, 2).state_dict()}, tmp_path / "fp.pt")
    with pytest.raises(ValueError, match="no binary layers"):
        analyze(tmp_path / "fp.pt")
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "pickled_module.pt")  # needs unpickling code
    with pytest.raises(ValueError, match="weights-only"):
        analyze(tmp_path / "pickled_module.pt")


@pytest.mark.parametrize("where", ["top", "kwargs"])
def test_checkpoint_report_uses_the_stored_config_and_tau(tmp_path: Path, where: str) -> None:
    config = recu.BinaryConfig(b_star=0.5)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), recu.ReCUConv2d(8, 16, 3, config=config),
                          recu.ReCUConv2d(16, 16, 3, config=config), nn.Linear(16, 2))
    recu.set_tau(model, 0.9)
    spec = {"name": "tiny", "num_classes": 2, "kwargs": {}}
    if where == "top":  # as recu.models writes recu_spec
        spec["config"] = dataclasses.asdict(config)
    else:
        spec["kwargs"]["config"] = dataclasses.asdict(config)
    ckpt = {"model": model.state_dict(), "epoch": 7, "model_spec": spec}
    torch.save(ckpt, tmp_path / "last.pt")
    assert cli_main(["analyze", str(tmp_path / "last.pt")]) == 0
    out = tmp_path / "last_report"
    numbers = json.loads((out / "numbers.json").read_text())
    assert numbers["mode"] == "checkpoint" and numbers["epoch"] == 7 and numbers["model"] == "tiny"
    assert set(numbers["layers"]) == {"1", "2"}
    for name in ("1", "2"):
        layer = model.get_submodule(name)
        w1 = layer.standardized_weight().detach()
        s = numbers["layers"][name]
        assert s["b_hat"] == pytest.approx(float(w1.abs().mean()), rel=1e-6)
        assert s["b_hat"] < 1.0  # standardised to b* = 0.5 (uniform init: 0.61), with the default b* = 2 it is 2.45
        assert s["tau"] == pytest.approx(0.9)
        assert s["q"] == pytest.approx(-math.log(0.2) * s["b_hat"], rel=1e-5)
        assert s["clamped_share"] == pytest.approx(float((w1.abs() > layer.quantile(w1)).double().mean()))
    md = (out / "summary.md").read_text()
    assert "binary layers: 2" in md and "| `1` |" in md
    assert (out / "weights_hist.png").read_bytes().startswith(PNG)
