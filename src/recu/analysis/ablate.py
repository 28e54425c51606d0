"""``recu ablate``: named variants of one recipe, trained for several seeds, tabulated and plotted.

A variant is a list of ``key=value`` config overrides applied on top of the recipe (the same
strings ``recu train --set`` takes), so an ablation is nothing but a set of ordinary runs:
``out_dir/<variant>_s<seed>``, each a normal run directory. :func:`run_ablation` trains what is
missing (finished runs are skipped, interrupted ones resumed from ``last.pt``) and then calls
:func:`collect`, which only reads run directories, so runs made elsewhere (e.g. by
``scripts/cifar10_short_budget.sh``) can be tabulated too. :func:`write_outputs` writes
``ablation.md``, ``ablation.json``, ``convergence.png`` and ``flips_by_bucket.png``.

Accuracies are the test top-1 of the last epoch ("final", what the method document asks to
report) and the best test epoch ("best", what the paper reports; it selects on the test set).
std is the sample standard deviation (n - 1) over seeds; with one seed it is undefined ("-").
"""

from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence, Union

if TYPE_CHECKING:
    from ..train import TrainConfig

__all__ = [
    "Variant", "VARIANTS", "GROUPS", "resolve_variants", "fp_twin", "variant_config", "PlannedRun",
    "plan_ablation", "run_ablation", "RunResult", "VariantResult", "AblationResult", "collect",
    "write_outputs", "format_variants", "mean_std", "read_run_curve",
]

PathLike = Union[str, Path]


@dataclass(frozen=True)
class Variant:
    """A named change of the recipe: config overrides, or (``fp``) the model's full-precision twin."""

    name: str
    overrides: tuple[str, ...]
    question: str
    full_precision: bool = False


def _v(name: str, question: str, *overrides: str, fp: bool = False) -> Variant:
    return Variant(name, tuple(overrides), question, fp)


_Q3 = "Q3 (is ReCU only gradient masking?)"
_Q4 = "Q4 (tau_e = 0.99 barely clamps: when does the clamp matter?)"
_Q5 = "Q5 (centring vs standardisation)"
_BSTAR = "paper Table b* ablation (b* acts like a learning-rate multiplier)"

VARIANTS: dict[str, Variant] = {v.name: v for v in [
    _v("recu", "the recipe itself (ReCU, the reference every variant is compared with)"),
    _v("tau1", f"{_Q3}: tau = 1 throughout, the clamp never acts (the no-ReCU baseline)",
       "tau_schedule=constant", "tau_start=1.0"),
    _v("mask", f"{_Q3}: identity forward, gradient zeroed beyond +-Q", "binary.clamp=mask"),
    _v("clamp_ste", f"{_Q3}: clamp forward, gradient passes the clamp", "binary.clamp=clamp_ste"),
    _v("no_clamp", f"{_Q3}: clamp removed from the layer (tau still scheduled, no effect)", "binary.clamp=none"),
    _v("center_only", f"{_Q5}: centre each filter, no standardisation to b*", "binary.standardize=false"),
    _v("standardize_only", f"{_Q5}: standardise each filter, no centring", "binary.center=false"),
    _v("neither", f"{_Q5}: neither centring nor standardisation", "binary.center=false",
       "binary.standardize=false"),
    _v("bstar_0.2", f"{_BSTAR}: b* = 0.2", "binary.b_star=0.2"),
    _v("bstar_0.71", f"{_BSTAR}: b* = sqrt(2)/2", f"binary.b_star={math.sqrt(2) / 2!r}"),
    _v("bstar_1", f"{_BSTAR}: b* = 1", "binary.b_star=1.0"),
    _v("bstar_2", f"{_BSTAR}: b* = 2 (the default: same config as recu unless the recipe changes b*)",
       "binary.b_star=2.0"),
    _v("bstar_5", f"{_BSTAR}: b* = 5", "binary.b_star=5.0"),
    _v("tau_end_0.94", f"{_Q4}: ramp to tau_e = 0.94 (clamps ~12% at the end)", "tau_end=0.94"),
    _v("tau_end_0.99", f"{_Q4}: ramp to tau_e = 0.99 (the default)", "tau_end=0.99"),
    _v("tau_end_1.0", f"{_Q4}: ramp to tau_e = 1.0 (no clamp at the end)", "tau_end=1.0"),
    _v("linear", f"{_Q4}: linear instead of exponential tau ramp", "tau_schedule=linear"),
    _v("switch_off_0.5", f"{_Q4}: clamp switched off (tau = 1) after 50% of training", "tau_switch_off=0.5"),
    _v("switch_off_0.75", f"{_Q4}: clamp switched off after 75% of training", "tau_switch_off=0.75"),
    _v("switch_off_0.85", f"{_Q4}: clamp switched off after 85% of training", "tau_switch_off=0.85"),
    _v("analytic", f"{_Q3}: analytic scale alpha = E|ReCU(W)| (Eq. 13), so the clamp also acts in forward",
       "binary.scale=analytic"),
    _v("analytic_mask", f"{_Q3}: analytic scale with mask only", "binary.scale=analytic", "binary.clamp=mask"),
    _v("analytic_clamp_ste", f"{_Q3}: analytic scale with clamp + straight-through",
       "binary.scale=analytic", "binary.clamp=clamp_ste"),
    _v("analytic_tau1", f"{_Q3}: analytic scale, tau = 1 throughout", "binary.scale=analytic",
       "tau_schedule=constant", "tau_start=1.0"),
    _v("fp", "full-precision twin of the recipe's model (upper bound)", fp=True),
]}

