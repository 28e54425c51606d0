"""The plots of ``recu analyze``: one function per PNG, each taking plain data and a path.

Monitor records are the ``dead_weight`` dicts of :class:`DeadWeightMonitor`; weights are
{name: W1} dicts. Weights are divided by their std before pooling or plotting, so layers
(and runs with different b*) share one axis.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from ._plot import new_figure, save

__all__ = [
    "unit_std",
    "plot_pooled_histograms",
    "plot_layer_histograms",
    "plot_flip_ratio",
    "plot_clamped_share",
    "plot_flips_by_bucket",
    "plot_never_flipped",
    "plot_distribution_fit",
    "plot_training",
]

_STAGE_COLORS = {"init": "tab:gray", "middle": "tab:orange", "end": "tab:blue", "checkpoint": "tab:blue"}


def unit_std(w: Tensor) -> np.ndarray:
    """The weights of one layer, centred on their mean and divided by their std, as float64 numpy."""
    x = w.detach().flatten().to(torch.float64)
    return ((x - x.mean()) / x.std(unbiased=False).clamp_min(1e-300)).numpy()


def _fits(ax: Any, x: np.ndarray, grid: np.ndarray, log: bool) -> None:
    loc = float(np.median(x))
    b = float(np.mean(np.abs(x - loc)))
    mu, sigma = float(x.mean()), float(x.std())
    ax.plot(grid, np.exp(-np.abs(grid - loc) / b) / (2 * b), color="tab:red", lw=1.3, label="Laplace fit")
    ax.plot(grid, np.exp(-0.5 * ((grid - mu) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi)),
            color="tab:green", lw=1.3, ls="--", label="Gaussian fit")
    if log:
        ax.set_yscale("log")
        ax.set_ylim(1e-5, 2.0)


def plot_pooled_histograms(stages: dict[str, dict[str, Tensor]], path: Path, span: float = 6.0) -> Path:
    """All binary layers pooled (each at unit std), one column per stage; linear (top) and log (bottom) density."""
    names = list(stages)
    fig, axes = new_figure(2, len(names), size=(4.2 * len(names), 6.4))
    grid = np.linspace(-span, span, 600)
    bins = np.linspace(-span, span, 121)
    for j, stage in enumerate(names):
        x = np.concatenate([unit_std(w) for w in stages[stage].values()])
        for i, log in enumerate((False, True)):
            ax = axes[i][j]
            ax.hist(x, bins=bins, density=True, color=_STAGE_COLORS.get(stage, "tab:blue"), alpha=0.55,
                    label=f"{stage} ({x.size:,} weights)")
            _fits(ax, x, grid, log)
            ax.set_xlim(-span, span)
            ax.grid(alpha=0.3)
            if i == 0:
                ax.set_title(f"{stage}: standardised latent weights")
                ax.legend(fontsize=7)
            else:
                ax.set_xlabel("W1 / std(W1)")
        axes[0][j].set_ylabel("density" if j == 0 else "")
        axes[1][j].set_ylabel("density (log)" if j == 0 else "")
    return save(fig, path)


def plot_layer_histograms(stages: dict[str, dict[str, Tensor]], path: Path, span: float = 5.0) -> Path:
    """One panel per layer: the last stage with its Laplace and Gaussian fits, the first stage as an outline."""
    order = list(stages)
    last, first = stages[order[-1]], stages[order[0]]
    names = list(last)
    ncols = min(6, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig, axes = new_figure(nrows, ncols, size=(2.6 * ncols, 2.2 * nrows + 0.3))
    bins = np.linspace(-span, span, 61)
    grid = np.linspace(-span, span, 300)
    for k, name in enumerate(names):
        ax = axes[k // ncols][k % ncols]
        x = unit_std(last[name])
        ax.hist(x, bins=bins, density=True, color=_STAGE_COLORS.get(order[-1], "tab:blue"), alpha=0.55,
                label=order[-1])
        if len(order) > 1 and name in first:
            ax.hist(unit_std(first[name]), bins=bins, density=True, histtype="step", color="black", lw=0.8,
                    label=order[0])
        _fits(ax, x, grid, log=False)
        kurt = float(np.mean(x**4))
        ax.set_title(f"{name}\nkurtosis {kurt:.2f}", fontsize=7)
        ax.tick_params(labelsize=6)
        if k == 0:
            ax.legend(fontsize=5)
    for k in range(len(names), nrows * ncols):
        axes[k // ncols][k % ncols].set_axis_off()
    fig.suptitle(f"W1 / std per binary layer: {order[-1]}" + (f" (outline: {order[0]})" if len(order) > 1 else ""),
                 fontsize=9)
    return save(fig, path)


def _series(monitor: Sequence[dict[str, Any]], layer: str, key: str) -> np.ndarray:
    vals = []
    for m in monitor:
        v = m["layers"].get(layer, {}).get(key)
        vals.append(np.nan if v is None else float(v))
    return np.asarray(vals)


def _layer_lines(ax: Any, monitor: Sequence[dict[str, Any]], key: str, positive: bool = False) -> None:
    from matplotlib import colormaps

    epochs = [m["epoch"] for m in monitor]
    names = list(monitor[-1]["layers"])
    cmap = colormaps["viridis"]
    for i, name in enumerate(names):
        y = _series(monitor, name, key)
        if positive:
            y = np.where(y > 0, y, np.nan)  # log axes cannot show 0
        ax.plot(epochs, y, color=cmap(i / max(len(names) - 1, 1)), lw=1, label=name)
    _legend(ax, len(names), title="layer (dark = first)")


def _legend(ax: Any, entries: int, **kw: Any) -> None:
    # many layers: outside on the right, so the legend never hides the lines
    where = dict(loc="center left", bbox_to_anchor=(1.01, 0.5)) if entries > 9 else {}
    ax.legend(fontsize=5, ncol=2 if entries > 24 else 1, title_fontsize=6, **where, **kw)


def plot_flip_ratio(monitor: Sequence[dict[str, Any]], path: Path) -> Path:
    """Share of binary weights whose sign changed since the previous epoch, per layer and overall."""
    fig, axes = new_figure(1, 1, size=(7.0, 4.2))
    ax = axes[0][0]
    _layer_lines(ax, monitor, "flip_ratio", positive=True)
    total = np.asarray([m["total"]["flip_ratio"] for m in monitor], dtype=float)
    ax.plot([m["epoch"] for m in monitor], np.where(total > 0, total, np.nan), color="black", lw=2.2, label="all")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("sign flips / weights (per epoch)")
    ax.set_title("Sign-flip ratio of the binary weights (black: all layers)")
    ax.grid(alpha=0.3, which="both")
    return save(fig, path)


def plot_clamped_share(monitor: Sequence[dict[str, Any]], path: Path) -> Path:
    """Share of weights beyond +-Q per layer, against the Laplace prediction 2 (1 - tau)."""
    fig, axes = new_figure(1, 1, size=(7.0, 4.2))
    ax = axes[0][0]
    _layer_lines(ax, monitor, "clamped_share")
    epochs = [m["epoch"] for m in monitor]
    first = next(iter(monitor[-1]["layers"]))
    ax.plot(epochs, _series(monitor, first, "clamped_share_laplace"), color="black", lw=2, ls="--",
            label="Laplace: 2(1 - τ)")
    ax.plot(epochs, [m["total"]["clamped_share"] for m in monitor], color="black", lw=2.2, label="all layers")
    _legend(ax, len(monitor[-1]["layers"]) + 2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("share with |W1| > Q")
    ax.set_title("Weights clamped by ReCU (dashed: share if W1 were Laplace)")
    ax.grid(alpha=0.3)
    return save(fig, path)


def plot_flips_by_bucket(monitor: Sequence[dict[str, Any]], path: Path) -> Path:
    """Flip ratio per |W1|/sigma bucket (all layers): a few epochs as lines, every epoch as a heat map."""
    from matplotlib.colors import LogNorm

    epochs = [m["epoch"] for m in monitor]
    ratios = np.asarray([[np.nan if r is None else r for r in m["total"]["bucket_flip_ratio"]] for m in monitor],
                        dtype=float)
    nb = ratios.shape[1]
    fig, axes = new_figure(1, 2, size=(11.0, 4.2))
    left, right = axes[0]
    picks = sorted({0, len(monitor) // 4, len(monitor) // 2, len(monitor) - 1})
    for i in picks:
        y = np.where(ratios[i] > 0, ratios[i], np.nan)
        left.plot(np.arange(1, nb + 1), y, marker="o", label=f"epoch {epochs[i]}")
    left.set_yscale("log")
    left.set_xlabel(f"bucket of |W1|/σ at the previous epoch (1 = smallest {100 // nb}%, {nb} = largest)")
    left.set_ylabel("flips / weights in bucket")
    left.set_title("Do large-magnitude weights flip?")
    left.grid(alpha=0.3, which="both")
    left.legend(fontsize=7)
    positive = ratios[ratios > 0]
    if positive.size:
        img = right.imshow(np.where(ratios > 0, ratios, np.nan).T, aspect="auto", origin="lower",
                           norm=LogNorm(vmin=positive.min(), vmax=positive.max()), cmap="magma",
                           extent=(epochs[0] - 0.5, epochs[-1] + 0.5, 0.5, nb + 0.5))
        right.figure.colorbar(img, ax=right, label="flip ratio")
    right.set_xlabel("epoch")
    right.set_ylabel("|W1|/σ bucket")
    right.set_title("Flip ratio per bucket and epoch (blank: no flip)")
    return save(fig, path)


def plot_never_flipped(monitor: Sequence[dict[str, Any]], path: Path) -> Path:
    """Share of weights that never flipped after the reference epochs (all layers; per layer faint)."""
    fig, axes = new_figure(1, 1, size=(7.0, 4.2))
    ax = axes[0][0]
    epochs = [m["epoch"] for m in monitor]
    for name in monitor[-1]["layers"]:
        ax.plot(epochs, [(m["layers"].get(name, {}).get("never_flipped") or {}).get("start") for m in monitor],
                color="0.75", lw=0.7)
    for key in monitor[-1]["total"]["never_flipped"]:
        y = [np.nan if m["total"]["never_flipped"].get(key) is None else m["total"]["never_flipped"][key]
             for m in monitor]
        label = "since monitoring began" if key == "start" else f"since the end of epoch {key}"
        ax.plot(epochs, y, lw=2, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("share never flipped")
    ax.set_ylim(0, 1.02)
    ax.set_title("Weights that never flipped (grey: each layer since the start)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)


def plot_distribution_fit(monitor: Sequence[dict[str, Any]], path: Path) -> Path:
    """Kurtosis per layer, KS distance of the Laplace and Gaussian fits, entropy of the binary filters."""
    epochs = [m["epoch"] for m in monitor]
    fig, axes = new_figure(1, 3, size=(14.0, 4.0))
    a, b, c = axes[0]
    _layer_lines(a, monitor, "kurtosis")
    a.axhline(3.0, color="tab:green", ls="--", lw=1)
    a.axhline(6.0, color="tab:red", ls="--", lw=1)
    a.set_title("kurtosis of W1 (3 Gaussian, 6 Laplace)")
    names = list(monitor[-1]["layers"])
    sizes = np.asarray([monitor[-1]["layers"][n]["numel"] for n in names], dtype=float)
    for key, color, label in (("ks_laplace", "tab:red", "Laplace fit"), ("ks_gaussian", "tab:green", "Gaussian fit")):
        per_layer = np.stack([_series(monitor, n, key) for n in names])
        b.plot(epochs, (per_layer * sizes[:, None]).sum(0) / sizes.sum(), color=color, lw=2, label=label)
    b.set_title("KS distance of the fits (weighted mean over layers)")
    b.set_ylabel("KS statistic (lower fits better)")
    b.legend(fontsize=8)
    _layer_lines(c, monitor, "binary_entropy_bits")
    c.set_title("entropy of the binary filters (share of +1)")
    c.set_ylabel("bits per weight")
    for ax in (a, b, c):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    return save(fig, path)


def plot_training(records: Sequence[dict[str, Any]], path: Path) -> Optional[Path]:
    """Test top-1 and tau per epoch, when the metrics have them."""
    rows = [r for r in records if r.get("test_top1") is not None]
    if not rows:
        return None
    fig, axes = new_figure(1, 1, size=(7.0, 3.8))
    ax = axes[0][0]
    ax.plot([r["epoch"] for r in rows], [r["test_top1"] for r in rows], color="tab:blue", lw=2, label="test top-1")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test top-1 (%)")
    taus = [(r["epoch"], r["tau"]) for r in records if r.get("tau") is not None]
    if taus:
        tw = ax.twinx()
        tw.plot(*zip(*taus), color="tab:orange", lw=1.5, ls="--")
        tw.set_ylabel("τ (dashed)")
    ax.grid(alpha=0.3)
    ax.set_title("Training")
    return save(fig, path)
