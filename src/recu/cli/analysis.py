"""``recu figures`` and ``recu analyze``: parse arguments, call :mod:`recu.analysis`, nothing more."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    f = sub.add_parser("figures", help="regenerate the paper's Figures 3 and 4 (paper and corrected forms)",
                       description="Write fig3_quantization_error.png (quantisation error vs tau: the published "
                                   "Eq. 14 and the corrected form, with Monte Carlo points) and fig4_entropy.png.")
    f.add_argument("-o", "--out", default="figures", help="output folder (default: ./figures)")
    f.add_argument("--samples", type=int, default=400_000, help="Monte Carlo samples for Figure 3")
    f.set_defaults(func=_figures)

    a = sub.add_parser("analyze", help="report on a run directory or a checkpoint (plots, summary.md, numbers.json)",
                       description="Analyse a training run (metrics.jsonl with DeadWeightMonitor records, "
                                   "weights/ snapshots, config.yaml) or a single checkpoint file.")
    a.add_argument("source", metavar="RUN_DIR_OR_CHECKPOINT")
    a.add_argument("-o", "--out", help="report folder (default: RUN_DIR/report, or NAME_report beside a checkpoint)")
    a.set_defaults(func=_analyze)


def _figures(args: argparse.Namespace) -> int:
    from ..analysis.figures import make_figures

    if args.samples < 1000:
        raise ValueError(f"--samples must be at least 1000 for usable Monte Carlo points, got {args.samples}")
    for path in make_figures(args.out, samples=args.samples):
        print(path)
    return 0


def _analyze(args: argparse.Namespace) -> int:
    from ..analysis.report import analyze

    out = analyze(args.source, args.out)
    print(f"report written to {out} (summary.md, numbers.json, PNG plots)")
    return 0
