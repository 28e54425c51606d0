"""``recu claims``: issue 22's verdicts from its run folders (docs/claims.md, claims 6 and the open questions).

Reads ``<root>/r20_<variant>_full_e<budget>_s<seed>/`` (``config.yaml`` and ``metrics.jsonl``, as
``scripts/cifar10_claims_runs.sh`` writes them) and reports, all paired by seed (:mod:`.paired`):

- claim 6 at 100 epochs: final, best and last-5-epoch mean test top-1 of ReCU (``recu``) and
  tau = 1 (``tau1``), and ReCU - tau = 1 over the seeds where both runs are complete;
- convergence: the mean test top-1 over epochs 30-70 and its volatility (std of the epoch-to-epoch
  changes) over the same window, ReCU against tau = 1 (a pair counts once both runs passed epoch 70);
- centring vs standardisation at 30 epochs: each variant's mean +- std over its complete seeds and
  its paired difference against ``neither`` and against ``recu``;
- the float twin (``fp``, 100 epochs, seed 0).

A run is complete when its curve reaches its config's ``epochs``, which must equal the budget in its
name. Every expected run (and any further seed found) is listed with its state and epochs; statistics
need two complete pairs. :func:`write_report` writes ``report.md`` and ``curves.png``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

from .ablate import mean_std, read_run_curve
from .paired import PairedSummary, paired_summary, volatility, window, window_mean

__all__ = ["Run", "Claims", "Pairs", "read_claims", "render_report", "plot_curves", "write_report"]

PathLike = Union[str, Path]
LONG, SHORT = 100, 30  # budgets in epochs
LONG_SEEDS, SHORT_SEEDS = (0, 1, 2, 3), (0, 1)
CENTRING = ("recu", "center_only", "standardize_only", "neither")
WINDOW = (30, 70)  # epochs, counted from 1, inclusive
LAST = 5
PAPER_GAIN = 86.89 - 85.44  # the paper's ablation: schedule 0.85/0.99 against tau = 1
NEEDS = "n/a (needs 2 complete pairs)"


def run_name(variant: str, budget: int, seed: int) -> str:
    return f"r20_{variant}_full_e{budget}_s{seed}"


@dataclass
class Run:
    """One expected run folder. ``curve[i]`` is the test top-1 (%) of epoch i + 1; None where not reached."""

    name: str
    budget: int
    exists: bool = False
    curve: list[Optional[float]] = field(default_factory=list)
    dtype: Optional[str] = None  # binary.compute_dtype of its config
    problem: Optional[str] = None  # why a finished-looking run cannot be used

    @property
    def planned(self) -> int:
        """The config's epochs (the name's budget for a missing run)."""
        return len(self.curve) if self.exists else self.budget

    @property
    def done(self) -> int:
        """Epochs evaluated so far (the last evaluated epoch)."""
        return max((i + 1 for i, x in enumerate(self.curve) if x is not None), default=0)

    @property
    def complete(self) -> bool:
        return self.exists and self.problem is None and bool(self.curve) and self.curve[-1] is not None

    @property
    def status(self) -> str:
        if not self.exists:
            return "missing"
        if self.problem:
            return self.problem
        return "complete" if self.complete else f"incomplete, {self.done} of {len(self.curve)} epochs"

    def reached(self, epoch: int) -> bool:
        return self.exists and self.problem is None and self.done >= epoch

    @property
    def final(self) -> float:
        return self._complete_curve()[-1]

    @property
    def best(self) -> tuple[float, int]:
        """(best test top-1, its epoch counted from 1; the earliest on a tie)."""
        curve = self._complete_curve()
        top = max(curve)
        return top, curve.index(top) + 1

    @property
    def last_mean(self) -> float:
        return window_mean(self.curve, len(self.curve) - LAST + 1, len(self.curve))

    def _complete_curve(self) -> list[float]:
        if not self.complete:
            raise ValueError(f"{self.name} is not complete ({self.status})")
        return [float(x) for x in self.curve if x is not None]


def _read(root: Path, variant: str, budget: int, seed: int) -> Run:
    run = Run(run_name(variant, budget, seed), budget)
    path = root / run.name
    if not (path / "metrics.jsonl").is_file():
        return run
    run.exists = True
    try:
        _, config, curve = read_run_curve(path)
    except ValueError as e:  # a line cut short while the run appends it, or a damaged file
        run.problem = f"metrics.jsonl unreadable ({e})"
        return run
    run.curve = curve
    run.dtype = (config.get("binary") or {}).get("compute_dtype")
    if "epochs" in config and int(config["epochs"]) != budget:
        run.problem = f"config.yaml has epochs: {config['epochs']}, the name says {budget}"
    elif "epochs" not in config:
        run.problem = "no config.yaml with epochs: cannot tell whether it is complete"
    return run


def _seeds(root: Path, variants: tuple[str, ...], budget: int, expected: tuple[int, ...]) -> list[int]:
    """The expected seeds and any other seed a folder of these variants has."""
    found = set(expected)
    pattern = re.compile(rf"r20_(?:{'|'.join(variants)})_full_e{budget}_s(\d+)")
    for p in root.iterdir():
        m = pattern.fullmatch(p.name)
        if m and p.is_dir():
            found.add(int(m.group(1)))
    return sorted(found)


@dataclass
class Claims:
    """Every run of the report, by variant then seed: ``long["recu"][seed]``, ``short["neither"][seed]``."""

    root: Path
    long: dict[str, dict[int, Run]]
    short: dict[str, dict[int, Run]]

    def runs(self) -> list[Run]:
        return [r for group in (self.long, self.short) for runs in group.values() for r in runs.values()]


def read_claims(root: PathLike = "docs/runs") -> Claims:
    """Read every expected run folder under ``root`` (missing ones are recorded as missing)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"runs folder {root} does not exist")
    long_seeds = _seeds(root, ("recu", "tau1"), LONG, LONG_SEEDS)
    short_seeds = _seeds(root, CENTRING, SHORT, SHORT_SEEDS)
    long = {v: {s: _read(root, v, LONG, s) for s in long_seeds} for v in ("recu", "tau1")}
    long["fp"] = {0: _read(root, "fp", LONG, 0)}
    short = {v: {s: _read(root, v, SHORT, s) for s in short_seeds} for v in CENTRING}
    return Claims(root, long, short)


