import pytest

from recu.train import TrainConfig
from recu.train.config import parse_duration


def test_defaults_are_the_cifar10_recipe():
    cfg = TrainConfig()
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.warmup_epochs) == (
        600, 256, 0.1, 0.9, 5e-4, 5)
    assert (cfg.tau_start, cfg.tau_end, cfg.tau_schedule) == (0.85, 0.99, "exponential")


def test_yaml_then_overrides_in_order(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: vgg_small_1w1a\nepochs: 20\nlr: 1e-3\nbinary: {b_star: 1.0}\n")
    cfg = TrainConfig.from_yaml(path, ["epochs=7", "binary.clamp=mask", "tau_switch_off=0.5", "epochs=9"])
    assert cfg.model == "vgg_small_1w1a"
    assert cfg.epochs == 9
    # PyYAML reads "1e-3" as a string; the config casts it to the field's type.
    assert cfg.lr == pytest.approx(1e-3) and isinstance(cfg.lr, float)
    assert cfg.binary == {"b_star": 1.0, "clamp": "mask"}
    assert cfg.tau_switch_off == 0.5


def test_round_trip_through_yaml(tmp_path):
    cfg = TrainConfig(name="x", epochs=3, warmup_epochs=1, binary={"clamp": "none"})
    cfg.to_yaml(tmp_path / "c.yaml")
    assert TrainConfig.from_yaml(tmp_path / "c.yaml") == cfg


@pytest.mark.parametrize("override, message", [
    ("epochz=3", "unknown config keys ['epochz']"),
    ("optimizer=rmsprop", "optimizer must be one of"),
    ("epochs=0", "epochs must be >= 1"),
    ("warmup_epochs=700", "warmup_epochs must lie in"),
    ("lr=fast", "lr must be a float"),
    ("monitor=3", "monitor must be true or false"),
    ("novalue", "must look like key=value"),
])
def test_bad_values_name_the_problem(override, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        TrainConfig.from_yaml(None, [override])


def test_missing_config_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TrainConfig.from_yaml(tmp_path / "nope.yaml")


@pytest.mark.parametrize("text, seconds", [("2h30m", 9000.0), ("90m", 5400.0), ("1.5h", 5400.0), ("45s", 45.0),
                                           ("1h0m30s", 3630.0), ("5400", 5400.0), ("0.5", 0.5)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "2x", "h", "2h30", "30m2h5", "-5", "0", "inf", "nan"])
def test_parse_duration_rejects_what_is_not_a_duration(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)
