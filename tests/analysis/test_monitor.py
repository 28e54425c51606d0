"""DeadWeightMonitor on hand-made layers: flips, never-flipped shares, buckets, clamp, snapshots, resume."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import recu
from recu.analysis import DeadWeightMonitor
from recu.analysis.monitor import MONITOR_KIND, RESULT_KEY, snapshot_path

# Every row holds +-1..+-4 once: mean 0 and the same std, so W1 = c * W with one c for all rows,
# |W1| / sigma only depends on |W|, and swapping +v and -v in a row flips exactly those two signs.
ROW = [1.0, 2.0, 3.0, 4.0, -1.0, -2.0, -3.0, -4.0]


def hand_model() -> nn.Module:
    layer = recu.ReCULinear(8, 4)
    with torch.no_grad():
        for r in range(4):
            layer.weight[r] = torch.tensor(ROW).roll(r)
    return nn.Sequential(nn.Linear(8, 8), layer, nn.Linear(4, 2))


def swap(model: nn.Module, row: int, value: float) -> None:
    w = model[1].weight
    with torch.no_grad():
        i = int((w[row] == value).nonzero())
        j = int((w[row] == -value).nonzero())
        w[row, i], w[row, j] = -value, value


def stats_of(result: dict) -> dict:
    return result[RESULT_KEY]["layers"]["1"]


def test_hand_flips_never_flipped_and_buckets(tmp_path: Path) -> None:
    model = hand_model()
    mon = DeadWeightMonitor(buckets=4, since_epochs=[0])
    mon.on_train_begin(model, tmp_path, epochs=10)

    swap(model, 0, 1.0)  # two flips of magnitude 1 (bucket 0)
    swap(model, 1, 4.0)  # two flips of magnitude 4 (bucket 3)
    s = stats_of(mon.on_epoch_end(model, 0))
    assert s["flips"] == 4 and s["flip_ratio"] == pytest.approx(4 / 32)
    assert s["bucket_flips"] == [2, 0, 0, 2]
    assert s["bucket_flip_ratio"] == pytest.approx([2 / 8, 0, 0, 2 / 8])
    assert s["never_flipped"] == {"start": pytest.approx(28 / 32), "0": pytest.approx(1.0)}
    sigma = math.sqrt(sum(v * v for v in ROW) / 7)  # unbiased per-filter std
    assert s["bucket_edges"] == pytest.approx([1 / sigma, 2 / sigma, 3 / sigma, 4 / sigma, 4 / sigma], rel=1e-5)

    swap(model, 0, 1.0)  # the same two weights flip back
    swap(model, 2, 2.0)  # two new flips in bucket 1
    s = stats_of(mon.on_epoch_end(model, 1))
    assert s["flips"] == 4
    assert s["bucket_flips"] == [2, 2, 0, 0]
    assert s["never_flipped"]["start"] == pytest.approx(26 / 32)
    assert s["never_flipped"]["0"] == pytest.approx(28 / 32)

    s = stats_of(mon.on_epoch_end(model, 2))  # nothing changed
    assert s["flips"] == 0 and s["bucket_flips"] == [0, 0, 0, 0]
    assert s["never_flipped"]["start"] == pytest.approx(26 / 32)


def test_hand_clamped_share_binary_entropy_and_b_hat(tmp_path: Path) -> None:
    model = hand_model()
    c = 2.0 * math.sqrt(2.0) / math.sqrt(60.0 / 7.0 + 1e-5)  # W1 = c * W (unbiased var 60/7)
    mon = DeadWeightMonitor(buckets=4)
    # Q = -b_hat ln(2 - 2 tau) with b_hat = 2.5 c: the threshold on |W| is 2.5 (-ln(2 - 2 tau))
    recu.set_tau(model, 1.0 - math.exp(-1.4) / 2.0)  # threshold 3.5: only the +-4 are clamped
    mon.on_train_begin(model, None, epochs=3)
    s = stats_of(mon.on_epoch_end(model, 0))
    assert s["b_hat"] == pytest.approx(2.5 * c, rel=1e-5)
    assert s["q"] == pytest.approx(3.5 * c, rel=1e-5)
    assert s["clamped_share"] == pytest.approx(8 / 32)
    assert s["clamped_share_laplace"] == pytest.approx(math.exp(-1.4), rel=1e-5)
    assert s["binary_entropy_bits"] == pytest.approx(1.0)  # 4 of 8 positive in every row
    recu.set_tau(model, 1.0 - math.exp(-1.0) / 2.0)  # threshold 2.5: +-3 and +-4
    assert stats_of(mon.on_epoch_end(model, 1))["clamped_share"] == pytest.approx(16 / 32)
    recu.set_tau(model, 1.0)
    s = stats_of(mon.on_epoch_end(model, 2))
    assert s["clamped_share"] == 0.0 and s["q"] is None


def test_signs_are_the_forward_weights_with_plus_one_at_zero() -> None:
    model = hand_model()
    with torch.no_grad():
        model[1].weight[0] = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 3.0, 3.0, 3.0])  # mean 3: three zeros after centring
    mon = DeadWeightMonitor(buckets=2)
    mon.on_train_begin(model, None, epochs=2)
    with torch.no_grad():
        model[1].weight[0] = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 2.0, 4.0, 3.0])  # zeros -> -1, +1, 0
    s = stats_of(mon.on_epoch_end(model, 0))
    assert s["flips"] == 1  # only the centred 0 (+1) that became -1


def _trained_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(recu.ReCUConv2d(3, 8, 3), nn.ReLU(), recu.ReCUConv2d(8, 16, 3), recu.ReCULinear(16, 4))


def _step(model: nn.Module, g: torch.Generator) -> None:
    with torch.no_grad():
        for _, m in recu.binary_layers(model):
            m.weight.add_(0.3 * torch.randn(m.weight.shape, generator=g))


def test_result_is_strict_json_and_totals_weight_by_size(tmp_path: Path) -> None:
    model = _trained_model()
    recu.set_tau(model, 0.85)
    mon = DeadWeightMonitor(since_epochs=[1, 5])
    mon.on_train_begin(model, tmp_path, epochs=4)
    g = torch.Generator().manual_seed(1)
    _step(model, g)
    out = mon.on_epoch_end(model, 0)
    text = json.dumps(out, allow_nan=False)  # no inf/nan that strict JSON readers reject
    r = json.loads(text)[RESULT_KEY]
    assert r["kind"] == MONITOR_KIND and r["epoch"] == 0 and r["start_epoch"] == -1
    assert list(r["layers"]) == ["0", "2", "3"]
    layers = r["layers"].values()
    n = sum(s["numel"] for s in layers)
    assert r["total"]["numel"] == n == 3 * 8 * 9 + 8 * 16 * 9 + 16 * 4
    assert r["total"]["flip_ratio"] == pytest.approx(sum(s["flips"] for s in layers) / n)
    assert r["total"]["never_flipped"] == {"start": pytest.approx(1 - r["total"]["flip_ratio"]), "1": None, "5": None}
    for s in layers:
        assert len(s["bucket_flips"]) == 10 and sum(s["bucket_flips"]) == s["flips"]
        assert s["tau"] == pytest.approx(0.85)
        assert 0 < s["clamped_share"] < 1 and 0 < s["binary_entropy_bits"] <= 1


def test_snapshots_init_middle_end(tmp_path: Path) -> None:
    model = _trained_model()
    mon = DeadWeightMonitor()
    expected = {0: {n: m.standardized_weight().detach().clone() for n, m in recu.binary_layers(model)}}
    mon.on_train_begin(model, tmp_path, epochs=4)
    g = torch.Generator().manual_seed(2)
    for epoch in range(4):
        _step(model, g)
        mon.on_epoch_end(model, epoch)
        expected[epoch + 1] = {n: m.standardized_weight().detach().clone() for n, m in recu.binary_layers(model)}
    files = sorted(p.name for p in (tmp_path / "weights").iterdir())
    assert files == ["epoch_0000.pt", "epoch_0003.pt", "epoch_0004.pt"]  # init, after epoch 2 (= 4 // 2), end
    for done, stages in [(0, ["init"]), (3, ["middle"]), (4, ["end"])]:
        snap = torch.load(snapshot_path(tmp_path, done), weights_only=True)
        assert snap["stages"] == stages and snap["epoch"] == done - 1
        assert set(snap["weights"]) == {"0", "2", "3"}
        for name, w in snap["weights"].items():
            torch.testing.assert_close(w, expected[done][name])


def _roundtrip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("order", ["load_then_begin", "begin_then_load", "load_only"])
def test_state_dict_resume_gives_identical_statistics(tmp_path: Path, order: str) -> None:
    model = _trained_model()
    recu.set_tau(model, 0.9)
    mon = DeadWeightMonitor(buckets=5, since_epochs=[1])
    mon.on_train_begin(model, tmp_path, epochs=6)
    g = torch.Generator().manual_seed(3)
    for epoch in range(3):
        _step(model, g)
        mon.on_epoch_end(model, epoch)
    state = _roundtrip(mon.state_dict())
    (tmp_path / "weights" / "epoch_0000.pt").unlink()  # a resumed monitor must not rewrite it

    resumed = DeadWeightMonitor(buckets=5, since_epochs=[1])
    if order == "load_then_begin":
        resumed.load_state_dict(state)
        resumed.on_train_begin(model, tmp_path, epochs=6)
    elif order == "begin_then_load":
        resumed.on_train_begin(model, tmp_path, epochs=6)
        resumed.load_state_dict(state)
    else:  # the engine resumes without calling on_train_begin
        resumed.load_state_dict(state)
    for epoch in range(3, 6):
        _step(model, g)
        a, b = mon.on_epoch_end(model, epoch), resumed.on_epoch_end(model, epoch)
        assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert a[RESULT_KEY]["total"]["never_flipped"]["1"] is not None
    assert not (tmp_path / "weights" / "epoch_0000.pt").exists()
    assert (tmp_path / "weights" / "epoch_0006.pt").exists()  # the end snapshot, also in "load_only"


def test_load_state_dict_rejects_other_states() -> None:
    mon = DeadWeightMonitor(buckets=5)
    with pytest.raises(ValueError, match="not a DeadWeightMonitor state"):
        mon.load_state_dict({"kind": "other"})
    model = _trained_model()
    mon.on_train_begin(model, None, epochs=2)
    with pytest.raises(ValueError, match="buckets"):
        DeadWeightMonitor(buckets=10).load_state_dict(mon.state_dict())


def test_errors_name_the_problem() -> None:
    with pytest.raises(RuntimeError, match="before on_train_begin"):
        DeadWeightMonitor().on_epoch_end(_trained_model(), 0)
    with pytest.raises(ValueError, match="no ReCU binary layers"):
        DeadWeightMonitor().on_train_begin(nn.Linear(2, 2), None, 1)
    mon = DeadWeightMonitor()
    mon.on_train_begin(_trained_model(), None, 2)
    with pytest.raises(ValueError, match="differ from the monitored"):
        mon.on_epoch_end(hand_model(), 0)


def test_wrapper_prefixes_are_stripped_and_no_graph_is_built() -> None:
    class Wrapper(nn.Module):  # what DistributedDataParallel looks like from named_modules()
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.module = inner

    model = _trained_model()
    mon = DeadWeightMonitor()
    mon.on_train_begin(Wrapper(model), None, 2)
    out = mon.on_epoch_end(model, 0)
    assert list(out[RESULT_KEY]["layers"]) == ["0", "2", "3"]
    assert all(not t.requires_grad for st in mon.state_dict()["layers"].values() for t in (st["sign"], st["bucket"]))


@pytest.mark.parametrize("config", [recu.BinaryConfig(), recu.BinaryConfig(clamp="mask"),
                                    recu.BinaryConfig(scale_estimate="channel", b_star=0.5),
                                    recu.BinaryConfig(center=False, standardize=False, clamp="none")])
def test_monitored_signs_are_the_layers_binary_weights(config: recu.BinaryConfig) -> None:
    model = nn.Sequential(recu.ReCUConv2d(4, 8, 3, config=config), recu.ReCULinear(8, 4, config=config))
    recu.set_tau(model, 0.8)
    mon = DeadWeightMonitor(buckets=4)
    mon.on_train_begin(model, None, epochs=2)
    _step(model, torch.Generator().manual_seed(5))
    out = mon.on_epoch_end(model, 0)[RESULT_KEY]
    for name, layer in recu.binary_layers(model):
        binary = layer.binary_weight().detach()
        assert set(binary.unique().tolist()) <= {-1.0, 1.0}
        assert torch.equal(mon.state_dict()["layers"][name]["sign"], binary > 0)
        w1 = layer.standardized_weight().detach()
        q = layer.quantile(w1)
        assert out["layers"][name]["q"] == pytest.approx(float(q.mean()), rel=1e-6)
        assert out["layers"][name]["clamped_share"] == pytest.approx(float((w1.abs() > q).double().mean()))
