"""``recu ablate``: real (tiny) ablations on digits, resume/skip, collect() on hand-written runs, the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import recu.train as recu_train
from recu.analysis import ablate as A
from recu.cli import main as cli_main
from recu.convert import binary_layers
from recu.nn import BinaryConfig
from recu.train import TrainConfig, model_from_checkpoint
from recu.train.log import read_metrics

from _markdown import md_row as _md_row

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
TINY = ["warmup_epochs=1", "batch_size=64", "progress=false"]


class CountingTrain:
    """Wraps recu.train.train to count the runs an ablation really trains (and how)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool]] = []
        self._train = recu_train.train

    def __call__(self, cfg: TrainConfig, resume: bool = False, **kw: Any) -> dict:
        self.calls.append((cfg.name, resume))
        return self._train(cfg, resume=resume, **kw)


@pytest.fixture(scope="module")
def ablation(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, A.AblationResult]:
    out = tmp_path_factory.mktemp("ablation")
    result = A.run_ablation(QUICKSTART, ["mask", "tau1"], seeds=[0, 1], epochs=2, out_dir=out, extra_overrides=TINY)
    return out, result


def _last_top1(run_dir: Path) -> list[float]:
    return [r["test_top1"] for r in read_metrics(run_dir / "metrics.jsonl")]


# -- the variant table (no training) ------------------------------------------------------------


def test_every_variant_builds_a_config_whose_overrides_took_effect(tmp_path: Path) -> None:
    fields = set(TrainConfig.__dataclass_fields__)
    for name, variant in A.VARIANTS.items():
        cfg = A.variant_config(QUICKSTART, name, 0, tmp_path, epochs=3, extra_overrides=TINY)
        assert (cfg.name, cfg.seed, cfg.epochs, cfg.run_dir) == (f"{name}_s0", 0, 3, tmp_path / f"{name}_s0")
        for item in variant.overrides:
            key = item.partition("=")[0]
            head, _, sub = key.partition(".")
            assert (sub in BinaryConfig.__dataclass_fields__) if sub else (key in fields), item
        BinaryConfig(**cfg.binary)  # valid binary options
    assert A.variant_config(QUICKSTART, "fp", 0, tmp_path).model == "digits_cnn_fp"
    cfg = A.variant_config(QUICKSTART, "neither", 0, tmp_path)
    assert cfg.binary == {"center": False, "standardize": False}
    cfg = A.variant_config(QUICKSTART, "bstar_0.71", 0, tmp_path)
    assert cfg.binary["b_star"] == pytest.approx(2 ** -0.5)
    cfg = A.variant_config(QUICKSTART, "switch_off_0.75", 0, tmp_path)
    assert cfg.tau_switch_off == 0.75 and cfg.tau_schedule == "exponential"
    # The variant wins over --set, --set wins over the recipe.
    cfg = A.variant_config(QUICKSTART, "tau_end_0.94", 0, tmp_path, extra_overrides=["tau_end=0.9", "lr=0.05"])
    assert (cfg.tau_end, cfg.lr) == (0.94, 0.05)


def test_fp_twins_and_groups() -> None:
    assert A.fp_twin("resnet20_1w1a") == "resnet20_fp"
    assert A.fp_twin("resnet18_1w1a_imagenet") == "resnet18_fp_imagenet"
    assert A.fp_twin("reactnet_resnet18") == "reactnet_resnet18_fp"
    assert A.resolve_variants(["headline"]) == ["recu", "tau1", "mask", "clamp_ste"]
    assert A.resolve_variants(["recu", "headline", "fp"]) == ["recu", "tau1", "mask", "clamp_ste", "fp"]
    assert A.resolve_variants(["all"]) == list(A.VARIANTS)


def test_unknown_variant_and_reserved_overrides_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown variant 'maks'") as e:
        A.run_ablation(QUICKSTART, ["recu", "maks"], seeds=[0], epochs=2, out_dir=tmp_path)
    for known in ("recu", "tau1", "mask", "clamp_ste", "fp", "headline"):
        assert known in str(e.value)
    with pytest.raises(ValueError, match="seed"):
        A.plan_ablation(QUICKSTART, ["recu"], [0], tmp_path, extra_overrides=["seed=3"])
    with pytest.raises(ValueError, match="distinct"):
        A.plan_ablation(QUICKSTART, ["recu"], [0, 0], tmp_path)
    assert not any(tmp_path.iterdir())  # nothing was trained or written


# -- a real ablation ---------------------------------------------------------------------------