# -- the statistics ---------------------------------------------------------------------------------


@dataclass
class Pairs:
    """The seeds where both runs are usable, ``a - b`` on each, and their summary (None below 2 pairs)."""

    seeds: list[int]
    diffs: list[float]
    summary: Optional[PairedSummary]
    needs: str = NEEDS


def _paired(a: dict[int, Run], b: dict[int, Run], value: Callable[[Run], float],
            usable: Callable[[Run], bool] = lambda r: r.complete, needs: str = NEEDS) -> Pairs:
    seeds = [s for s in a if s in b and usable(a[s]) and usable(b[s])]
    diffs = [value(a[s]) - value(b[s]) for s in seeds]
    summary = paired_summary([value(a[s]) for s in seeds], [value(b[s]) for s in seeds]) if len(seeds) > 1 else None
    return Pairs(seeds, diffs, summary, needs)


def _window_values(run: Run) -> tuple[float, float]:
    part = window(run.curve, *WINDOW)
    return float(part.mean()), volatility(part)


# -- the report ---------------------------------------------------------------------------------------


def _f(x: Optional[float], signed: bool = False) -> str:
    return "-" if x is None else (f"{x:+.2f}" if signed else f"{x:.2f}")


def _p(p: Optional[float]) -> str:
    return "-" if p is None else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def _p_is(p: Optional[float]) -> str:
    text = _p(p)
    return text if text.startswith("<") else f"= {text}"


def _summary_row(label: str, pairs: Pairs) -> str:
    s = pairs.summary
    if s is None:
        return f"| {label} | {len(pairs.seeds)} | {pairs.needs} | | | | | |"
    assert s.ci95 is not None and s.t is not None
    return (f"| {label} | {s.n} | {s.mean:+.2f} | {s.se:.2f} | {s.ci95[0]:+.2f} to {s.ci95[1]:+.2f} | "
            f"{s.t:.2f} | {_p(s.t_p)} | {_p(s.wilcoxon_p)} |")