GROUPS: dict[str, tuple[str, ...]] = {
    "headline": ("recu", "tau1", "mask", "clamp_ste"),
    "clamp": ("recu", "tau1", "mask", "clamp_ste", "no_clamp"),
    "centering": ("recu", "center_only", "standardize_only", "neither"),
    "bstar": ("bstar_0.2", "bstar_0.71", "bstar_1", "bstar_2", "bstar_5"),
    "tau_end": ("tau_end_0.94", "tau_end_0.99", "tau_end_1.0"),
    "schedule": ("recu", "linear", "switch_off_0.5", "switch_off_0.75", "switch_off_0.85"),
    "analytic": ("analytic", "analytic_mask", "analytic_clamp_ste", "analytic_tau1"),
    "all": tuple(VARIANTS),
}

# Config fields that do not change what is trained: they may differ between a run and its resumption.
_RUN_ONLY_KEYS = frozenset({"name", "out_dir", "data_dir", "download", "workers", "device", "progress",
                            "tensorboard", "compile", "channels_last", "eval_batch_size"})
_RESERVED = ("name", "out_dir", "seed")


def resolve_variants(names: Sequence[str]) -> list[str]:
    """Expand group names (``headline``, ``all``, ...) and check every name; order kept, duplicates dropped."""
    out: list[str] = []
    for name in names:
        expanded = GROUPS.get(name, (name,))
        for v in expanded:
            if v not in VARIANTS:
                raise ValueError(f"unknown variant {v!r}; known variants: {', '.join(VARIANTS)}; "
                                 f"groups: {', '.join(GROUPS)}")
            if v not in out:
                out.append(v)
    if not out:
        raise ValueError("no variants given")
    return out


def fp_twin(model: str) -> str:
    """The full-precision model of a binary one: ``resnet20_1w1a`` -> ``resnet20_fp``."""
    from ..models import available

    known = available()
    candidates = [model.replace("_1w1a", "_fp")] if "_1w1a" in model else []
    candidates.append(f"{model}_fp")
    for c in candidates:
        if c != model and c in known:
            return c
    if model.endswith("_fp") or "_fp_" in model:
        return model
    raise ValueError(f"model {model!r} has no full-precision twin among {known}")


