#!/usr/bin/env python
"""Issue 9's figure and numbers: the 100-epoch ReCU and tau = 1 runs next to the 10-epoch runs.

Reads ``docs/runs/*/metrics.jsonl`` (no checkpoint, no data) and writes
``docs/figures/cifar10_r20_100ep.png``: test top-1 per epoch of the two 100-epoch runs (left) and of
the 10-epoch, 20,000-image runs, mean and range over their seeds (right). Prints the numbers
docs/results.md and docs/claims.md quote: final, best, the mean of the last 5 epochs, every tenth epoch.

Usage: python scripts/plot_cifar10_runs.py [--runs docs/runs] [--out docs/figures/cifar10_r20_100ep.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

LONG = {"ReCU (tau 0.85 -> 0.99)": "r20_recu_full_e100_s0", "tau = 1": "r20_tau1_full_e100_s0"}
SHORT = {"ReCU": "r20_recu_n20000_e10_s{}", "tau = 1": "r20_tau1_n20000_e10_s{}"}


def test_curve(run: Path) -> np.ndarray:
    """Test top-1 (%) by epoch; the last record of an epoch wins (a resumed run may repeat one)."""
    by_epoch: dict[int, float] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "test_top1" in record:
            by_epoch[int(record["epoch"])] = float(record["test_top1"])
    return np.array([by_epoch[e] for e in sorted(by_epoch)])


def summary(curve: np.ndarray) -> dict[str, float]:
    return {"epochs": len(curve), "final": curve[-1], "best": curve.max(), "best_epoch": int(curve.argmax()) + 1,
            "last5_mean": curve[-5:].mean(), "last5_std": curve[-5:].std(ddof=1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=Path, default=Path("docs/runs"))
    p.add_argument("--out", type=Path, default=Path("docs/figures/cifar10_r20_100ep.png"))
    args = p.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [2, 1]})
    long = {label: test_curve(args.runs / name) for label, name in LONG.items()}
    for label, curve in long.items():
        left.plot(np.arange(1, len(curve) + 1), curve, label=label, lw=1.2)
        s = summary(curve)
        print(f"{label}: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in s.items()))
        print("  every 10th epoch: " + ", ".join(f"{curve[e - 1]:.2f}" for e in range(10, len(curve) + 1, 10)))
    a, b = long.values()
    n = min(len(a), len(b))
    diff = a[:n] - b[:n]
    print(f"ReCU - tau = 1: final {diff[-1]:+.2f}, last-5 mean {diff[-5:].mean():+.2f} (std {diff[-5:].std(ddof=1):.2f})")
    left.set(xlabel="epoch", ylabel="test top-1 (%)", title="ResNet-20 1W1A, CIFAR-10, 100 epochs, full data",
             ylim=(20, 90))
    left.axhline(87.4, color="grey", ls=":", lw=1)
    left.text(2, 87.9, "paper, 600 epochs: 87.4%", color="grey", fontsize=8)
    left.grid(alpha=0.3)
    left.legend(loc="lower right")
    for label, pattern in SHORT.items():
        curves = [test_curve(args.runs / pattern.format(s)) for s in range(9)
                  if (args.runs / pattern.format(s) / "metrics.jsonl").is_file()]
        if not curves:
            continue
        stack = np.stack(curves)
        x = np.arange(1, stack.shape[1] + 1)
        line, = right.plot(x, stack.mean(0), label=f"{label} ({len(curves)} seeds)")
        right.fill_between(x, stack.min(0), stack.max(0), color=line.get_color(), alpha=0.2)
    right.set(xlabel="epoch", title="10 epochs, 20,000 images (mean, range)", ylim=(20, 90))
    right.grid(alpha=0.3)
    right.legend(loc="lower right")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
