"""The paper's Figure 3 (quantisation error vs tau) and Figure 4 (entropy vs tau), regenerated.

Figure 3 is drawn twice, side by side: with the published Eq. 14 and with the corrected
closed form, each against Monte Carlo points from clamped Laplace samples, which only
the corrected curve goes through (see ``docs/theory.md``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from . import theory as T
from ._plot import new_figure, save

__all__ = ["monte_carlo_quantization_error", "figure3", "figure4", "make_figures"]

PathLike = Union[str, Path]


def monte_carlo_quantization_error(taus: Sequence[float], b: float = 1.0, samples: int = 400_000,
                                   seed: int = 0) -> np.ndarray:
    """Eq. 11 on samples: mean (clamp(w, -Q, Q) - alpha sign w)^2, w ~ La(0, b), alpha = mean |clamp(w)|.

    One set of samples serves every tau (common random numbers: the points vary smoothly).
    """
    w = np.random.default_rng(seed).laplace(0.0, b, samples)
    out = []
    for tau in taus:
        q = T.laplace_quantile(float(tau), b)
        wc = np.clip(w, -q, q)
        alpha = np.abs(wc).mean()
        out.append(np.mean((wc - alpha * np.where(wc >= 0, 1.0, -1.0)) ** 2))
    return np.asarray(out)


def figure3(path: PathLike, b: float = 1.0, samples: int = 400_000, seed: int = 0) -> Path:
    """Quantisation error vs tau: the paper's Eq. 14 (left) and the corrected form (right), with MC points."""
    taus = np.linspace(0.5005, 1.0, 500)
    mc_taus = np.round(np.arange(0.52, 1.0001, 0.04), 2)
    mc = monte_carlo_quantization_error(mc_taus, b, samples, seed)
    paper = T.quantization_error(taus, b, form="paper") / b**2
    corrected = T.quantization_error(taus, b) / b**2
    tau_min, qe_min = T.paper_minimum(b)

    fig, axes = new_figure(1, 2, size=(10.0, 4.0), sharey=True)
    left, right = axes[0]
    left.plot(taus, paper, color="tab:red", lw=2, label="paper Eq. 14 (as published)")
    left.plot(taus, corrected, color="0.6", lw=1, ls="--", label="corrected form")
    left.plot([tau_min], [qe_min / b**2], marker="v", color="tab:red", ms=8, ls="none",
              label=f"spurious minimum, τ = {tau_min:.3f}")
    left.set_title("Figure 3 as published: QE has a minimum")
    right.plot(taus, corrected, color="tab:blue", lw=2, label="corrected: 1 - p² + 2p ln p,  p = 2 - 2τ")
    right.plot(taus, paper, color="0.6", lw=1, ls="--", label="paper Eq. 14")
    right.set_title("Corrected: QE rises monotonically")
    for ax in (left, right):
        ax.plot(mc_taus, mc / b**2, "o", color="black", ms=4, label=f"Monte Carlo ({samples:,} samples)")
        ax.set_xlabel("τ")
        ax.set_xlim(0.5, 1.0)
        ax.set_ylim(0.0, 1.05 * float(paper.max()))
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    left.set_ylabel(f"quantisation error / b²   (La(0, b), b = {b:g})")
    return save(fig, Path(path))


def figure4(path: PathLike, bs: Sequence[float] = (0.2, 1 / math.e, 0.6, 1.0, 2.0)) -> Path:
    """Entropy of the clamped Laplace, H = 2 (ln b + 1) tau + ln(2/b) - 1, vs tau for several b."""
    taus = np.linspace(0.5005, 1.0, 300)
    fig, axes = new_figure(1, 1, size=(6.4, 4.2))
    ax = axes[0][0]
    colors = ["tab:purple", "black", "tab:green", "tab:orange", "tab:red"]
    for i, b in enumerate(bs):
        label = "b = 1/e (H = ln 2 for every τ)" if abs(b - 1 / math.e) < 1e-12 else f"b = {b:g}"
        ax.plot(taus, T.entropy(taus, b), lw=2, color=colors[i % len(colors)],
                ls="--" if abs(b - 1 / math.e) < 1e-12 else "-", label=label)
    ax.set_xlabel("τ")
    ax.set_ylabel("entropy H(τ) [nats]")
    ax.set_title("Figure 4: entropy of the clamped Laplace La(0, b)")
    ax.set_xlim(0.5, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return save(fig, Path(path))


def make_figures(out_dir: PathLike, samples: int = 400_000) -> list[Path]:
    """Write ``fig3_quantization_error.png`` and ``fig4_entropy.png`` into ``out_dir``."""
    out = Path(out_dir)
    return [figure3(out / "fig3_quantization_error.png", samples=samples), figure4(out / "fig4_entropy.png")]