def variant_config(recipe: PathLike, variant: str, seed: int, out_dir: PathLike, epochs: Optional[int] = None,
                   extra_overrides: Sequence[str] = ()) -> "TrainConfig":
    """The config of one run: recipe, then ``extra_overrides``, then the variant, then epochs/seed/name.

    Checks that every override of the variant really holds in the result (and that the binary
    options form a valid :class:`recu.BinaryConfig`), so a misspelt key fails before training.
    """
    from ..nn import BinaryConfig, preset
    from ..train import TrainConfig
    from ..train.config import parse_override

    if variant not in VARIANTS:
        resolve_variants([variant])  # raises the listing error
    for item in extra_overrides:
        key = parse_override(item)[0]
        if key in _RESERVED:
            raise ValueError(f"--set {key}=... is decided by the ablation (seeds, out_dir, <variant>_s<seed>)")
    v = VARIANTS[variant]
    overrides = list(extra_overrides) + list(v.overrides)
    if v.full_precision:
        base = TrainConfig.from_yaml(recipe, overrides)
        overrides.append(f"model={fp_twin(base.model)}")
    if epochs is not None:
        overrides.append(f"epochs={int(epochs)}")
    overrides += [f"seed={int(seed)}", f"out_dir={Path(out_dir)}", f"name={variant}_s{int(seed)}"]
    cfg = TrainConfig.from_yaml(recipe, overrides)
    binary_fields = set(BinaryConfig.__dataclass_fields__)
    for item in v.overrides:
        key, value = parse_override(item)
        head, _, sub = key.partition(".")
        if sub:
            if head != "binary" or sub not in binary_fields:
                raise ValueError(f"variant {variant}: {key} is not a BinaryConfig field ({sorted(binary_fields)})")
            got = cfg.binary.get(sub)
        else:
            got = getattr(cfg, key)
        if got != value:
            raise ValueError(f"variant {variant}: override {item} did not take effect (config has {got!r})")
    try:
        preset(cfg.preset, **cfg.binary)
    except TypeError as e:
        raise ValueError(f"variant {variant}: invalid binary options {cfg.binary}: {e}") from None
    return cfg


# -- planning and training ----------------------------------------------------------------------


@dataclass
class PlannedRun:
    """One (variant, seed) run: its config and what :func:`run_ablation` will do with it."""

    variant: str
    seed: int
    config: "TrainConfig"
    action: str  # "train", "resume" or "skip"

    @property
    def run_dir(self) -> Path:
        return self.config.run_dir


def _run_state(cfg: "TrainConfig") -> str:
    from ..train.log import read_metrics

    run_dir = cfg.run_dir
    records = read_metrics(run_dir / "metrics.jsonl")
    if records and len(records) >= cfg.epochs and records[-1].get("epoch") == cfg.epochs - 1:
        return "skip"
    if (run_dir / "last.pt").exists():
        return "resume"
    if records:
        raise ValueError(f"{run_dir} has metrics.jsonl but no last.pt: cannot resume it; delete the folder to retrain")
    return "train"


def _check_same_recipe(cfg: "TrainConfig") -> None:
    """Refuse to resume or reuse a run directory trained with a different config."""
    import yaml

    path = cfg.run_dir / "config.yaml"
    if not path.is_file():
        return
    saved = yaml.safe_load(path.read_text()) or {}
    planned = cfg.to_dict()
    differ = sorted(k for k in set(saved) | set(planned)
                    if k not in _RUN_ONLY_KEYS and saved.get(k) != planned.get(k))
    if differ:
        details = ", ".join(f"{k}: run has {saved.get(k)!r}, ablation wants {planned.get(k)!r}" for k in differ)
        raise ValueError(f"{cfg.run_dir} was trained with another config ({details}); "
                         "use another --out or delete the run")


def plan_ablation(recipe: PathLike, variants: Sequence[str], seeds: Sequence[int], out_dir: PathLike,
                  epochs: Optional[int] = None, extra_overrides: Sequence[str] = ()) -> list[PlannedRun]:
    """Every (variant, seed) config, validated, with the action a resumed ablation takes for it."""
    names = resolve_variants(variants)
    if not seeds:
        raise ValueError("no seeds given")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {list(seeds)}")
    plan = []
    for name in names:
        for seed in seeds:
            cfg = variant_config(recipe, name, int(seed), out_dir, epochs, extra_overrides)
            _check_same_recipe(cfg)
            plan.append(PlannedRun(name, int(seed), cfg, _run_state(cfg)))
    return plan


