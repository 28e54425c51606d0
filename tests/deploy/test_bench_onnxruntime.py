"""The onnxruntime baselines of the benchmark: the float twin in onnxruntime FP32 and static INT8.

Skipped without onnx / onnxscript / onnxruntime, except the test of the message that says how to get them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from recu import models
from recu.cli import main
from recu.deploy import export, load
from recu.cli import bench_onnxruntime as bo
from recu.cli.bench import CpuInfo, Timing, run_benchmark


def needs_onnxruntime() -> None:
    for name in ("onnxruntime", "onnx", "onnxscript"):
        pytest.importorskip(name)


@pytest.fixture(scope="module")
def resnet20_ort(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, bo.OrtBaselines]:
    """resnet20_fp with random weights, exported and quantised (16 calibration images)."""
    needs_onnxruntime()
    torch.manual_seed(0)
    fp = models.create("resnet20_fp").eval()
    ort = bo.prepare_onnxruntime("resnet20_fp", fp, (3, 32, 32), tmp_path_factory.mktemp("ort"), calibration=16)
    return fp, ort


def test_float_twin_onnx_gives_pytorch_logits(resnet20_ort: tuple) -> None:
    fp, ort = resnet20_ort
    session = bo.ort_session(ort.fp32_path, threads=1)
    for batch in (1, 5):  # the batch dim is dynamic
        x = torch.randn(batch, 3, 32, 32)
        with torch.inference_mode():
            want = fp(x).numpy()
        got = session.run(None, {"input": x.numpy()})[0]
        # onnxruntime folds BatchNorm into the convs and sums in its own order: ~1e-5 here, not bits
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
        assert (got.argmax(1) == want.argmax(1)).all()
    assert np.ptp(want, axis=0).max() > 0  # the logits depend on the input: the check means something
    assert ort.fp32_vs_torch <= 1e-4


def test_int8_keeps_fp32_top1_on_a_trained_model(tmp_path: Path) -> None:
    """A float digits CNN trained for 40 steps (~98% on the test split), calibrated on 32 training
    images: INT8 keeps FP32's top-1 on at least 90% of 128 test images (128/128 measured; a loose
    bound, quantisation may flip a close call). ResNet-20 with random weights is no test of this: a
    random deep network amplifies rounding, and its int8 top-1 matched on ~40-85% of images."""
    needs_onnxruntime()
    from recu.data.digits import DIGITS_MAX, digits_stats, load_digits

    mean, std = digits_stats()
    (xt, yt), (xv, _) = [((x.float() / DIGITS_MAX - mean) / std, y) for x, y in (load_digits(True), load_digits(False))]
    torch.manual_seed(0)
    model = models.create("digits_cnn_fp")
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(40):
        i = torch.randint(0, len(xt), (256,))
        loss = torch.nn.functional.cross_entropy(model(xt[i]), yt[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    ort = bo.prepare_onnxruntime("digits_cnn_fp", model, (1, 8, 8), tmp_path,
                                 images=(xt[:32].numpy(), xv[:128].numpy()))
    same, total = ort.int8_agreement
    assert total == 128 and ort.fp32_classes >= 8  # a real spread of classes, not one constant answer
    assert same >= 0.9 * total
    assert ort.sizes()["onnx int8"] < ort.sizes()["onnx fp32"] / 2


def test_benchmark_times_every_promised_row(resnet20_ort: tuple, tmp_path: Path) -> None:
    fp, ort = resnet20_ort
    path = tmp_path / "r20.recu"
    export(models.create("resnet20_1w1a").eval(), path)
    plan = load(path)
    res = run_benchmark(plan, (3, 32, 32), (1, 2), threads=1, repeat=1, use_compile=False,
                        baselines={"resnet20_fp": fp}, twin=False, runners=bo.onnxruntime_runners(ort, threads=1))
    for row in res.timings.values():
        assert list(row) == ["packed", "resnet20_fp eager", bo.FP32, bo.INT8]
        assert all(isinstance(t, Timing) and 0 < t.best <= t.median for t in row.values())
    assert all(size > 0 for size in ort.sizes().values())
    text = bo.format_comparison(res, ort, path.stat().st_size)
    assert "files: recu 0.0" in text and "onnx fp32 1." in text and "onnx int8 0." in text
    for b in (1, 2):
        assert f"batch {b}: recu " in text
    assert text.count("recu vs onnxruntime INT8") == 2 and text.count("recu vs onnxruntime FP32") == 2
    assert "kernel path" in text and "avx512_vnni" in text and "QUInt8" in text


def test_cli_onnxruntime_rows(capsys: pytest.CaptureFixture) -> None:
    needs_onnxruntime()
    assert main(["bench", "digits_cnn_1w1a", "--onnxruntime", "--calibration", "8", "--batch", "1", "--repeat", "1",
                 "--no-compile", "--threads", "1"]) == 0
    text = capsys.readouterr().out
    rows = [line.split()[1:3] for line in text.splitlines() if line.startswith("    1  ")]
    assert ["onnxruntime", "fp32"] in rows and ["onnxruntime", "int8"] in rows
    assert "8 random normal images (synthetic calibration" in text and "recu vs onnxruntime INT8" in text


def test_missing_onnxruntime_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    assert bo.missing_onnxruntime() == ("onnxruntime baselines skipped: onnxruntime is not installed "
                                        "(pip install 'recu-bnn[onnx]')")
    assert main(["bench", "digits_cnn_1w1a", "--onnxruntime", "--batch", "1", "--repeat", "1", "--no-compile",
                 "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert "pip install 'recu-bnn[onnx]'" in text
    assert "packed" in text and "digits_cnn_fp eager" in text and "onnxruntime fp32" not in text  # the rest ran


def test_int8_config_follows_onnxruntimes_cpu_advice() -> None:
    def cpu(*flags: str) -> CpuInfo:
        return CpuInfo("test", None, 1, frozenset(flags))

    assert bo.int8_config(cpu("sse2", "avx2", "avx512_vnni")) == bo.Int8Config("uint8", reduce_range=False)
    assert bo.int8_config(cpu("sse2", "avx2")).reduce_range  # no VNNI: 7-bit weights against saturation
    assert not bo.int8_config(cpu("asimd")).reduce_range  # not x86
    assert bo.int8_config(cpu("sse2", "amx_int8"), "int8").activations == "int8"
    with pytest.raises(ValueError, match="uint8"):
        bo.int8_config(cpu(), "int4")


def test_calibration_images(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RECU_CIFAR10_DIR", raising=False)
    calib, held_out, source = bo.calibration_images((3, 32, 32), 4)
    assert calib.shape == held_out.shape == (4, 3, 32, 32) and calib.dtype == np.float32
    assert "synthetic" in source and "RECU_CIFAR10_DIR is not set" in source
    assert "no data set" in bo.calibration_images((3, 224, 224), 2)[2]
    with pytest.raises(ValueError):
        bo.calibration_images((3, 32, 32), 0)


def test_calibration_on_cifar10(cifar_dir: str) -> None:
    calib, held_out, source = bo.calibration_images((3, 32, 32), 16, data_dir=cifar_dir)
    assert source == "16 CIFAR-10 test images" and calib.shape == held_out.shape == (16, 3, 32, 32)
    assert -3 < calib.min() < -1 and 1 < calib.max() < 3  # normalised as training normalises them
    assert not np.array_equal(calib, held_out)
