"""How closely onnxruntime follows PyTorch on a shipped trained model: all CIFAR-10 test images.

Exports ``resnet20_1w1a`` (pretrained) to ONNX and runs three onnxruntime sessions - the graph as
written (no optimisation), ``onnxruntime_session`` (recu's recommendation) and onnxruntime's default -
against the PyTorch model; prints per session the images with another top-1, those with logits beyond
1e-4 of the row's largest |logit|, and the worst relative difference (docs/deploy.md, "ONNX export").

    python scripts/onnx_agreement.py [--cifar-dir DIR]      # default: $RECU_CIFAR10_DIR
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cifar-dir", default=os.environ.get("RECU_CIFAR10_DIR"), help="cifar-10-batches-py folder")
    args = ap.parse_args()
    if not args.cifar_dir:
        raise SystemExit("error: no CIFAR-10 folder: pass --cifar-dir or set RECU_CIFAR10_DIR")

    import onnxruntime as ort

    from recu import models
    from recu.data import build_test_loader
    from recu.deploy import export_onnx
    from recu.deploy.exporter.onnx_export import onnxruntime_session

    model = models.create("resnet20_1w1a", pretrained=True).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "resnet20_1w1a.onnx")
        export_onnx(model, path)
        written = ort.SessionOptions()
        written.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sessions = {"graph as written": ort.InferenceSession(path, written, providers=["CPUExecutionProvider"]),
                    "onnxruntime_session": onnxruntime_session(path),
                    "onnxruntime default": ort.InferenceSession(path, providers=["CPUExecutionProvider"])}
        loader = build_test_loader("cifar10", args.cifar_dir, batch_size=1000, device=torch.device("cpu"),
                                   workers=0)
        other_top1 = dict.fromkeys(sessions, 0)
        beyond = dict.fromkeys(sessions, 0)
        worst = dict.fromkeys(sessions, 0.0)
        images = 0
        for x, _ in loader:
            with torch.no_grad():
                want = model(x).numpy()
            for name, sess in sessions.items():
                got = sess.run(None, {"input": x.numpy()})[0]
                other_top1[name] += int((got.argmax(1) != want.argmax(1)).sum())
                rel = np.abs(got - want).max(1) / np.abs(want).max(1)
                beyond[name] += int((rel > 1e-4).sum())
                worst[name] = max(worst[name], float(rel.max()))
            images += len(x)
    print(f"resnet20_1w1a (pretrained), {images} CIFAR-10 test images, onnxruntime {ort.__version__}")
    for name in sessions:
        print(f"  {name:22s} other top-1 {other_top1[name]:5d}   logits beyond 1e-4 {beyond[name]:5d}"
              f"   worst relative {worst[name]:.3g}")


if __name__ == "__main__":
    main()