_SUMMARY_HEAD = ["| difference | pairs | mean | s.e. | 95% CI | t | t p | Wilcoxon p |",
                 "|---|---|---|---|---|---|---|---|"]


def _verdict(budget: str, label: str, pairs: Pairs, unit: str = "points") -> str:
    s = pairs.summary
    if s is None:
        have = "; ".join(f"seed {seed}: {d:+.2f}" for seed, d in zip(pairs.seeds, pairs.diffs)) or "no pair yet"
        return f"{budget}: {label}: {pairs.needs} ({have})."
    assert s.ci95 is not None and s.t is not None
    inside = "excludes" if s.ci95[0] > 0 or s.ci95[1] < 0 else "includes"
    return (f"{budget}, {s.n} seed pairs: {label} = {s.mean:+.2f} +- {s.se:.2f} {unit} (s.e.; 95% CI "
            f"{s.ci95[0]:+.2f} to {s.ci95[1]:+.2f}, {inside} 0), paired t = {s.t:.2f}, t p {_p_is(s.t_p)}, "
            f"Wilcoxon p {_p_is(s.wilcoxon_p)}.")


def _runs_section(c: Claims) -> list[str]:
    lines = ["## Runs", "", "| run | state | epochs | final | best (epoch) | last 5 | binary convs |",
             "|---|---|---|---|---|---|---|"]
    for r in c.runs():
        if r.complete:
            best, at = r.best
            nums = f"{r.final:.2f} | {best:.2f} ({at}) | {r.last_mean:.2f}"
        else:
            nums = "- | - | -"
        lines.append(f"| `{r.name}` | {r.status} | {r.done}/{r.planned} | {nums} | {r.dtype or '-'} |")
    waiting = [f"`{r.name}` ({r.status})" for r in c.runs() if not r.complete]
    lines += ["", "Not in the statistics: " + (", ".join(waiting) if waiting else "none") + "."]
    return lines


def _claim6(c: Claims) -> tuple[list[str], list[str]]:
    recu, tau1 = c.long["recu"], c.long["tau1"]
    lines = [f"## Claim 6: ReCU against tau = 1 at {LONG} epochs", "",
             "| seed | ReCU final | ReCU best | ReCU last 5 | tau = 1 final | tau = 1 best | tau = 1 last 5 | "
             "ReCU - tau = 1, final | ReCU - tau = 1, last 5 |", "|---|---|---|---|---|---|---|---|---|"]
    for s in recu:
        cells = []
        for r in (recu[s], tau1[s]):
            cells += [_f(r.final), _f(r.best[0]), _f(r.last_mean)] if r.complete else [f"({r.status})", "", ""]
        both = recu[s].complete and tau1[s].complete
        diffs = [_f(recu[s].final - tau1[s].final, True), _f(recu[s].last_mean - tau1[s].last_mean, True)] \
            if both else ["-", "-"]
        lines.append(f"| {s} | " + " | ".join(cells + diffs) + " |")
    final = _paired(recu, tau1, lambda r: r.final)
    last = _paired(recu, tau1, lambda r: r.last_mean)
    lines += ["", *_SUMMARY_HEAD, _summary_row("ReCU - tau = 1, final", final),
              _summary_row(f"ReCU - tau = 1, mean of the last {LAST}", last)]
    verdict = _verdict(f"at {LONG} epochs", "ReCU - tau1 (final test top-1)", final)
    if final.summary is not None and final.summary.ci95 is not None:
        lo, hi = final.summary.ci95
        where = "inside" if lo <= PAPER_GAIN <= hi else "outside"
        verdict += f" The paper's +{PAPER_GAIN:.2f} lies {where} the interval."
    return lines, [f"Claim 6: {verdict}"]