def run_ablation(config: Union[PathLike, "TrainConfig"], variants: Sequence[str], seeds: Sequence[int],
                 epochs: Optional[int] = None, out_dir: PathLike = "ablation", extra_overrides: Sequence[str] = (),
                 resume: bool = True) -> "AblationResult":
    """Train every variant x seed into ``out_dir/<variant>_s<seed>`` and write the outputs.

    ``config`` is a recipe YAML file or a :class:`TrainConfig` (saved as ``out_dir/recipe.yaml``).
    With ``resume`` (default) finished runs are skipped and interrupted ones continued from
    ``last.pt``; without it, any existing run is an error (nothing is overwritten). Runs go one
    after another in this process; an exception stops the ablation, and calling again continues it.
    """
    from ..train import TrainConfig, train

    out = Path(out_dir)
    if isinstance(config, TrainConfig):
        out.mkdir(parents=True, exist_ok=True)
        recipe: Path = out / "recipe.yaml"
        config.to_yaml(recipe)
    else:
        recipe = Path(config)
    plan = plan_ablation(recipe, variants, seeds, out, epochs, extra_overrides)
    if not resume:
        existing = [str(p.run_dir) for p in plan if p.action != "train"]
        if existing:
            raise ValueError(f"runs already exist (pass resume=True / drop --no-resume to continue them): {existing}")
    for i, p in enumerate(plan, 1):
        if p.action == "skip":
            continue
        print(f"[ablate {i}/{len(plan)}] {p.action} {p.run_dir}", flush=True)
        train(p.config, resume=p.action == "resume")
    mapping = {p.run_dir: (p.variant, p.seed) for p in plan}
    result = collect(out, mapping=mapping)
    result.meta = {"recipe": str(recipe), "extra_overrides": list(extra_overrides), "epochs": epochs,
                   "seeds": [int(x) for x in seeds]}
    write_outputs(result, out)
    return result


# -- collecting results -----------------------------------------------------------------------


@dataclass
class RunResult:
    """The numbers of one finished run."""

    variant: str
    seed: int
    run_dir: Path
    epochs: int
    final_top1: float
    best_top1: float
    best_epoch: int
    curve: list[Optional[float]]  # test_top1 per epoch (None where not evaluated)
    dead_weight: Optional[dict[str, Any]]  # last epoch: flip_ratio, never_flipped, clamped_share, bucket_flip_ratio


@dataclass
class VariantResult:
    """All seeds of one variant and their summary statistics."""

    name: str
    runs: list[RunResult]
    overrides: Optional[tuple[str, ...]] = None

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]

    def stat(self, key: str) -> tuple[float, Optional[float]]:
        """(mean, sample std or None for one seed) of a per-run number."""
        return mean_std([getattr(r, key) for r in self.runs])

    def dead_weight_stat(self, key: str) -> tuple[Optional[float], Optional[float]]:
        values = [r.dead_weight[key] for r in self.runs if r.dead_weight and r.dead_weight.get(key) is not None]
        return mean_std(values) if values else (None, None)


@dataclass
class AblationResult:
    variants: list[VariantResult]
    incomplete: list[str] = field(default_factory=list)  # run dirs matched but not finished
    ignored: list[str] = field(default_factory=list)  # run dirs whose name the pattern does not match
    meta: dict[str, Any] = field(default_factory=dict)  # recipe, extra overrides, epochs (run_ablation)

    def __getitem__(self, name: str) -> VariantResult:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(f"no variant {name!r}; have {[v.name for v in self.variants]}")

    def to_dict(self) -> dict[str, Any]:
        return _result_dict(self)


def mean_std(values: Sequence[float]) -> tuple[float, Optional[float]]:
    """Mean and sample standard deviation (n - 1); std is None for a single value."""
    if not values:
        raise ValueError("mean_std of no values")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _name_matcher(pattern: Optional[str]) -> re.Pattern[str]:
    """A template with ``{variant}``/``{seed}`` (e.g. ``r20_{variant}_e10_s{seed}``) or a regex with
    named groups ``variant`` (and optionally ``seed``). Default: ``{variant}_s{seed}``."""
    pattern = pattern or "{variant}_s{seed}"
    if "{variant}" in pattern:
        parts = re.split(r"(\{variant\}|\{seed\})", pattern)
        body = "".join("(?P<variant>.+?)" if p == "{variant}" else "(?P<seed>\\d+)" if p == "{seed}"
                       else re.escape(p) for p in parts)
        return re.compile(body)
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"pattern {pattern!r} is neither a {{variant}} template nor a valid regex: {e}") from None
    if "variant" not in compiled.groupindex:
        raise ValueError(f"pattern {pattern!r} needs {{variant}} (template) or a (?P<variant>...) group (regex)")
    return compiled


