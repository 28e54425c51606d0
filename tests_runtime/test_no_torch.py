"""The deployment runtime where PyTorch is not installed (``pip install recu-bnn[runtime]``).

Run by ``.ci/run`` in a second virtual environment without torch, with ``RECU_RUNTIME_FIXTURE``
pointing at a folder written by ``scripts/make_runtime_fixture.py`` (in the main environment): an
exported ResNet-20 with random weights, fixed random input images and the PyTorch model's logits on
them. Not collected by the main test run (``testpaths = ["tests"]``).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest

FIXTURE_ENV = "RECU_RUNTIME_FIXTURE"


@pytest.fixture(scope="module")
def fixture_dir() -> Path:
    """The fixture folder; the tests that read it skip when the variable is unset (not in CI)."""
    value = os.environ.get(FIXTURE_ENV)
    if not value:
        pytest.skip(f"{FIXTURE_ENV} is not set (scripts/make_runtime_fixture.py writes the fixture; .ci/run sets it)")
    path = Path(value)
    missing = [n for n in ("model.recu", "input.npy", "logits.npy") if not (path / n).is_file()]
    assert not missing, f"{FIXTURE_ENV}={path} lacks {missing}"
    return path


def test_torch_is_not_installed() -> None:
    assert importlib.util.find_spec("torch") is None, "this suite must run where PyTorch is not installed"


def test_recu_and_its_runtime_import_without_torch() -> None:
    import recu
    import recu.deploy
    import recu.deploy.runtime.fileio
    import recu.deploy.runtime.kernels
    import recu.deploy.loader
    import recu.deploy.runtime.pack

    assert recu.__version__
    assert set(recu.__all__) <= set(dir(recu))
    assert callable(recu.deploy.load) and callable(recu.deploy.read_metadata)
    assert "torch" not in sys.modules


def test_torch_parts_say_what_to_install() -> None:
    import recu
    import recu.deploy

    with pytest.raises(ModuleNotFoundError, match=r"^recu\.ReCUConv2d needs PyTorch: pip install recu-bnn\[torch\]"):
        recu.ReCUConv2d  # noqa: B018 - the attribute access is what raises
    with pytest.raises(ModuleNotFoundError, match=r"^recu\.nn needs PyTorch"):
        import recu.nn  # noqa: F401
    with pytest.raises(ModuleNotFoundError, match=r"^recu\.deploy\.export needs PyTorch"):
        recu.deploy.export  # noqa: B018


def test_read_metadata_and_tensors(fixture_dir: Path) -> None:
    import recu.deploy

    path = fixture_dir / "model.recu"
    meta = recu.deploy.read_metadata(path)
    assert meta["format"] == "recu-deploy" and meta["model_spec"]["name"] == "resnet20_1w1a"
    layers = meta["binary_layers"]
    assert len(layers) == 18  # ResNet-20: 3 stages x 3 blocks x 2 binary 3x3 convs
    tensors = recu.deploy.read_tensors(path)
    for layer in layers:  # the metadata describes the stored bits: (C_out, KH, KW, ceil(C_in / 8)) bytes
        bits = tensors[f"binary.{layer['name']}.bits"]
        assert isinstance(bits, np.ndarray) and bits.dtype == np.uint8
        expected = (layer["out_channels"], *layer["kernel_size"], -(-layer["in_channels"] // 8))
        assert bits.shape == expected, layer["name"]
        assert tensors[f"binary.{layer['name']}.alpha"].dtype == np.float32
    assert "torch" not in sys.modules


def test_layers_engine_says_it_needs_torch(fixture_dir: Path) -> None:
    import recu.deploy

    with pytest.raises(ModuleNotFoundError, match=r"engine='layers' needs PyTorch: pip install recu-bnn\[torch\]"):
        recu.deploy.load(fixture_dir / "model.recu", engine="layers")


def test_load_runs_the_network_without_torch(fixture_dir: Path) -> None:
    import recu.deploy

    x = np.load(fixture_dir / "input.npy")
    reference = np.load(fixture_dir / "logits.npy")
    model = recu.deploy.load(fixture_dir / "model.recu")
    logits = model(x)
    assert isinstance(logits, np.ndarray) and logits.dtype == np.float32
    assert logits.shape == reference.shape == (x.shape[0], 10)
    error = float(np.abs(logits - reference).max() / np.abs(reference).max())
    assert error <= 1e-5, f"logits differ from PyTorch's by {error:.2e} relative"
    assert (logits.argmax(1) == reference.argmax(1)).all()
    assert type(model).__name__ == "CompiledModel"
    np.testing.assert_array_equal(model(x[:1]), logits[:1])  # batch 1: its own plan, the same numbers
    assert "torch" not in sys.modules


def test_the_cli_says_which_commands_need_pytorch(capsys: pytest.CaptureFixture[str]) -> None:
    from recu.cli import main

    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0 and "convert-authors" in capsys.readouterr().out
    assert main(["models"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "recu models: error: this command needs PyTorch: pip install recu-bnn[torch] (or torch itself)"
    assert "torch" not in sys.modules


def test_recu_bench_times_the_1bit_file_without_torch(fixture_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from recu.cli import main

    assert main(["bench", str(fixture_dir / "model.recu"), "--batch", "1", "2", "--repeat", "2", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "PyTorch is not installed" in out and "engine plan" in out
    rows = [line.split() for line in out.splitlines() if line.strip() and line.split()[0] in ("1", "2")]
    assert [r[0] for r in rows] == ["1", "2"] and all(float(r[3]) > 0 for r in rows)  # batch, best, median, img/s
    assert main(["bench", str(fixture_dir / "model.recu"), "--engine", "layers"]) == 1
    assert "layers engine runs in PyTorch" in capsys.readouterr().err
    assert main(["bench", str(fixture_dir / "model.recu"), "--batch", "1", "--repeat", "1", "--onnxruntime"]) == 0
    assert "--onnxruntime skipped: exporting the float twin to ONNX needs PyTorch" in capsys.readouterr().out
    assert "torch" not in sys.modules