def _convergence(c: Claims) -> tuple[list[str], list[str]]:
    recu, tau1 = c.long["recu"], c.long["tau1"]
    lo, hi = WINDOW
    lines = [f"## Convergence: epochs {lo}-{hi} of the {LONG}-epoch runs", "",
             f"Mean test top-1 over epochs {lo}-{hi} (higher: converged further) and its volatility, the sample "
             "std of the epoch-to-epoch changes in the same window (lower: steadier). A pair counts once both "
             f"runs passed epoch {hi}.", "",
             "| seed | ReCU mean | tau = 1 mean | ReCU - tau = 1 | ReCU volatility | tau = 1 volatility | "
             "ReCU - tau = 1 |", "|---|---|---|---|---|---|---|"]
    for s in recu:
        if recu[s].reached(hi) and tau1[s].reached(hi):
            (ma, va), (mb, vb) = _window_values(recu[s]), _window_values(tau1[s])
            lines.append(f"| {s} | {ma:.2f} | {mb:.2f} | {ma - mb:+.2f} | {va:.2f} | {vb:.2f} | {va - vb:+.2f} |")
        else:
            lines.append(f"| {s} | {recu[s].done}/{LONG} epochs | {tau1[s].done}/{LONG} epochs | - | | | - |")
    needs = f"n/a (needs 2 pairs past epoch {hi})"
    mean = _paired(recu, tau1, lambda r: _window_values(r)[0], lambda r: r.reached(hi), needs)
    vol = _paired(recu, tau1, lambda r: _window_values(r)[1], lambda r: r.reached(hi), needs)
    lines += ["", *_SUMMARY_HEAD, _summary_row(f"mean test top-1, epochs {lo}-{hi}", mean),
              _summary_row(f"volatility, epochs {lo}-{hi}", vol)]
    budget = f"at {LONG} epochs, epochs {lo}-{hi}"
    return lines, [f"Convergence: {_verdict(budget, 'ReCU - tau1 (mean test top-1)', mean)}",
                   f"Convergence: {_verdict(budget, 'ReCU - tau1 (volatility)', vol, 'points per epoch')}"]


def _centring(c: Claims) -> tuple[list[str], list[str]]:
    lines = [f"## Centring vs standardisation at {SHORT} epochs (open question 5)", "",
             "| variant | complete seeds | final | best | last 5 |", "|---|---|---|---|---|"]
    for v, runs in c.short.items():
        done = [r for r in runs.values() if r.complete]
        cells = ["-", "-", "-"]
        if done:
            cells = []
            for values in ([r.final for r in done], [r.best[0] for r in done], [r.last_mean for r in done]):
                m, sd = mean_std(values)
                cells.append(f"{m:.2f} ± " + ("-" if sd is None else f"{sd:.2f}"))
        lines.append(f"| {v} | {len(done)} of {len(runs)} | " + " | ".join(cells) + " |")
    lines += ["", "Final test top-1, paired by seed:", "", *_SUMMARY_HEAD]
    verdicts = []
    for base in ("neither", "recu"):
        for v in CENTRING:
            if v in (base, "neither"):  # neither - recu would repeat recu - neither
                continue
            pairs = _paired(c.short[v], c.short[base], lambda r: r.final)
            lines.append(_summary_row(f"{v} - {base}", pairs))
            verdicts.append(f"Centring: {_verdict(f'at {SHORT} epochs', f'{v} - {base} (final)', pairs)}")
    return lines, verdicts


def _float_twin(c: Claims) -> tuple[list[str], list[str]]:
    fp, recu, tau1 = c.long["fp"][0], c.long["recu"].get(0), c.long["tau1"].get(0)
    lines = [f"## Float twin at {LONG} epochs", "",
             "| run | state | final | best | last 5 | fp - ReCU (seed 0), final | fp - tau = 1 (seed 0), final |",
             "|---|---|---|---|---|---|---|"]
    gaps = [fp.final - r.final if fp.complete and r is not None and r.complete else None for r in (recu, tau1)]
    nums = f"{fp.final:.2f} | {fp.best[0]:.2f} | {fp.last_mean:.2f}" if fp.complete else "- | - | -"
    lines.append(f"| `{fp.name}` | {fp.status} | {nums} | {_f(gaps[0], True)} | {_f(gaps[1], True)} |")
    if fp.complete and gaps[0] is not None and recu is not None:
        verdict = (f"at {LONG} epochs, seed 0: float twin {fp.final:.2f}% against ReCU {recu.final:.2f}% "
                   f"(1-bit gap {gaps[0]:+.2f} points; paper, 600 epochs: 92.1% against 87.4%).")
    elif fp.complete:
        verdict = f"at {LONG} epochs, seed 0: float twin {fp.final:.2f}%; ReCU seed 0 not complete."
    else:
        verdict = f"at {LONG} epochs: n/a (`{fp.name}`: {fp.status})."
    return lines, [f"Float twin: {verdict}"]


