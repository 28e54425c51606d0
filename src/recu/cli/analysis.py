"""``recu figures``, ``recu analyze`` and ``recu ablate``: parse arguments, call :mod:`recu.analysis`, nothing more."""

from __future__ import annotations

import argparse
from pathlib import Path


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

    b = sub.add_parser("ablate", help="train named variants of a recipe over seeds; table and convergence plot",
                       description="Train every variant x seed into OUT/<variant>_s<seed> (finished runs are "
                                   "skipped, interrupted ones resumed) and write OUT/ablation.md, ablation.json, "
                                   "convergence.png and flips_by_bucket.png. --collect DIR only tabulates "
                                   "existing runs; --list shows the variants.")
    mode = b.add_mutually_exclusive_group(required=True)
    mode.add_argument("-c", "--config", help="the recipe YAML every variant starts from")
    mode.add_argument("--collect", metavar="DIR", help="tabulate the finished runs in DIR, train nothing")
    mode.add_argument("--list", action="store_true", help="print the variants, their overrides and the groups")
    b.add_argument("--variants", nargs="+", default=["headline"], metavar="NAME",
                   help="variant or group names (default: headline = recu tau1 mask clamp_ste)")
    b.add_argument("--seeds", nargs="+", type=int, default=[0], metavar="SEED", help="default: 0")
    b.add_argument("--epochs", type=int, help="training budget of every run (default: the recipe's)")
    b.add_argument("-o", "--out", help="ablation folder (default: ./ablation; with --collect: DIR)")
    b.add_argument("--set", dest="overrides", action="append", default=[], nargs="+", metavar="KEY=VALUE",
                   help="config overrides for every run, applied before the variant's (e.g. data_dir=...)")
    b.add_argument("--pattern", help="with --collect: run-folder names, a template such as "
                                     "'r20_{variant}_e10_s{seed}' or a regex with (?P<variant>...) and "
                                     "(?P<seed>...) groups (default: {variant}_s{seed})")
    b.add_argument("--dry-run", action="store_true", help="print what would be trained, resumed or skipped")
    b.add_argument("--no-resume", action="store_true", help="refuse to touch existing runs instead of continuing them")
    b.set_defaults(func=_ablate)


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


def _ablate(args: argparse.Namespace) -> int:
    from ..analysis import ablate as A

    if args.list:
        print(A.format_variants())
        return 0
    if args.collect:
        result = A.collect(args.collect, pattern=args.pattern)
        out = args.out or args.collect
        paths = A.write_outputs(result, out)
        if result.incomplete:
            print(f"left out (not finished): {', '.join(result.incomplete)}")
    else:
        if args.pattern:
            raise ValueError("--pattern goes with --collect")
        overrides = [item for group in args.overrides for item in group]
        out = args.out or "ablation"
        if args.dry_run:
            plan = A.plan_ablation(args.config, args.variants, args.seeds, out, args.epochs, overrides)
            for p in plan:
                print(f"{p.action:<6} {p.run_dir}")
            return 0
        A.run_ablation(args.config, args.variants, args.seeds, args.epochs, out, overrides,
                       resume=not args.no_resume)
        names = ("ablation.md", "ablation.json", "convergence.png", "flips_by_bucket.png")
        paths = [p for p in (Path(out) / n for n in names) if p.exists()]
    for path in paths:
        print(path)
    return 0