def read_run_curve(run_dir: PathLike) -> tuple[list[dict[str, Any]], dict[str, Any], list[Optional[float]]]:
    """A run folder's metrics records, its ``config.yaml`` (``{}`` without one) and its test top-1 curve.

    The curve has one entry per planned epoch (the config's ``epochs``, else the number of records),
    index = 0-based epoch; None where the epoch was not evaluated or not reached yet; where a resumed
    run logged an epoch twice the last record wins.
    """
    import yaml

    from ..train.log import read_metrics

    run_dir = Path(run_dir)
    records = read_metrics(run_dir / "metrics.jsonl")
    config_path = run_dir / "config.yaml"
    config = (yaml.safe_load(config_path.read_text()) or {}) if config_path.is_file() else {}
    epochs = int(config.get("epochs", len(records)))
    curve: list[Optional[float]] = [None] * epochs
    for r in records:
        if 0 <= int(r.get("epoch", -1)) < epochs and r.get("test_top1") is not None:
            curve[int(r["epoch"])] = float(r["test_top1"])
    return records, config, curve


def _read_run(run_dir: Path, variant: str, seed: int) -> Optional[RunResult]:
    """The run's numbers, or None when it is not finished (fewer records than its config's epochs)."""
    from .rundata import find_monitor

    records, _, curve = read_run_curve(run_dir)
    epochs = len(curve)
    if not records or records[-1].get("epoch") != epochs - 1 or records[-1].get("test_top1") is None:
        return None
    evaluated = [(acc, e) for e, acc in enumerate(curve) if acc is not None]
    best, best_epoch = max(evaluated, key=lambda t: (t[0], -t[1]))
    dead = None
    mon = find_monitor(records[-1])
    if mon is not None and isinstance(mon.get("total"), dict):
        total = mon["total"]
        never = total.get("never_flipped") or {}
        dead = {"flip_ratio": total.get("flip_ratio"), "never_flipped": never.get("start"),
                "clamped_share": total.get("clamped_share"), "bucket_flip_ratio": total.get("bucket_flip_ratio")}
    return RunResult(variant, seed, run_dir, epochs, float(records[-1]["test_top1"]), best, best_epoch, curve, dead)


def collect(out_dir: PathLike, pattern: Optional[str] = None,
            mapping: Optional[Mapping[PathLike, tuple[str, int]]] = None) -> AblationResult:
    """Build the result from existing run directories, training nothing.

    ``mapping`` names the runs explicitly (run dir -> (variant, seed); relative dirs are taken
    inside ``out_dir``). Otherwise every sub-folder of ``out_dir`` holding a ``metrics.jsonl`` is
    matched against ``pattern`` (see :func:`_name_matcher`; a regex without a ``seed`` group
    gives seed 0). Unfinished runs are left out of the table and listed in ``incomplete``.
    """
    out = Path(out_dir)
    if not out.is_dir():
        raise FileNotFoundError(f"{out} does not exist")
    ignored: list[str] = []
    if mapping is not None:
        named = [((Path(d) if Path(d).is_absolute() else out / d), str(v), int(s)) for d, (v, s) in mapping.items()]
    else:
        matcher = _name_matcher(pattern)
        named = []
        for d in sorted(p for p in out.iterdir() if (p / "metrics.jsonl").is_file()):
            m = matcher.fullmatch(d.name)
            if m is None:
                ignored.append(str(d))
                continue
            named.append((d, m.group("variant"), int(m.group("seed")) if "seed" in m.groupdict() else 0))
    by_variant: dict[str, list[RunResult]] = {}
    incomplete: list[str] = []
    for d, variant, seed in named:
        run = _read_run(d, variant, seed)
        if run is None:
            incomplete.append(str(d))
            continue
        runs = by_variant.setdefault(variant, [])
        if any(r.seed == seed for r in runs):
            raise ValueError(f"variant {variant} seed {seed} appears twice ({d}); narrow the pattern")
        runs.append(run)
    if not by_variant:
        why = f"; unfinished: {incomplete}" if incomplete else ""
        if ignored:
            why += f"; names not matching the pattern: {[Path(p).name for p in ignored]}"
        raise ValueError(f"no finished runs found in {out} (among its sub-folders holding a metrics.jsonl){why}")
    for name, runs in by_variant.items():
        if len({r.epochs for r in runs}) > 1:
            raise ValueError(f"variant {name} mixes budgets {sorted({r.epochs for r in runs})} epochs; "
                             "narrow the pattern to one budget")
        runs.sort(key=lambda r: r.seed)
    order = {n: i for i, n in enumerate(VARIANTS)}
    if mapping is not None:
        first = list(dict.fromkeys(v for _, v, _ in named))
        order = {n: i for i, n in enumerate(first)}
    names = sorted(by_variant, key=lambda n: (order.get(n, len(order)), n))
    variants = [VariantResult(n, by_variant[n], VARIANTS[n].overrides if n in VARIANTS else None) for n in names]
    return AblationResult(variants, incomplete, ignored)