def render_report(c: Claims) -> str:
    """The markdown report: runs, the four sections and the verdict lines."""
    sections = [_claim6(c), _convergence(c), _centring(c), _float_twin(c)]
    lines = ["# Issue 22: the claims at 100 and 30 epochs", "",
             f"Runs under `{c.root}` (ResNet-20 1W1A, CIFAR-10, all 50,000 training images). Test top-1 in %: "
             f"final = last epoch, best = best test epoch, last {LAST} = mean of the last {LAST} epochs. "
             "Differences are paired by seed over the seeds where both runs are complete; s.e. = sample std of "
             "the differences / sqrt(n), 95% CI from Student's t; p-values two-sided: paired t test and exact "
             "Wilcoxon signed-rank test (zero differences dropped, mid-ranks for ties; with n pairs its p is at "
             "least 2/2^n: 0.5 for 2 pairs, 0.125 for 4, so it cannot reach 0.05 below 5 pairs).", "",
             "## Verdicts", ""]
    lines += [f"- {v}" for _, verdicts in sections for v in verdicts]
    lines += ["", *_runs_section(c)]
    for body, _ in sections:
        lines += ["", *body]
    return "\n".join(lines) + "\n"


def plot_curves(c: Claims, path: PathLike) -> Path:
    """Test top-1 per epoch: left the 100-epoch runs (ReCU solid, tau = 1 dashed, a colour per seed; the
    float twin dotted black), right the 30-epoch centring runs (a colour per variant, a line style per seed)."""
    from ._plot import new_figure, save

    fig, axes = new_figure(1, 2, size=(12.5, 4.8))
    left, right = axes[0]

    def draw(ax: Any, run: Run, label: str, **style: Any) -> None:
        pts = [(i + 1, x) for i, x in enumerate(run.curve) if x is not None]
        if pts:
            suffix = "" if run.complete else f" ({run.done}/{run.planned})"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1.1, label=label + suffix, **style)

    for i, seed in enumerate(c.long["recu"]):
        colour = f"C{i % 10}"
        draw(left, c.long["recu"][seed], f"ReCU s{seed}", color=colour, ls="-")
        draw(left, c.long["tau1"][seed], f"tau = 1 s{seed}", color=colour, ls="--")
    draw(left, c.long["fp"][0], "float twin s0", color="black", ls=":")
    left.axvspan(WINDOW[0], WINDOW[1], color="grey", alpha=0.08, lw=0)
    left.set(xlabel="epoch", ylabel="test top-1 (%)", xlim=(0, LONG + 1),
             title=f"{LONG} epochs (shaded: epochs {WINDOW[0]}-{WINDOW[1]})")
    styles = ["-", "--", ":", "-."]
    for i, (v, runs) in enumerate(c.short.items()):
        for j, seed in enumerate(runs):
            draw(right, runs[seed], f"{v} s{seed}", color=f"C{i % 10}", ls=styles[j % len(styles)])
    right.set(xlabel="epoch", xlim=(0, SHORT + 1), title=f"{SHORT} epochs: centring vs standardisation")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="x-small", loc="lower right")
        else:
            ax.text(0.5, 0.5, "no runs yet", ha="center", va="center", transform=ax.transAxes)
    return save(fig, Path(path))


def write_report(root: PathLike = "docs/runs", out_dir: PathLike = "docs/reports/claims100") -> tuple[str, list[Path]]:
    """Read the runs, write ``out_dir/report.md`` and ``out_dir/curves.png``; return the report and the paths."""
    claims = read_claims(root)
    text = render_report(claims)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "report.md"
    md.write_text(text)
    return text, [md, plot_curves(claims, out / "curves.png")]