def test_table_equals_the_runs_metrics(ablation: tuple[Path, A.AblationResult]) -> None:
    out, result = ablation
    md = (out / "ablation.md").read_text()
    data = json.loads((out / "ablation.json").read_text())
    assert [v.name for v in result.variants] == ["mask", "tau1"]
    for variant in ("mask", "tau1"):
        finals, bests = [], []
        for seed in (0, 1):
            curve = _last_top1(out / f"{variant}_s{seed}")
            assert len(curve) == 2
            finals.append(curve[-1])
            bests.append(max(curve))
        entry = data["variants"][variant]
        assert entry["seeds"] == [0, 1] and entry["epochs"] == 2
        assert entry["final_top1"]["values"] == finals
        assert entry["final_top1"]["mean"] == pytest.approx(np.mean(finals))
        assert entry["final_top1"]["std"] == pytest.approx(np.std(finals, ddof=1))
        assert entry["best_top1"]["mean"] == pytest.approx(np.mean(bests))
        assert entry["best_top1"]["std"] == pytest.approx(np.std(bests, ddof=1))
        row = _md_row(md, variant)
        assert row[1:5] == ["2", "2", f"{np.mean(finals):.2f} ± {np.std(finals, ddof=1):.2f}",
                            f"{np.mean(bests):.2f} ± {np.std(bests, ddof=1):.2f}"]
        # dead-weight columns from the last epoch's monitor record
        last = read_metrics(out / f"{variant}_s0" / "metrics.jsonl")[-1]["monitor"]["dead_weight"]["total"]
        assert entry["dead_weight"]["clamped_share"]["values"][0] == pytest.approx(last["clamped_share"])
        assert entry["dead_weight"]["never_flipped"]["values"][0] == pytest.approx(last["never_flipped"]["start"])
        assert re.fullmatch(r"\d+\.\d{3} ± \d+\.\d{3}", row[5])
        assert entry["curve"]["mean"][-1] == pytest.approx(np.mean(finals))
    for name in ("convergence.png", "flips_by_bucket.png"):
        blob = (out / name).read_bytes()
        assert blob.startswith(b"\x89PNG") and len(blob) > 10_000


def test_variant_overrides_reach_the_model(ablation: tuple[Path, A.AblationResult]) -> None:
    out, _ = ablation
    state = torch.load(out / "mask_s1" / "last.pt", weights_only=True)
    assert state["config"]["binary"]["clamp"] == "mask" and state["config"]["seed"] == 1
    model = model_from_checkpoint(state)
    assert {layer.config.clamp for _, layer in binary_layers(model)} == {"mask"}
    tau1 = read_metrics(out / "tau1_s0" / "metrics.jsonl")
    assert [r["tau"] for r in tau1] == [1.0, 1.0]
    assert all(layer["tau"] == 1.0 for layer in tau1[-1]["monitor"]["dead_weight"]["layers"].values())
    mask = read_metrics(out / "mask_s0" / "metrics.jsonl")
    assert mask[0]["tau"] == pytest.approx(0.85)  # the recipe's schedule still runs for mask


def test_second_call_trains_nothing(ablation: tuple[Path, A.AblationResult], monkeypatch: pytest.MonkeyPatch) -> None:
    out, first = ablation
    counter = CountingTrain()
    monkeypatch.setattr(recu_train, "train", counter)
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*/last.pt")}
    assert len(mtimes) == 4
    plan = A.plan_ablation(QUICKSTART, ["mask", "tau1"], [0, 1], out, 2, TINY)
    assert {p.action for p in plan} == {"skip"}
    again = A.run_ablation(QUICKSTART, ["mask", "tau1"], seeds=[0, 1], epochs=2, out_dir=out, extra_overrides=TINY)
    assert counter.calls == []
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/last.pt")} == mtimes
    assert again.to_dict()["variants"] == first.to_dict()["variants"]
    # Without resume nothing existing is touched; a changed recipe is refused before training.
    with pytest.raises(ValueError, match="already exist"):
        A.run_ablation(QUICKSTART, ["mask"], seeds=[0], epochs=2, out_dir=out, extra_overrides=TINY, resume=False)
    with pytest.raises(ValueError, match="lr: run has 0.1, ablation wants 0.05"):
        A.run_ablation(QUICKSTART, ["mask"], seeds=[0], epochs=2, out_dir=out, extra_overrides=TINY + ["lr=0.05"])
    assert counter.calls == []


