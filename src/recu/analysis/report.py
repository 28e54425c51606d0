"""``recu analyze``: a report folder (PNG plots, summary.md, numbers.json) for a run or a checkpoint.

A run directory gives the whole story: the DeadWeightMonitor records in metrics.jsonl
(flips, never-flipped shares, clamped shares, flips by |W1|/sigma bucket, distribution
fits per epoch) and the weight snapshots at init, middle and end. A checkpoint alone
gives the weight statistics of every binary layer it holds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor

from . import plots as P
from .rundata import RunData, load_checkpoint_weights, load_run
from .stats import weight_statistics

__all__ = ["analyze", "analyze_run", "analyze_checkpoint", "default_output_dir"]

PathLike = Union[str, Path]
_STAGE_ORDER = ("init", "middle", "end")


def default_output_dir(source: PathLike) -> Path:
    """``RUN_DIR/report`` for a run directory, ``NAME_report/`` beside a checkpoint file."""
    source = Path(source)
    return source / "report" if source.is_dir() else source.with_name(source.stem + "_report")


def analyze(source: PathLike, out_dir: Optional[PathLike] = None) -> Path:
    """Write the report of a run directory or a checkpoint file into ``out_dir``; returns it."""
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"{source} does not exist (expected a run directory or a checkpoint file)")
    out = Path(out_dir) if out_dir is not None else default_output_dir(source)
    if source.is_dir():
        return analyze_run(source, out)
    return analyze_checkpoint(source, out)


# -- numbers ----------------------------------------------------------------------------------------


def _pooled(weights: dict[str, Tensor]) -> dict[str, Any]:
    """Statistics of all layers together, each layer scaled to unit std first (b* does not matter)."""
    x = torch.cat([torch.from_numpy(P.unit_std(w)) for w in weights.values()])
    stats = weight_statistics(x)
    for key in ("tau", "q", "clamped_share", "clamped_share_laplace", "binary_entropy_bits", "b_hat"):
        stats.pop(key, None)
    return stats


def _snapshot_numbers(snap: dict[str, Any]) -> dict[str, Any]:
    taus = snap.get("tau", {})
    return {
        "epoch": snap.get("epoch"),
        "file": snap.get("file"),
        "pooled": _pooled(snap["weights"]),
        "layers": {n: weight_statistics(w, taus.get(n)) for n, w in snap["weights"].items()},
    }


def _bucket_totals(monitor: list[dict[str, Any]]) -> dict[str, Any]:
    """Flips per |W1|/sigma bucket summed over all epochs and layers."""
    nb = monitor[-1]["buckets"]
    flips = [0] * nb
    sizes = [0] * nb
    for m in monitor:
        for s in m["layers"].values():
            for i, f in enumerate(s["bucket_flips"]):
                flips[i] += f
                sizes[i] += _bucket_size(s["numel"], nb, i)
    return {
        "flips": flips,
        "weight_epochs": sizes,
        "flip_ratio": [f / s if s else None for f, s in zip(flips, sizes)],
    }


def _bucket_size(n: int, buckets: int, i: int) -> int:
    # the monitor's buckets are equal-count: ranks r with r * buckets // n == i
    return math.ceil((i + 1) * n / buckets) - math.ceil(i * n / buckets)


def _series(monitor: list[dict[str, Any]]) -> dict[str, Any]:
    keys = list(monitor[-1]["total"]["never_flipped"])
    return {
        "epoch": [m["epoch"] for m in monitor],
        "flip_ratio": [m["total"]["flip_ratio"] for m in monitor],
        "clamped_share": [m["total"]["clamped_share"] for m in monitor],
        "never_flipped": {k: [m["total"]["never_flipped"].get(k) for m in monitor] for k in keys},
    }


def _training(records: list[dict[str, Any]]) -> dict[str, Any]:
    tested = [r for r in records if r.get("test_top1") is not None]
    out: dict[str, Any] = {"epochs_logged": len(records)}
    if tested:
        best = max(tested, key=lambda r: r["test_top1"])
        out.update(final_epoch=tested[-1]["epoch"], final_top1=tested[-1]["test_top1"],
                   best_top1=best["test_top1"], best_epoch=best["epoch"])
    return out


# -- markdown ---------------------------------------------------------------------------------------


def _fmt(x: Any, digits: int = 3, pct: bool = False) -> str:
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    if pct:
        return f"{100 * x:.{max(digits - 2, 1)}f}%"
    return f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _weights_table(layers: dict[str, dict[str, Any]]) -> str:
    rows = [[f"`{n}`", str(s["numel"]), _fmt(s["tau"], 4), _fmt(s["clamped_share"], 3, pct=True),
             _fmt(s["clamped_share_laplace"], 3, pct=True), _fmt(s["kurtosis"]), _fmt(s["tail_mass_3sigma"], 2, pct=True),
             _fmt(s["ks_laplace"]), _fmt(s["ks_gaussian"]), s["better_fit"], _fmt(s["binary_entropy_bits"])]
            for n, s in layers.items()]
    return _table(["layer", "weights", "tau", "clamped", "Laplace 2(1-tau)", "kurtosis", "tail >3 sd",
                   "KS Laplace", "KS Gauss", "better fit", "binary entropy (bits)"], rows)


def _pooled_table(snapshots: dict[str, dict[str, Any]]) -> str:
    rows = [[stage, str(s["epoch"]), _fmt(s["pooled"]["kurtosis"]), _fmt(s["pooled"]["tail_mass_3sigma"], 2, pct=True),
             _fmt(s["pooled"]["ks_laplace"]), _fmt(s["pooled"]["ks_gaussian"]), s["pooled"]["better_fit"],
             _fmt(s["pooled"]["latent_entropy"])]
            for stage, s in snapshots.items()]
    return _table(["stage", "after epoch", "kurtosis", "tail >3 sd", "KS Laplace", "KS Gauss", "better fit",
                   "entropy of W1/sd (nats)"], rows)


_READING = """Reading the numbers: epochs are the 0-based indices of metrics.jsonl. Flips are counted between consecutive epoch ends (a weight that flips and
flips back within one epoch is not seen). Buckets are equal-count buckets of |W1|/sigma (sigma = the
filter's std) at the previous epoch, bucket 1 the smallest magnitudes. Kurtosis is 3 for a Gaussian and 6
for a Laplace; tail mass beyond 3 sd is 0.27% (Gaussian) or 1.44% (Laplace). The entropy of W1/sd is
1.419 nats for a Gaussian and 1.347 for a Laplace."""


def _run_markdown(run: RunData, numbers: dict[str, Any], figures: list[str]) -> str:
    md = [f"# ReCU run report: `{run.run_dir.name}`", ""]
    cfg = run.config
    facts = [("source", f"`{run.run_dir}`")]
    for key in ("model", "dataset", "epochs", "tau_schedule", "tau_start", "tau_end", "seed"):
        if key in cfg:
            facts.append((key, str(cfg[key])))
    tr = numbers["training"]
    if "final_top1" in tr:
        facts.append(("final test top-1", f"{tr['final_top1']:.2f}% (epoch index {tr['final_epoch']})"))
        facts.append(("best test top-1",
                      f"{tr['best_top1']:.2f}% (epoch index {tr['best_epoch']}; picked on the test set, so optimistic)"))
    md += [f"- {k}: {v}" for k, v in facts] + [""]

    mon = numbers.get("monitor_final")
    if mon:
        total = mon["total"]
        bt = numbers["buckets_all_epochs"]
        md += ["## Dead weights", "",
               f"Monitored epochs {numbers['series']['epoch'][0]}..{numbers['series']['epoch'][-1]} "
               f"({len(numbers['series']['epoch'])} records). At the last one:", "",
               f"- sign-flip ratio: {_fmt(total['flip_ratio'], 3, pct=True)} of {total['numel']:,} binary weights",
               *[f"- never flipped {'since monitoring began' if k == 'start' else f'after epoch {k}'}: "
                 f"{_fmt(v, 4, pct=True)}" for k, v in total["never_flipped"].items()],
               f"- clamped beyond +-Q: {_fmt(total['clamped_share'], 3, pct=True)}", "",
               "Flips by |W1|/sigma bucket, all layers and epochs (bucket 1 = smallest magnitudes):", "",
               _table(["bucket"] + [str(i + 1) for i in range(len(bt["flips"]))],
                      [["flips"] + [str(f) for f in bt["flips"]],
                       ["flip ratio"] + [_fmt(r, 2, pct=True) for r in bt["flip_ratio"]]]), ""]
        rows = []
        for name, s in mon["layers"].items():
            rows.append([f"`{name}`", str(s["numel"]), _fmt(s["tau"], 4), _fmt(s["flip_ratio"], 3, pct=True),
                         _fmt(s["never_flipped"].get("start"), 4, pct=True), _fmt(s["clamped_share"], 3, pct=True),
                         _fmt(s["clamped_share_laplace"], 3, pct=True), _fmt(s["b_hat"]), _fmt(s["kurtosis"]),
                         _fmt(s["ks_laplace"]), _fmt(s["ks_gaussian"]), _fmt(s["binary_entropy_bits"])])
        md += [f"Per layer at epoch {mon['epoch']}:", "",
               _table(["layer", "weights", "tau", "flips", "never flipped", "clamped", "Laplace 2(1-tau)", "b_hat",
                       "kurtosis", "KS Laplace", "KS Gauss", "binary entropy (bits)"], rows), ""]
    else:
        md += ["No DeadWeightMonitor records in metrics.jsonl (was the monitor enabled?).", ""]

    snaps = numbers.get("snapshots") or {}
    if snaps:
        md += ["## Weight distributions", "", "All binary layers pooled, each scaled to unit std:", "",
               _pooled_table(snaps), ""]
        last = list(snaps)[-1]
        md += [f"Per layer at `{last}`:", "", _weights_table(snaps[last]["layers"]), ""]
    if figures:
        md += ["## Figures", ""] + [f"![{Path(f).stem}]({f})\n" for f in figures]
    md += ["## Notes", "", _READING, ""]
    return "\n".join(md)


# -- entry points -----------------------------------------------------------------------------------


def _write(out: Path, numbers: dict[str, Any], markdown: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "numbers.json").write_text(json.dumps(numbers, indent=1, allow_nan=False) + "\n")
    (out / "summary.md").write_text(markdown)


def _stage_weights(run: RunData) -> dict[str, dict[str, Tensor]]:
    if not run.snapshots and (run.run_dir / "last.pt").is_file():
        # no monitor snapshots (monitor off): the last checkpoint still shows the final weights
        weights, taus, ckpt = load_checkpoint_weights(run.run_dir / "last.pt")
        run.snapshots["last.pt"] = {"weights": weights, "tau": taus, "file": "last.pt",
                                    "epoch": ckpt.get("epoch") if isinstance(ckpt.get("epoch"), int) else None}
    order = [s for s in _STAGE_ORDER if s in run.snapshots] + [s for s in run.snapshots if s not in _STAGE_ORDER]
    return {s: run.snapshots[s]["weights"] for s in order}


def analyze_run(run_dir: PathLike, out_dir: PathLike) -> Path:
    """Report of a run directory (see the module docstring)."""
    run = load_run(run_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    numbers: dict[str, Any] = {"source": str(run.run_dir), "mode": "run", "training": _training(run.records)}
    figures: list[Path] = []
    if run.monitor:
        numbers["monitor_final"] = run.monitor[-1]
        numbers["series"] = _series(run.monitor)
        numbers["buckets_all_epochs"] = _bucket_totals(run.monitor)
        figures += [P.plot_flip_ratio(run.monitor, out / "flip_ratio.png"),
                    P.plot_flips_by_bucket(run.monitor, out / "flips_by_bucket.png"),
                    P.plot_never_flipped(run.monitor, out / "never_flipped.png"),
                    P.plot_clamped_share(run.monitor, out / "clamped_share.png"),
                    P.plot_distribution_fit(run.monitor, out / "distribution_fit.png")]
    stages = _stage_weights(run)
    if stages:
        numbers["snapshots"] = {s: _snapshot_numbers(run.snapshots[s]) for s in stages}
        figures += [P.plot_pooled_histograms(stages, out / "weights_hist.png"),
                    P.plot_layer_histograms(stages, out / "weights_hist_layers.png")]
    training = P.plot_training(run.records, out / "training.png")
    if training is not None:
        figures.append(training)
    names = [f.name for f in figures]
    numbers["figures"] = names
    _write(out, numbers, _run_markdown(run, numbers, names))
    return out


def analyze_checkpoint(path: PathLike, out_dir: PathLike) -> Path:
    """Report of a single checkpoint: weight statistics of every binary layer in its state_dict."""
    path = Path(path)
    weights, taus, ckpt = load_checkpoint_weights(path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    layers = {n: weight_statistics(w, taus[n]) for n, w in weights.items()}
    numbers: dict[str, Any] = {
        "source": str(path),
        "mode": "checkpoint",
        "epoch": ckpt.get("epoch") if isinstance(ckpt.get("epoch"), int) else None,
        "model": (ckpt.get("model_spec") or {}).get("name"),
        "pooled": _pooled(weights),
        "layers": layers,
    }
    figures = [P.plot_pooled_histograms({"checkpoint": weights}, out / "weights_hist.png"),
               P.plot_layer_histograms({"checkpoint": weights}, out / "weights_hist_layers.png")]
    names = [f.name for f in figures]
    numbers["figures"] = names
    pooled = numbers["pooled"]
    md = [f"# ReCU checkpoint report: `{path.name}`", "",
          f"- source: `{path}`",
          f"- model: {numbers['model'] or 'unknown'}; epoch: {numbers['epoch'] if numbers['epoch'] is not None else '-'}",
          f"- binary layers: {len(layers)}, {sum(s['numel'] for s in layers.values()):,} weights", "",
          "## Weight statistics", "",
          f"All binary layers pooled (unit std each): kurtosis {_fmt(pooled['kurtosis'])}, tail beyond 3 sd "
          f"{_fmt(pooled['tail_mass_3sigma'], 2, pct=True)}, KS Laplace {_fmt(pooled['ks_laplace'])} vs Gaussian "
          f"{_fmt(pooled['ks_gaussian'])}: closer to {pooled['better_fit']}.", "",
          _weights_table(layers), "",
          "## Figures", "", *[f"![{Path(f).stem}]({f})\n" for f in names],
          "## Notes", "", _READING, ""]
    _write(out, numbers, "\n".join(md))
    return out
