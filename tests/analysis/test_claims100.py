"""``recu claims`` (issue 22): the paired statistics against closed forms, hand-computed values and (when
installed) scipy; the report on hand-written run folders whose answers are known; the command line."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Optional

import numpy as np
import pytest

from recu.analysis import claims as C
from recu.analysis import paired as P
from recu.cli import main as cli_main

from _markdown import md_row, md_section

# -- the t distribution -----------------------------------------------------------------------------


@pytest.mark.parametrize("t", [-40.0, -2.5, -1.0, -0.1, 0.0, 0.3, 1.0, 4.0, 1e3])
def test_t_cdf_closed_forms_one_and_two_degrees_of_freedom(t: float) -> None:
    assert P.t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, rel=1e-12, abs=1e-15)
    assert P.t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), rel=1e-12, abs=1e-15)
    assert P.t_two_sided_p(t, 2) == pytest.approx(1 - abs(t) / math.sqrt(2 + t * t), rel=1e-11, abs=1e-15)


@pytest.mark.parametrize("q", [0.6, 0.9, 0.975, 0.995])
def test_t_quantile_inverts_the_closed_forms(q: float) -> None:
    assert P.t_quantile(q, 1) == pytest.approx(math.tan(math.pi * (q - 0.5)), rel=1e-10)
    u = 2 * q - 1
    assert P.t_quantile(q, 2) == pytest.approx(math.sqrt(2 * u * u / (1 - u * u)), rel=1e-10)
    assert P.t_quantile(1 - q, 5) == pytest.approx(-P.t_quantile(q, 5), rel=1e-12)
    assert P.t_cdf(P.t_quantile(q, 7.5), 7.5) == pytest.approx(q, rel=1e-12)


@pytest.mark.parametrize("x", [0.001, 0.2, 0.5, 0.77, 0.999])
def test_betainc_closed_forms(x: float) -> None:
    assert P.betainc(3.5, 1.0, x) == pytest.approx(x ** 3.5, rel=1e-12)
    assert P.betainc(1.0, 2.5, x) == pytest.approx(1 - (1 - x) ** 2.5, rel=1e-12)
    assert P.betainc(0.5, 0.5, x) == pytest.approx(2 / math.pi * math.asin(math.sqrt(x)), rel=1e-12)
    assert (P.betainc(2.0, 3.0, 0.0), P.betainc(2.0, 3.0, 1.0)) == (0.0, 1.0)
    with pytest.raises(ValueError):
        P.betainc(1.0, 1.0, 1.5)


# -- the Wilcoxon signed-rank test --------------------------------------------------------------------


def _brute_force_wilcoxon(diffs: list[float]) -> float:
    """Every one of the 2^n sign assignments of the mid-ranks, enumerated."""
    d = [x for x in diffs if x != 0]
    mags = sorted(abs(x) for x in d)
    rank = {m: (mags.index(m) + 1 + len(mags) - mags[::-1].index(m)) / 2 for m in mags}  # mid-rank
    ranks = [rank[abs(x)] for x in d]
    observed = sum(r for r, x in zip(ranks, d) if x > 0)
    sums = [sum(r for r, s in zip(ranks, signs) if s) for signs in itertools.product([0, 1], repeat=len(d))]
    low = sum(s <= observed for s in sums) / len(sums)
    high = sum(s >= observed for s in sums) / len(sums)
    return min(1.0, 2 * min(low, high))


def test_wilcoxon_hand_computed() -> None:
    assert P.wilcoxon_p([1.0, 2.0, 3.0, 4.0]) == (2 / 16, 4)  # only the all-positive assignment reaches W+ = 10
    assert P.wilcoxon_p([-0.5, -1.0, -3.0]) == (2 / 8, 3)
    assert P.wilcoxon_p([0.0, 0.0, 1.0, 2.0, 3.0, 4.0]) == (2 / 16, 4)  # zeros dropped
    assert P.wilcoxon_p([0.0, 0.0]) == (1.0, 0)
    # ties: |d| = 1, 2, 2, 3 -> ranks 1, 2.5, 2.5, 4; W+ = 9 of 10; W+ >= 9 in 2 of 16 assignments
    assert P.wilcoxon_p([2.0, 2.0, 3.0, -1.0]) == (2 * 2 / 16, 4)
    # 81.1 - 80.1 is 0.9999999999999943 in floating point: still a tie with 1.0, and 0.1 + 0.2 - 0.3 is a zero
    assert P.wilcoxon_p([81.1 - 80.1, 1.0, -2.0, 0.1 + 0.2 - 0.3]) == P.wilcoxon_p([1.0, 1.0, -2.0])
    assert P.wilcoxon_p([1.0, -1.0]) == (1.0, 2)


def test_wilcoxon_equals_brute_force_enumeration() -> None:
    rng = np.random.default_rng(3)
    for n in range(1, 11):
        for _ in range(6):
            d = list(rng.integers(-4, 6, size=n) / 2.0)  # many ties and zeros
            assert P.wilcoxon_p(d)[0] == pytest.approx(_brute_force_wilcoxon(d), abs=1e-12), d


def test_paired_statistics_against_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 8, 40):
        for t in (-7.0, -1.3, 0.0, 0.8, 2.2, 30.0):
            assert P.t_cdf(t, df) == pytest.approx(stats.t.cdf(t, df), rel=1e-11, abs=1e-15)
        assert P.t_quantile(0.975, df) == pytest.approx(stats.t.ppf(0.975, df), rel=1e-10)
    rng = np.random.default_rng(0)
    for n in (2, 3, 4, 6, 9, 14, 20):
        a, b = rng.normal(85, 1, n), rng.normal(84.5, 1, n)
        s = P.paired_summary(a, b)
        ref = stats.ttest_rel(a, b)
        assert (s.t, s.t_p) == (pytest.approx(ref.statistic, rel=1e-10), pytest.approx(ref.pvalue, rel=1e-9))
        assert s.wilcoxon_p == pytest.approx(stats.wilcoxon(a - b, method="exact").pvalue, rel=1e-12)
        ci = stats.t.interval(0.95, n - 1, loc=np.mean(a - b), scale=stats.sem(a - b))
        assert s.ci95 == (pytest.approx(ci[0], rel=1e-9), pytest.approx(ci[1], rel=1e-9))


# -- paired_summary, windows, volatility -----------------------------------------------------------------


def test_paired_summary_hand_computed() -> None:
    s = P.paired_summary([11.0, 12.0, 13.0], [10.0, 10.0, 10.0])  # differences 1, 2, 3
    assert (s.n, s.diffs, s.mean) == (3, (1.0, 2.0, 3.0), 2.0)
    assert s.se == pytest.approx(1 / math.sqrt(3))  # sd 1
    assert s.t == pytest.approx(2 * math.sqrt(3))
    assert s.t_p == pytest.approx(1 - 2 * math.sqrt(3) / math.sqrt(14))  # df = 2: 1 - t / sqrt(2 + t^2)
    t975 = math.sqrt(2 * 0.95 ** 2 / (1 - 0.95 ** 2))  # df = 2 closed form, 4.3027
    assert s.ci95 == (pytest.approx(2 - t975 / math.sqrt(3)), pytest.approx(2 + t975 / math.sqrt(3)))
    assert (s.wilcoxon_p, s.wilcoxon_n) == (2 / 8, 3)

    same = P.paired_summary([81.0, 82.5, 79.25, 80.0], [80.0, 81.5, 78.25, 79.0])  # + 1.0 on every pair
    assert (same.mean, same.se, same.ci95, same.t, same.t_p, same.wilcoxon_p) == (1.0, 0.0, (1.0, 1.0), math.inf,
                                                                                  0.0, 2 / 16)
    zero = P.paired_summary([1.0, 2.0], [1.0, 2.0])
    assert (zero.t, zero.t_p, zero.wilcoxon_p, zero.wilcoxon_n) == (0.0, 1.0, 1.0, 0)
    one = P.paired_summary([85.0], [84.0])
    assert (one.n, one.mean, one.se, one.ci95, one.t_p, one.wilcoxon_p) == (1, 1.0, None, None, None, None)
    with pytest.raises(ValueError, match="differ in length"):
        P.paired_summary([1.0, 2.0], [1.0])


def test_window_mean_and_volatility() -> None:
    series = [float(e) for e in range(1, 11)]  # epoch e has value e
    assert P.window_mean(series, 3, 5) == 4.0
    assert P.window_mean(series, 1, 10) == 5.5
    assert P.volatility(series) == 0.0  # constant steps
    assert P.volatility([0.0, 1.0, 3.0, 6.0]) == pytest.approx(1.0)  # steps 1, 2, 3
    assert P.volatility([0.0, 2.0, 0.0, 2.0, 0.0]) == pytest.approx(math.sqrt(16 / 3))  # steps +-2
    with pytest.raises(ValueError, match="ends at epoch 11"):
        P.window_mean(series, 5, 11)
    with pytest.raises(ValueError, match="no value"):
        P.window_mean([1.0, None, 3.0], 1, 3)
    with pytest.raises(ValueError, match="at least 3"):
        P.volatility([1.0, 2.0])


# -- hand-written run folders ------------------------------------------------------------------------


def _write_run(root: Path, name: str, curve: list[float], epochs: Optional[int] = None,
               dtype: str = "float32") -> None:
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"name: {name}\nepochs: {epochs or len(curve)}\n"
                                     f"binary:\n  compute_dtype: {dtype}\n")
    lines = [json.dumps({"epoch": e, "train_loss": 1.0, "test_top1": acc, "images_per_s": 250.0, "epoch_time_s": 200.0})
             for e, acc in enumerate(curve)]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def _tau1_curve(seed: int) -> list[float]:
    """A zig-zag rise; every value a multiple of 0.25, so ReCU = tau1 + 1.0 is exact."""
    return [30.0 + 0.5 * e + 0.25 * seed + (1.0 if e % 2 else 0.0) for e in range(100)]


def _short_curve(final: float) -> list[float]:
    return [final - 0.5 * (29 - e) for e in range(30)]  # last 5: final - 1.0 on average


SHORT_FINAL = {"recu": (85.0, 86.5), "center_only": (82.0, None), "standardize_only": (83.0, 83.5),
               "neither": (80.0, 81.0)}


@pytest.fixture()
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    for seed in (0, 1, 2, 3):
        _write_run(root, f"r20_tau1_full_e100_s{seed}", _tau1_curve(seed))
        _write_run(root, f"r20_recu_full_e100_s{seed}", [x + 1.0 for x in _tau1_curve(seed)])
    _write_run(root, "r20_recu_full_e100_s5", [x + 1.0 for x in _tau1_curve(5)])  # a seed beyond 0-3
    _write_run(root, "r20_tau1_full_e100_s5", _tau1_curve(5)[:50], epochs=100)  # half done
    _write_run(root, "r20_fp_full_e100_s0", [50.0 + 0.4 * e for e in range(100)])  # final 89.6
    for variant, finals in SHORT_FINAL.items():
        for seed, final in enumerate(finals):
            if final is not None:
                _write_run(root, f"r20_{variant}_full_e30_s{seed}", _short_curve(final))
    _write_run(root, "r20_center_only_full_e30_s1", _short_curve(84.0)[:30], epochs=40)  # config disagrees
    return root


def test_known_answers_from_run_folders(runs: Path) -> None:
    c = C.read_claims(runs)
    assert list(c.long["recu"]) == [0, 1, 2, 3, 5]
    s5 = c.long["tau1"][5]
    assert (s5.complete, s5.done, s5.status) == (False, 50, "incomplete, 50 of 100 epochs")
    r0 = c.long["recu"][0]
    assert (r0.final, r0.best) == (81.5, (81.5, 100))  # 30 + 0.5 * 99 + 1 (odd epoch) + 1 (ReCU)
    assert r0.last_mean == pytest.approx((78.5 + 78.0 + 79.5 + 79.0 + 80.5) / 5 + 1.0)
    bad = c.short["center_only"][1]
    assert not bad.complete and "epochs: 40" in bad.status
    assert (bad.done, bad.planned) == (30, 40)

    md = C.render_report(c)
    # claim 6: ReCU = tau1 + 1.0 on the 4 complete pairs; seed 5 is listed but left out
    assert md_row(md, "ReCU - tau = 1, final")[1:8] == ["4", "+1.00", "0.00", "+1.00 to +1.00", "inf", "< 0.001",
                                                      "0.125"]
    assert md_row(md_section(md, "## Claim 6"), "5")[4] == "(incomplete, 50 of 100 epochs)"
    assert "`r20_tau1_full_e100_s5` (incomplete, 50 of 100 epochs)" in md
    assert ("Claim 6: at 100 epochs, 4 seed pairs: ReCU - tau1 (final test top-1) = +1.00 +- 0.00 points (s.e.; "
            "95% CI +1.00 to +1.00, excludes 0), paired t = inf, t p < 0.001, Wilcoxon p = 0.125.") in md
    # convergence: the window mean differs by exactly 1.0, the volatility not at all
    window = np.asarray(_tau1_curve(2)[29:70])
    convergence = md_section(md, "## Convergence")
    assert md_row(convergence, "2")[1:7] == [f"{window.mean() + 1:.2f}", f"{window.mean():.2f}", "+1.00",
                                           f"{np.diff(window).std(ddof=1):.2f}", f"{np.diff(window).std(ddof=1):.2f}",
                                           "+0.00"]
    assert md_row(convergence, "5")[1:3] == ["100/100 epochs", "50/100 epochs"]  # not past epoch 70
    assert md_row(md, "volatility, epochs 30-70")[1:8] == ["4", "+0.00", "0.00", "+0.00 to +0.00", "0.00", "1.000",
                                                         "1.000"]
    # centring at 30 epochs: recu - neither = 5.0, 5.5; center_only has one usable seed
    t, t975 = 5.25 / 0.25, math.tan(math.pi * 0.475)  # df = 1: the Cauchy quantile, 12.706
    ci = f"{5.25 - t975 * 0.25:+.2f} to {5.25 + t975 * 0.25:+.2f}"
    assert md_row(md, "recu - neither")[1:8] == ["2", "+5.25", "0.25", ci, "21.00",
                                               f"{1 - 2 * math.atan(t) / math.pi:.3f}", "0.500"]
    assert md_row(md, "center_only - neither")[1:3] == ["1", "n/a (needs 2 complete pairs)"]
    assert "center_only - neither (final): n/a (needs 2 complete pairs) (seed 0: +2.00)." in md
    assert md_row(md, "standardize_only")[1:5] == ["2 of 2", f"83.25 ± {np.std([83, 83.5], ddof=1):.2f}",
                                                 f"83.25 ± {np.std([83, 83.5], ddof=1):.2f}",
                                                 f"82.25 ± {np.std([83, 83.5], ddof=1):.2f}"]
    assert md_row(md, "standardize_only - recu")[1:3] == ["2", "-2.50"]
    assert "neither - recu" not in md
    # the float twin against seed 0
    twin = md_row(md_section(md, "## Float twin"), "`r20_fp_full_e100_s0`")
    assert twin[1:7] == ["complete", "89.60", "89.60", "88.80", "+8.10", "+9.10"]  # 89.60 - 81.50, - 80.50
    assert "Float twin: at 100 epochs, seed 0: float twin 89.60% against ReCU 81.50% (1-bit gap +8.10 points" in md


def test_too_few_pairs_say_so(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    _write_run(root, "r20_recu_full_e100_s0", [x + 1.0 for x in _tau1_curve(0)])
    _write_run(root, "r20_tau1_full_e100_s0", _tau1_curve(0))
    _write_run(root, "r20_recu_full_e100_s1", _tau1_curve(1)[:80], epochs=100)
    md = C.render_report(C.read_claims(root))
    assert "Claim 6: at 100 epochs: ReCU - tau1 (final test top-1): n/a (needs 2 complete pairs) (seed 0: +1.00)." in md
    assert md_row(md, "ReCU - tau = 1, final")[1:3] == ["1", "n/a (needs 2 complete pairs)"]
    assert "n/a (needs 2 pairs past epoch 70)" in md
    assert md_row(md, "`r20_recu_full_e100_s1`")[1:3] == ["incomplete, 80 of 100 epochs", "80/100"]
    for name, budget in (("r20_tau1_full_e100_s1", 100), ("r20_fp_full_e100_s0", 100), ("r20_neither_full_e30_s1", 30)):
        assert md_row(md, f"`{name}`")[1:3] == ["missing", f"0/{budget}"]
    assert "Float twin: at 100 epochs: n/a (`r20_fp_full_e100_s0`: missing)." in md


def test_a_line_cut_short_while_a_run_writes_it_is_reported(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    _write_run(root, "r20_recu_full_e100_s2", _tau1_curve(2)[:40], epochs=100)
    metrics = root / "r20_recu_full_e100_s2" / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"epoch": 40, "test_to')
    run = C.read_claims(root).long["recu"][2]
    assert not run.complete and run.status.startswith("metrics.jsonl unreadable")
    assert "`r20_recu_full_e100_s2` (metrics.jsonl unreadable" in C.render_report(C.read_claims(root))


def test_cli_writes_report_and_figure(runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "report"
    assert cli_main(["claims", "--runs", str(runs), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert (out / "report.md").read_text() in printed
    assert str(out / "curves.png") in printed
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert cli_main(["claims", "--runs", str(tmp_path / "nope"), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "runs folder" in err and "does not exist" in err

    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli_main(["claims", "--runs", str(empty), "-o", str(tmp_path / "empty_report")]) == 0
    assert (tmp_path / "empty_report" / "curves.png").exists()