def test_interrupted_run_is_resumed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = A.variant_config(QUICKSTART, "recu", 0, tmp_path, epochs=2, extra_overrides=TINY)
    recu_train.train(cfg, stop_after=1)  # "killed" after epoch 1 of 2
    first = read_metrics(cfg.run_dir / "metrics.jsonl")
    assert len(first) == 1
    assert [p.action for p in A.plan_ablation(QUICKSTART, ["recu"], [0], tmp_path, 2, TINY)] == ["resume"]
    counter = CountingTrain()
    monkeypatch.setattr(recu_train, "train", counter)
    result = A.run_ablation(QUICKSTART, ["recu"], seeds=[0], epochs=2, out_dir=tmp_path, extra_overrides=TINY)
    assert counter.calls == [("recu_s0", True)]
    records = read_metrics(cfg.run_dir / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [0, 1] and records[0] == first[0]
    assert result["recu"].runs[0].final_top1 == records[-1]["test_top1"]


def test_fp_variant_from_a_config_object_with_one_seed(tmp_path: Path) -> None:
    cfg = TrainConfig.from_yaml(QUICKSTART, TINY)
    result = A.run_ablation(cfg, ["fp"], seeds=[3], epochs=2, out_dir=tmp_path)
    assert TrainConfig.from_yaml(tmp_path / "recipe.yaml").model == "digits_cnn_1w1a"
    state = torch.load(tmp_path / "fp_s3" / "last.pt", weights_only=True)
    assert state["model_spec"]["name"] == "digits_cnn_fp"
    assert binary_layers(model_from_checkpoint(state)) == []
    final = _last_top1(tmp_path / "fp_s3")[-1]
    row = _md_row((tmp_path / "ablation.md").read_text(), "fp")
    assert row[1:8] == ["2", "1", f"{final:.2f} ± -", f"{max(_last_top1(tmp_path / 'fp_s3')):.2f} ± -", "-", "-", "-"]
    data = json.loads((tmp_path / "ablation.json").read_text())["variants"]["fp"]
    assert data["final_top1"] == {"mean": final, "std": None, "values": [final]}
    assert data["dead_weight"] is None
    assert result["fp"].stat("final_top1") == (final, None)
    assert (tmp_path / "convergence.png").exists() and not (tmp_path / "flips_by_bucket.png").exists()


# -- collect() on hand-written runs ---------------------------------------------------------------


def _fake_run(run_dir: Path, curve: list[float], epochs: int, flips: list[float] | None = None) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(f"epochs: {epochs}\nmodel: resnet20_1w1a\n")
    lines = []
    for e, acc in enumerate(curve):
        rec: dict[str, Any] = {"epoch": e, "tau": 0.9, "test_top1": acc}
        if flips is not None:
            rec["monitor"] = {"dead_weight": {"kind": "recu.dead_weight", "layers": {}, "total": {
                "flip_ratio": flips[e], "never_flipped": {"start": 0.5}, "clamped_share": 0.1,
                "bucket_flip_ratio": [0.2, 0.1, None]}}}
        lines.append(json.dumps(rec))
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_collect_hand_written_runs(tmp_path: Path) -> None:
    _fake_run(tmp_path / "r20_recu_e3_s0", [50.0, 70.0, 80.0], 3, flips=[0.3, 0.2, 0.01])
    _fake_run(tmp_path / "r20_recu_e3_s1", [55.0, 75.0, 82.0], 3, flips=[0.3, 0.2, 0.03])
    _fake_run(tmp_path / "r20_recu_e3_s2", [52.0, 86.0, 84.0], 3, flips=[0.3, 0.2, 0.02])
    _fake_run(tmp_path / "r20_clampste_e3_s0", [40.0, 60.0, 65.0], 3)
    _fake_run(tmp_path / "r20_mask_e3_s0", [40.0], 3)  # unfinished
    _fake_run(tmp_path / "r20_recu_e10_s0", [10.0] * 10, 10)  # another budget: not matched
    result = A.collect(tmp_path, pattern="r20_{variant}_e3_s{seed}")
    assert [v.name for v in result.variants] == ["recu", "clampste"]
    recu = result["recu"]
    assert recu.seeds == [0, 1, 2]
    mean, std = recu.stat("final_top1")
    assert mean == pytest.approx(82.0) and std == pytest.approx(2.0)  # 80, 82, 84
    mean, std = recu.stat("best_top1")  # 80, 82, 86
    assert mean == pytest.approx(248 / 3) and std == pytest.approx(np.sqrt(((80 - 248 / 3) ** 2 + (82 - 248 / 3) ** 2
                                                                           + (86 - 248 / 3) ** 2) / 2))
    assert [r.best_epoch for r in recu.runs] == [2, 2, 1]
    assert recu.dead_weight_stat("flip_ratio") == (pytest.approx(0.02), pytest.approx(0.01))
    assert result["clampste"].stat("final_top1") == (65.0, None)
    assert result["clampste"].overrides is None  # not a known variant name
    assert result.incomplete == [str(tmp_path / "r20_mask_e3_s0")]
    assert result.ignored == [str(tmp_path / "r20_recu_e10_s0")]

    A.write_outputs(result, tmp_path / "out")
    md = (tmp_path / "out" / "ablation.md").read_text()
    assert _md_row(md, "recu")[1:8] == ["3", "3", "82.00 ± 2.00", "82.67 ± 3.06", "2.000 ± 1.000",
                                        "50.000 ± 0.000", "10.000 ± 0.000"]
    assert _md_row(md, "clampste")[3:8] == ["65.00 ± -", "65.00 ± -", "-", "-", "-"]
    assert "r20_mask_e3_s0" in md
    curve = json.loads((tmp_path / "out" / "ablation.json").read_text())["variants"]["recu"]["curve"]
    assert curve["mean"] == pytest.approx([157 / 3, 77.0, 82.0])

    # the same runs by regex and by an explicit mapping
    regex = A.collect(tmp_path, pattern=r"r20_(?P<variant>[a-z]+)_e3_s(?P<seed>\d)")
    assert regex["recu"].stat("final_top1") == recu.stat("final_top1")
    mapped = A.collect(tmp_path, mapping={"r20_recu_e3_s1": ("recu", 1), "r20_clampste_e3_s0": ("clamp_ste", 0)})
    assert [v.name for v in mapped.variants] == ["recu", "clamp_ste"]
    assert mapped["recu"].stat("final_top1") == (82.0, None)
    with pytest.raises(ValueError, match="seed 0 appears twice"):
        A.collect(tmp_path, pattern=r"r20_(?P<variant>recu)_e\d+_s(?P<seed>\d)")
    _fake_run(tmp_path / "mixed" / "recu_e3_s0", [1.0, 2.0, 3.0], 3)
    _fake_run(tmp_path / "mixed" / "recu_e4_s1", [1.0, 2.0, 3.0, 4.0], 4)
    with pytest.raises(ValueError, match=r"mixes budgets \[3, 4\]"):
        A.collect(tmp_path / "mixed", pattern=r"(?P<variant>recu)_e\d_s(?P<seed>\d)")
    with pytest.raises(ValueError, match="variant"):
        A.collect(tmp_path, pattern=r"r20_.*")
    default = A.collect(tmp_path)  # {variant}_s{seed}: the budget becomes part of the name
    assert [v.name for v in default.variants] == ["r20_clampste_e3", "r20_recu_e10", "r20_recu_e3"]
    _fake_run(tmp_path / "only" / "recu_s0", [40.0], 3)
    with pytest.raises(ValueError, match="no finished runs.*unfinished"):
        A.collect(tmp_path / "only")


# -- the command line ------------------------------------------------------------------------------


def test_cli_list_collect_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["ablate", "--list"]) == 0
    listing = capsys.readouterr().out
    for name in A.VARIANTS:
        assert re.search(rf"^{re.escape(name)} ", listing, re.M), name
    assert "binary.clamp=clamp_ste" in listing and "group headline: recu tau1 mask clamp_ste" in listing

    _fake_run(tmp_path / "r20_recu_e3_s0", [50.0, 70.0, 80.0], 3)
    _fake_run(tmp_path / "r20_recu_e3_s1", [50.0, 70.0, 84.0], 3)
    assert cli_main(["ablate", "--collect", str(tmp_path), "--pattern", "r20_{variant}_e3_s{seed}"]) == 0
    assert "ablation.md" in capsys.readouterr().out
    assert _md_row((tmp_path / "ablation.md").read_text(), "recu")[3] == f"82.00 ± {np.std([80, 84], ddof=1):.2f}"

    assert cli_main(["ablate", "-c", str(QUICKSTART), "--variants", "nope", "-o", str(tmp_path / "x")]) == 1
    assert "unknown variant 'nope'" in capsys.readouterr().err
    assert cli_main(["ablate", "-c", str(QUICKSTART), "--variants", "headline", "fp", "--seeds", "0", "1",
                     "--epochs", "2", "--set", *TINY, "-o", str(tmp_path / "x"), "--dry-run"]) == 0
    planned = capsys.readouterr().out.split()
    assert planned.count("train") == 10 and str(tmp_path / "x" / "clamp_ste_s1") in planned
    assert not (tmp_path / "x").exists()
