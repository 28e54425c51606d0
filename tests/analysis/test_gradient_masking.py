"""Open question 3 of the method document, settled exactly for the default (learned-alpha) layer.

With a learned scale the latent weights reach the output only through sign(W2) = sign(W1), so
ReCU's clamp and "mask only" give the same forward and the same gradient, and "clamp with
straight-through" is the same computation as no clamp (tau = 1): whole training runs coincide.
"""

import torch

from recu.train import TrainConfig, load_checkpoint, train

TINY = ["model=digits_cnn_1w1a", "dataset=digits", "batch_size=64", "epochs=2", "warmup_epochs=1",
        "device=cpu", "progress=false", "monitor=false"]


def _final_weights(tmp_path, name, *extra):
    cfg = TrainConfig.from_yaml(None, TINY + [f"out_dir={tmp_path}", f"name={name}", *extra])
    result = train(cfg)
    return result, load_checkpoint(tmp_path / name / "last.pt")["model"]


def _same(a, b):
    # the tau buffers differ by construction (the schedule is logged, not used, without a clamp)
    return all(torch.equal(a[k], b[k]) for k in a if not k.endswith(".tau"))


def test_mask_only_trains_exactly_like_recu(tmp_path):
    recu_result, recu_w = _final_weights(tmp_path, "recu")
    mask_result, mask_w = _final_weights(tmp_path, "mask", "binary.clamp=mask")
    assert _same(recu_w, mask_w)
    assert recu_result["final_top1"] == mask_result["final_top1"]


def test_clamp_with_straight_through_trains_exactly_like_tau_1(tmp_path):
    _, ste_w = _final_weights(tmp_path, "ste", "binary.clamp=clamp_ste")
    _, tau1_w = _final_weights(tmp_path, "tau1", "tau_schedule=constant", "tau_start=1.0")
    _, recu_w = _final_weights(tmp_path, "recu")
    assert _same(ste_w, tau1_w)
    assert not _same(recu_w, tau1_w)  # the clamp does change training


def test_with_an_analytic_scale_mask_and_clamp_differ(tmp_path):
    _, clamp_w = _final_weights(tmp_path, "a_clamp", "binary.scale=analytic")
    _, mask_w = _final_weights(tmp_path, "a_mask", "binary.scale=analytic", "binary.clamp=mask")
    assert not _same(clamp_w, mask_w)