# -- outputs -------------------------------------------------------------------------------------


def _pm(mean: Optional[float], std: Optional[float], digits: int = 2, scale: float = 1.0) -> str:
    if mean is None:
        return "-"
    return f"{mean * scale:.{digits}f} ± " + ("-" if std is None else f"{std * scale:.{digits}f}")


def _curve_stats(v: VariantResult) -> dict[str, list[Optional[float]]]:
    epochs = max(r.epochs for r in v.runs)
    mean, std = [], []
    for e in range(epochs):
        values = [r.curve[e] for r in v.runs if e < len(r.curve) and r.curve[e] is not None]
        m, s = mean_std(values) if values else (None, None)
        mean.append(m)
        std.append(s)
    return {"epoch": list(range(epochs)), "mean": mean, "std": std}


def _bucket_mean(v: VariantResult) -> Optional[list[Optional[float]]]:
    rows = [r.dead_weight["bucket_flip_ratio"] for r in v.runs
            if r.dead_weight and r.dead_weight.get("bucket_flip_ratio")]
    if not rows:
        return None
    out = []
    for column in zip(*rows):
        values = [x for x in column if x is not None]
        out.append(statistics.fmean(values) if values else None)
    return out


def _result_dict(result: AblationResult) -> dict[str, Any]:
    variants = {}
    for v in result.variants:
        entry: dict[str, Any] = {"overrides": list(v.overrides) if v.overrides is not None else None,
                                 "seeds": v.seeds, "epochs": v.runs[0].epochs}
        for key in ("final_top1", "best_top1"):
            m, s = v.stat(key)
            entry[key] = {"mean": m, "std": s, "values": [getattr(r, key) for r in v.runs]}
        entry["best_epoch"] = [r.best_epoch for r in v.runs]
        dead = {}
        for key in ("flip_ratio", "never_flipped", "clamped_share"):
            m, s = v.dead_weight_stat(key)
            if m is not None:
                dead[key] = {"mean": m, "std": s,
                             "values": [r.dead_weight.get(key) if r.dead_weight else None for r in v.runs]}
        buckets = _bucket_mean(v)
        if buckets is not None:
            dead["bucket_flip_ratio_mean"] = buckets
        entry["dead_weight"] = dead or None
        entry["curve"] = _curve_stats(v)
        variants[v.name] = entry
    runs = [{"variant": r.variant, "seed": r.seed, "run_dir": str(r.run_dir), "epochs": r.epochs,
             "final_top1": r.final_top1, "best_top1": r.best_top1, "best_epoch": r.best_epoch,
             "dead_weight": r.dead_weight} for v in result.variants for r in v.runs]
    return {"std": "sample standard deviation (n - 1) over seeds; null for one seed", "meta": result.meta,
            "variants": variants, "runs": runs, "incomplete": result.incomplete, "ignored": result.ignored}


