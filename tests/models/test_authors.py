"""The authors' checkpoints load as recu models with the authors' outputs and gradients.

Each paper model is built from an independent re-implementation of the authors' code
(``tests/_authors_models.py``), given random weights, BN statistics and tau, saved as their
``main.py`` saves it (``state_dict`` inside a dict, with or without DataParallel's ``module.``),
loaded with :func:`recu.models.load_authors_checkpoint`, and compared: logits in eval and train
mode to 1e-5 relative, and the gradients of the input and of every parameter, in float64 (in float32
the two orders of the same maths can put an activation next to 0 on either side of its sign). Some stem BN channels
are zeroed so that exact zeros reach the first binary convolution, where the authors' torch.sign
gives 0 and recu's default gives +1.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from _authors_models import (
    AUTHORS_BUILDERS,
    AuthorsBinaryConv,
    authors_resnet18_imagenet,
    randomize,
    save_as_authors,
    set_authors_tau,
)

import recu
from recu import binary_layers
from recu.models import load_authors_checkpoint
from recu.models.authors import authors_to_recu_key

# recu name -> input shape for the comparison (ImageNet models at 64x64 to stay fast on one thread)
INPUT = {
    "resnet20_1w1a": (2, 3, 32, 32),
    "resnet18_1w1a": (2, 3, 32, 32),
    "vgg_small_1w1a": (2, 3, 32, 32),
    "resnet18_1w1a_imagenet": (2, 3, 64, 64),
    "resnet34_1w1a_imagenet": (2, 3, 64, 64),
    "reactnet_resnet18": (2, 3, 64, 64),
}
NUM_CLASSES = {"resnet20_1w1a": 10, "resnet18_1w1a": 100, "vgg_small_1w1a": 10,
               "resnet18_1w1a_imagenet": 1000, "resnet34_1w1a_imagenet": 1000, "reactnet_resnet18": 1000}


def authors_model(name: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = AUTHORS_BUILDERS[name](num_classes=NUM_CLASSES[name])
    if name in ("resnet18_1w1a_imagenet", "resnet34_1w1a_imagenet"):
        # their AvgPool2d(7) is the global average of the 7x7 map of a 224 input; at 64x64 the map is
        # 2x2, so pool globally (test_imagenet_authors_pool_at_224 checks the 224 case as they wrote it)
        model.avgpool = nn.AdaptiveAvgPool2d(1)
    randomize(model, seed)
    return model


def assert_rel_close(actual: Tensor, expected: Tensor, what: str, rtol: float = 1e-5) -> None:
    """Equal to ``rtol`` relative to the largest magnitude of ``expected`` (gradients have near-zero entries)."""
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * max(scale, 1e-12),
                               msg=lambda m: f"{what}: {m}")


def compare(name: str, tmp_path: Path, training: bool, data_parallel: bool, seed: int = 0,
            dtype: torch.dtype = torch.float32) -> None:
    authors = authors_model(name, seed)
    path = tmp_path / "checkpoint.pth.tar"
    save_as_authors(authors, path, data_parallel)
    recu_model = load_authors_checkpoint(path, name)
    assert not recu_model.training
    authors.train(training).to(dtype)
    recu_model.train(training).to(dtype)

    x = torch.randn(INPUT[name], generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    xa, xr = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yr = authors(xa), recu_model(xr)
    assert yr.shape == (INPUT[name][0], NUM_CLASSES[name])
    assert_rel_close(yr, ya, f"{name} logits")
    g = torch.randn(ya.shape, generator=torch.Generator().manual_seed(seed + 2)).to(dtype)
    ya.backward(g)
    yr.backward(g)
    assert_rel_close(xr.grad, xa.grad, f"{name} input gradient")
    recu_params = dict(recu_model.named_parameters())
    for key, p in authors.named_parameters():
        mine = recu_params[authors_to_recu_key(key, name)]
        assert mine.grad is not None, key
        assert_rel_close(mine.grad, p.grad, f"{name} gradient of {key}")
    if training:  # the batch statistics moved the running estimates the same way
        recu_buffers = dict(recu_model.named_buffers())
        for key, b in authors.named_buffers():
            if key.endswith("running_mean"):
                assert_rel_close(recu_buffers[authors_to_recu_key(key, name)], b, f"{name} {key}")


@pytest.mark.parametrize("name", sorted(AUTHORS_BUILDERS))
def test_authors_checkpoint_eval_mode(name: str, tmp_path: Path) -> None:
    # float64: the two models compute the same maths in different orders; in float32 an activation
    # within an ulp of 0 can take the other sign on one CPU and not another (AMD EPYC: 1 of 2.4M
    # gradient entries of reactnet's layer4). In float64 the fixed inputs leave no value that near 0.
    compare(name, tmp_path, training=False, data_parallel=False, dtype=torch.float64)


@pytest.mark.parametrize("name", sorted(AUTHORS_BUILDERS))
def test_authors_checkpoint_train_mode_data_parallel(name: str, tmp_path: Path) -> None:
    # float64: in train mode the BN after each binary conv cancels alpha's scale, so alpha's true
    # gradient is tiny (of order BN's eps) and float32 leaves only rounding noise to compare.
    compare(name, tmp_path, training=True, data_parallel=True, dtype=torch.float64)


def test_loaded_model_uses_authors_sign_and_plus_one_differs(tmp_path: Path) -> None:
    # The zeroed stem channels reach layer1's first binary conv as exact zeros: with recu's +1 at 0
    # the logits move, so the comparisons above do test the sign at 0.
    authors = authors_model("resnet20_1w1a", 3).eval()
    path = tmp_path / "r20.pth.tar"
    save_as_authors(authors, path, data_parallel=False)
    theirs = load_authors_checkpoint(path, "resnet20_1w1a")
    plus_one = load_authors_checkpoint(path, "resnet20_1w1a", sign_at_zero="plus_one")
    assert all(m.config.sign_at_zero == "zero" for _, m in binary_layers(theirs))
    assert theirs.recu_spec["config"]["sign_at_zero"] == "zero"
    # float64, as in compare(): no activation of the fixed input within rounding of 0 on any CPU
    authors, theirs, plus_one = authors.double(), theirs.double(), plus_one.double()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    with torch.no_grad():
        expected = authors(x)
        torch.testing.assert_close(theirs(x), expected, rtol=1e-5, atol=1e-5)
        assert (plus_one(x) - expected).abs().max() > 1e-3


def test_taus_of_shape_one_become_recu_scalars(tmp_path: Path) -> None:
    authors = authors_model("resnet20_1w1a", 4)
    set_authors_tau(authors, 0.8731)
    path = tmp_path / "r20.pth.tar"
    save_as_authors(authors, path, data_parallel=True)
    model = load_authors_checkpoint(path, "resnet20_1w1a")
    taus = [m.tau for _, m in binary_layers(model)]
    assert len(taus) == 18 and all(t.shape == () and abs(float(t) - 0.8731) < 1e-7 for t in taus)


def test_legacy_serialisation_and_bare_state_dict(tmp_path: Path) -> None:
    # PyTorch 1.1 (their stated version) wrote the pre-zip format; a bare state dict is accepted too.
    authors = authors_model("resnet20_1w1a", 5).eval()
    legacy = tmp_path / "legacy.pth.tar"
    save_as_authors(authors, legacy, data_parallel=True, legacy=True)
    bare = tmp_path / "bare.pth"
    torch.save(authors.state_dict(), bare)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    with torch.no_grad():
        expected = authors.double()(x)  # float64, as in compare()
        for path in (legacy, bare):
            torch.testing.assert_close(load_authors_checkpoint(path, "resnet20_1w1a").double()(x), expected,
                                       rtol=1e-5, atol=1e-5)


def test_imagenet_authors_pool_at_224(tmp_path: Path) -> None:
    # Their AvgPool2d(7, stride=1), exactly as written, on the 224 input it was written for.
    torch.manual_seed(6)
    authors = authors_resnet18_imagenet()
    randomize(authors, 6)
    authors.eval()
    path = tmp_path / "r18.pth.tar"
    save_as_authors(authors, path, data_parallel=False)
    model = load_authors_checkpoint(path, "resnet18_1w1a_imagenet")
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    with torch.no_grad():  # float64, as in compare()
        assert_rel_close(model.double()(x), authors.double()(x), "224 logits")


def test_load_errors_are_one_line(tmp_path: Path) -> None:
    authors = authors_model("resnet20_1w1a", 7)
    good = tmp_path / "r20.pth.tar"
    save_as_authors(authors, good, data_parallel=False)
    noise = tmp_path / "noise.bin"
    noise.write_bytes(bytes(range(256)) * 8)
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    no_state = tmp_path / "no_state.pt"
    torch.save({"epoch": 3, "best_prec1": 1.0}, no_state)
    pickled_code = tmp_path / "code.pth.tar"
    torch.save({"state_dict": {}, "args": Path("x")}, pickled_code)  # needs weights_only=False
    cases = [
        (noise, "resnet20_1w1a", "not a readable PyTorch checkpoint"),
        (pickled_code, "resnet20_1w1a", "not a readable PyTorch checkpoint: the weights-only unpickler refused"),
        (text, "resnet20_1w1a", "not a readable PyTorch checkpoint"),
        (no_state, "resnet20_1w1a", "need a dict with 'state_dict'"),
        (good, "vgg_small_1w1a", "has no fc.weight"),
        (good, "resnet18_1w1a", "does not fit recu's resnet18_1w1a"),
        (good, "resnet20_fp", "no authors' model maps to 'resnet20_fp'"),
    ]
    for path, name, message in cases:
        with pytest.raises(ValueError, match=message) as err:
            load_authors_checkpoint(path, name)
        assert "\n" not in str(err.value), str(err.value)
        assert "weights_only=False" not in str(err.value)  # never advise running the file's code
    with pytest.raises(FileNotFoundError):
        load_authors_checkpoint(tmp_path / "missing.pth.tar", "resnet20_1w1a")
    with pytest.raises(ValueError, match="sign_at_zero"):
        load_authors_checkpoint(good, "resnet20_1w1a", sign_at_zero="one")


def test_authors_reimplementation_layouts_are_theirs() -> None:
    # A few keys read off their files, so that the helper cannot drift into recu's layout.
    keys = {
        "resnet20_1w1a": ["layer3.2.conv2.tau", "linear.weight", "bn2.running_var"],
        "vgg_small_1w1a": ["conv5.alpha", "bn0.weight", "fc.bias"],
        "resnet34_1w1a_imagenet": ["layer4.2.conv2.weight", "layer2.0.downsample.1.running_mean", "bn2.weight"],
        "reactnet_resnet18": ["conv.weight", "layer2.0.downsample.1.weight", "layer4.3.nonlinear.weight",
                              "layer1.0.move0.bias"],
    }
    for name, expected in keys.items():
        state = AUTHORS_BUILDERS[name]().state_dict()
        assert set(expected) <= set(state), name
    n_binary = {n: sum(isinstance(m, AuthorsBinaryConv) for m in AUTHORS_BUILDERS[n]().modules())
                for n in AUTHORS_BUILDERS}
    assert n_binary == {"resnet20_1w1a": 18, "resnet18_1w1a": 16, "vgg_small_1w1a": 5,
                        "resnet18_1w1a_imagenet": 16, "resnet34_1w1a_imagenet": 32, "reactnet_resnet18": 16}


def test_recu_init_matches_authors_init_distributions() -> None:
    # ImageNet ResNet: kaiming_normal_ defaults (fan_in) on every conv -> the stem's std is sqrt(2 / 147);
    # two-stage: PyTorch's default conv init, uniform within 1/sqrt(fan_in).
    from recu.models import create

    torch.manual_seed(0)
    ours = create("resnet18_1w1a_imagenet", 1000)
    theirs = authors_resnet18_imagenet()
    for model in (ours, theirs):
        std = model.conv1.weight.std().item()
        assert abs(std / (2 / 147) ** 0.5 - 1) < 0.05, std  # fan_out would give sqrt(2 / 3136)
    layer = ours.layers[3][1].conv1  # 512 -> 512 binary conv, fan_in 4608
    assert abs(layer.weight.std().item() / (2 / 4608) ** 0.5 - 1) < 0.02
    two_stage = create("reactnet_resnet18", 1000)
    w = two_stage.conv1.weight
    bound = 1 / 147 ** 0.5
    assert w.abs().max().item() <= bound and abs(w.std().item() / (bound / 3 ** 0.5) - 1) < 0.05
    down = two_stage.layers[1][0].downsample[1].weight  # FP 1x1, fan_in 64
    assert down.abs().max().item() <= 1 / 8


def test_stage_one_trains_real_weights_without_clamp() -> None:
    from recu.models import create

    model = create("reactnet_resnet18", 10, stage=1)
    layer = model.layers[0][0].conv
    assert not layer.config.binary_weights and layer.config.clamp == "none"
    torch.manual_seed(1)
    with torch.no_grad():
        layer.weight.normal_()
    recu.set_tau(model, 0.6)  # a schedule running in stage 1 must not clamp the real weights
    w1 = layer.standardized_weight()
    assert w1.abs().max() > layer.quantile(w1)  # tau 0.6 would clamp these weights
    assert torch.equal(layer.binary_weight(), w1)
    create("reactnet_resnet18", 10).load_state_dict(model.state_dict())  # stage 2 starts from stage 1
