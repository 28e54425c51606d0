"""``recu figures``, ``analyze``, ``ablate`` and ``claims``: parse arguments, call :mod:`recu.analysis`, nothing more."""

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

    c = sub.add_parser("claims", help="the 100-epoch claims (ReCU vs tau = 1, convergence) and centring vs standardisation "
                            "from their run folders: report.md and curves.png",
                       description="Read RUNS/r20_{recu,tau1}_full_e100_s<seed>, r20_fp_full_e100_s0 and "
                                   "r20_{recu,center_only,standardize_only,neither}_full_e30_s<seed> and write "
                                   "OUT/report.md (claim 6: ReCU - tau = 1 at 100 epochs; convergence over epochs "
                                   "30-70; centring vs standardisation at 30 epochs; the float twin; paired by seed "
                                   "with t and exact Wilcoxon tests) and OUT/curves.png; print the report. "
                                   "Missing and unfinished runs are listed with their epochs, not used.")
    c.add_argument("--runs", default="docs/runs", help="folder holding the run folders (default: docs/runs)")
    c.add_argument("-o", "--out", default="docs/reports/claims100",
                   help="report folder (default: docs/reports/claims100)")
    c.set_defaults(func=_claims)


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


def _claims(args: argparse.Namespace) -> int:
    from ..analysis.claims import write_report

    text, paths = write_report(args.runs, args.out)
    print(text)
    for path in paths:
        print(path)
    return 0