def _markdown(result: AblationResult) -> str:
    lines = ["# Ablation", "",
             "Test top-1 (%) as mean ± sample std over seeds (\"-\": one seed). *final* = last epoch, "
             "*best* = best test epoch (selects on the test set). Dead-weight columns: last epoch, "
             "mean over seeds, all binary layers: flips = share of weights whose sign changed in that epoch, "
             "never flipped = share that never changed sign since the start, clamped = share beyond ±Q.", ""]
    if result.meta:
        extra = " ".join(f"`{o}`" for o in result.meta.get("extra_overrides") or []) or "none"
        lines += [f"Recipe `{result.meta.get('recipe')}`, overrides for every run: {extra}.", ""]
    lines += [
             "| variant | epochs | seeds | final top-1 | best top-1 | flips (%) | never flipped (%) | clamped (%) |",
             "|---|---|---|---|---|---|---|---|"]
    for v in result.variants:
        dead = [_pm(*v.dead_weight_stat(k), digits=3, scale=100.0) for k in
                ("flip_ratio", "never_flipped", "clamped_share")]
        lines.append(f"| {v.name} | {v.runs[0].epochs} | {len(v.runs)} | {_pm(*v.stat('final_top1'))} | "
                     f"{_pm(*v.stat('best_top1'))} | " + " | ".join(dead) + " |")
    lines += ["", "## Variants", "", "| variant | overrides |", "|---|---|"]
    for v in result.variants:
        ov = "(not a known variant)" if v.overrides is None else (
            "model = full-precision twin" if v.name == "fp" else (", ".join(f"`{o}`" for o in v.overrides) or "-"))
        lines.append(f"| {v.name} | {ov} |")
    lines += ["", "## Runs", "", "| variant | seed | final top-1 | best top-1 | best epoch (0-based) | run |",
              "|---|---|---|---|---|---|"]
    for v in result.variants:
        for r in v.runs:
            lines.append(f"| {v.name} | {r.seed} | {r.final_top1:.2f} | {r.best_top1:.2f} | {r.best_epoch} | "
                         f"`{r.run_dir}` |")
    if result.incomplete:
        lines += ["", "Not finished (left out): " + ", ".join(f"`{p}`" for p in result.incomplete)]
    return "\n".join(lines) + "\n"


def _plot_convergence(result: AblationResult, path: Path) -> Path:
    from ._plot import new_figure, save

    fig, axes = new_figure(size=(7.5, 4.5))
    ax = axes[0, 0]
    for v in result.variants:
        c = _curve_stats(v)
        pts = [(e, m, s) for e, m, s in zip(c["epoch"], c["mean"], c["std"]) if m is not None]
        xs = [e + 1 for e, _, _ in pts]
        line, = ax.plot(xs, [m for _, m, _ in pts], marker="." if len(xs) < 30 else None,
                        label=f"{v.name} (n={len(v.runs)})")
        if len(v.runs) > 1:
            ax.fill_between(xs, [m - (s or 0.0) for _, m, s in pts], [m + (s or 0.0) for _, m, s in pts],
                            color=line.get_color(), alpha=0.2, linewidth=0)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("Convergence: mean over seeds, band ± 1 std")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small")
    return save(fig, path)


def _plot_buckets(result: AblationResult, path: Path) -> Optional[Path]:
    rows = [(v.name, b) for v in result.variants if (b := _bucket_mean(v)) is not None]
    if not rows:
        return None
    from ._plot import new_figure, save

    fig, axes = new_figure(size=(7.5, 4.5))
    ax = axes[0, 0]
    for name, b in rows:
        pts = [(i + 1, 100.0 * x) for i, x in enumerate(b) if x is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("magnitude bucket of |W1|/sigma at the previous epoch (1 = smallest)")
    ax.set_ylabel("sign flips in the last epoch (%)")
    ax.set_title("Do large ('dead') weights still flip? Last epoch, mean over seeds")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small")
    return save(fig, path)


def write_outputs(result: AblationResult, out_dir: PathLike) -> list[Path]:
    """Write ``ablation.md``, ``ablation.json``, ``convergence.png`` and (with monitor data) ``flips_by_bucket.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "ablation.md"
    md.write_text(_markdown(result))
    js = out / "ablation.json"
    js.write_text(json.dumps(_result_dict(result), indent=1, default=str) + "\n")
    written = [md, js, _plot_convergence(result, out / "convergence.png")]
    buckets = _plot_buckets(result, out / "flips_by_bucket.png")
    if buckets is not None:
        written.append(buckets)
    return written


def format_variants() -> str:
    """The variant table and the groups, for ``recu ablate --list``."""
    width = max(len(n) for n in VARIANTS)
    lines = []
    for n, v in VARIANTS.items():
        fallback = "model=<the recipe model's _fp twin>" if v.full_precision else "(recipe as is)"
        what = " ".join(v.overrides) or fallback
        lines.append(f"{n:<{width}}  {what}\n{'':<{width}}    {v.question}")
    lines.append("")
    lines += [f"group {g}: {' '.join(vs)}" for g, vs in GROUPS.items() if g != "all"]
    lines.append("group all: every variant")
    return "\n".join(lines)
