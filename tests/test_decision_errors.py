"""Type I error of every decision rule, by exact enumeration where the outcomes can be counted and by seeded
Monte Carlo where they cannot: at a true value exactly on the line (a drop equal to the margin, an accuracy
of exactly the threshold, a judge with no preference) the pass rate stays at or below the nominal one-sided
0.025 x 1.1 from each rule's floor to n = 5,000, for skewed items and many discordant ones (the cells of
dpo_eval_core/operating.py, which writes docs/decisions.md's table); at no true drop it rises with n; and
nothing passes on 1, 2 or 3 items.

Measured values are printed (`pytest -s`) and stated in README's "Decisions"."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.special import gammaln
from scipy.stats import binom, norm

from dpo_eval_core import decide as D
from dpo_eval_core import operating as O
from dpo_eval_core.compare import PairedComparison, compare_correct, compare_values
from dpo_eval_core.config import GateConfig
from dpo_eval_core.families.alignment import Settings as AlignmentSettings
from dpo_eval_core.agreement import Votes
from dpo_eval_core.families.alignment import agreement_rate
from dpo_eval_core.judge import sign_test_p, win_interval

TAIL = 0.025  # the one-sided error of every "shown to hold" decision
SIZES = (20, 100, 1000)


def trinomial(n: int, p_better: float, p_worse: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (better, worse) outcome of n paired items and its probability."""
    b, c = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    keep = b + c <= n
    b, c = b[keep].astype(float), c[keep].astype(float)
    rest = n - b - c
    def term(count: np.ndarray, p: float) -> np.ndarray:  # count * log p, with 0 * log 0 = 0
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(count == 0, 0.0, count * np.log(p))

    logp = (gammaln(n + 1) - gammaln(b + 1) - gammaln(c + 1) - gammaln(rest + 1) + term(b, p_better)
            + term(c, p_worse) + term(rest, 1 - p_better - p_worse))
    p = np.exp(logp)
    assert abs(p.sum() - 1) < 1e-9
    return b, c, p


def test_the_enumerated_rule_is_the_decision_the_code_takes():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(5, 80))
        b, c = rng.multinomial(n, [0.2, 0.1, 0.7])[:2]
        d = PairedComparison("x", "paired proportions", n, 0, 0, int(b), int(c)).decide(TAIL, 0.05)
        z = norm.ppf(1 - TAIL) * (1 + 1 / n)  # Tango's z with its small-sample correction (decide.tango_level)
        assert d.passed == bool(n >= 6 and D.tango_statistic(b, c, n, -0.05) > z)


@pytest.mark.parametrize("margin", [0.02, 0.05, 0.1])
@pytest.mark.parametrize("discordance", [0.15, 0.3, 0.45, 0.6])  # a drop of m needs at least m of items changing
def test_paired_proportions_at_a_drop_equal_to_the_margin_pass_at_most_the_tail(margin, discordance):
    # true drop = margin: P(lost) - P(gained) = margin, with `discordance` of the items changing; n from the
    # floor (6) to 5,000, enumerated exactly
    rates = [O.paired_pass_rate(n, (discordance - margin) / 2, (discordance + margin) / 2, margin) for n in O.SIZES]
    print(f"Tango non-inferiority, margin {margin}, {discordance:.0%} changing: exact pass rate at the margin "
          + ", ".join(f"n={n}: {r:.4f}" for n, r in zip(O.SIZES, rates)))
    # the plain score test reached 0.032 at n = 6 (margin 0.1, 60% changing); with z (1 + 1/n), at most 0.0251
    assert max(rates) <= TAIL * 1.1


def test_paired_proportions_with_no_true_drop_pass_more_often_as_n_grows():
    rates = [O.paired_pass_rate(n, 0.075, 0.075, 0.04) for n in SIZES]
    print("Tango non-inferiority, no true drop, 15% discordance, margin 0.04: "
          + ", ".join(f"n={n}: {r:.3f}" for n, r in zip(SIZES, rates)))
    # power follows n: 15% of answers changing, a 4-point margin: about 0.9 at 1,000 questions
    assert rates[0] < rates[1] < rates[2] and rates[2] > 0.85


@pytest.mark.parametrize("shape", list(O.SHAPES))
def test_per_item_values_on_the_line_pass_at_most_the_tail_whatever_their_skew(shape):
    """Mean above a line, and non-inferiority on per-item differences (the same rule moved by the margin):
    normal items, and skewness -2 (a regression concentrated in a few items: Student's t passed 0.11 at n = 6
    and 0.075 at n = 20) and +2."""
    rng = np.random.default_rng(20261204)
    runs = 6000
    rates = [O.mean_pass_rate(n, shape, 0.0, runs, rng) for n in O.SIZES]
    se = math.sqrt(TAIL * (1 - TAIL) / runs)
    print(f"skew-guarded t, {shape}, mean on the line: " + ", ".join(
        f"n={n}: {r:.4f}" for n, r in zip(O.SIZES, rates)) + f" (tail {TAIL}, Monte Carlo SE {se:.4f})")
    assert max(rates) <= TAIL * 1.1 + 2 * se


def test_the_simulated_bound_is_the_one_the_gate_decides_on():
    """operating.py vectorises decide.skew_interval's lower bound for its tables: the same numbers."""
    rng = np.random.default_rng(3)
    for n in (6, 20, 300):
        x = O.SHAPES["skew -2"](rng, (5, n)) + 0.1
        for row, lo in zip(x, O._skew_lower(x, 0.95)):
            want = D.skew_interval(float(row.mean()), float(row.std(ddof=1)), D.skewness(row), n, 0.95)[0]
            assert lo == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_identical_values_never_pass():
    """Five identical differences gave a t interval of [0, 0], inside any margin: no spread, no pass."""
    c = compare_values("reward-margin", np.zeros(5), np.zeros(5))
    assert c.decide(TAIL, 0.5).outcome == "inconclusive"
    assert not D.above(0.3, *D.skew_interval(0.3, 0.0, 0.0, 50, 0.95), 0.0, 50, 6).passed


@pytest.mark.parametrize("rho", [0.0, 0.99, 0.999])
def test_a_relative_margin_with_its_own_noise_passes_at_most_the_tail(rho):
    """not-worse[reward-margin] at a candidate exactly on the margin (mean c = 0.9 mean o): with the margin
    treated as known (0.1 x |observed mean o|) this passed 0.08 at correlation 0.99 and 0.25 at 0.999."""
    rng = np.random.default_rng(7)
    runs = 6000
    rates = [O.relative_margin_pass_rate(n, rho, 0.1, runs, rng) for n in (6, 20, 100, 1000)]
    se = math.sqrt(TAIL * (1 - TAIL) / runs)
    print(f"relative margin, correlation {rho}: " + ", ".join(f"{r:.4f}" for r in rates) + f" (SE {se:.4f})")
    assert max(rates) <= TAIL * 1.1 + 2 * se


def test_a_good_adapter_can_pass_no_forgetting_at_the_default_margin_with_1000_questions():
    from dpo_eval_core.families.forgetting import Settings

    # no true drop, 15% of answers changing: 1,000 questions per set show it 9 times in 10
    assert O.paired_pass_rate(1000, 0.075, 0.075, Settings().max_forgetting) > 0.85


def test_an_exact_rate_at_the_threshold_passes_at_most_its_tail():
    gate = GateConfig()
    for n in (6, *SIZES, 5000):
        k = np.arange(n + 1)
        passes = np.array([D.above(x / n, *D.clopper_pearson(x, n, gate.ci_level), 0.5, n, 6).passed for x in k])
        rate = float(binom.pmf(k, n, 0.5)[passes].sum())
        print(f"Clopper-Pearson above 0.5 at a true rate of 0.5, n={n}: pass rate {rate:.4f} (tail {TAIL})")
        assert rate <= TAIL


def judge_pass_rate(n: int, p_tie: float) -> float:
    """Exact pass rate of judge-win-rate for a judge with no preference (P(win) = P(loss)), ties at p_tie."""
    b, c, p = trinomial(n, (1 - p_tie) / 2, (1 - p_tie) / 2)
    hits = 0.0
    for wins, losses, prob in zip(b.astype(int), c.astype(int), p):
        if prob < 1e-12 or wins <= losses:
            continue  # a rate at or below 0.5 never passes; outcomes this rare add nothing measurable
        lo, _ = win_interval(wins, losses, n, 0.95)
        if lo > 0.5 and sign_test_p(wins, losses) < TAIL and n >= 6:
            hits += prob
    return hits


@pytest.mark.parametrize("n", [20, 100])
@pytest.mark.parametrize("p_tie", [0.0, 0.6])
def test_a_judge_with_no_preference_passes_at_most_the_tail(n, p_tie):
    rate = judge_pass_rate(n, p_tie)
    print(f"judge-win-rate, no preference, ties {p_tie:.0%}, n={n}: exact pass rate {rate:.4f} (tail {TAIL})")
    assert rate <= TAIL


@pytest.mark.slow  # 500,000 outcomes, each with a score interval: about a minute
def test_a_judge_with_no_preference_passes_at_most_the_tail_at_n_1000():
    rate = judge_pass_rate(1000, 0.6)
    print(f"judge-win-rate, no preference, ties 60%, n=1000: exact pass rate {rate:.4f} (tail {TAIL})")
    assert rate <= TAIL


@pytest.mark.parametrize("n", SIZES)
def test_unpaired_rates_at_a_drop_equal_to_the_margin_pass_at_most_alpha(n):
    """The baseline without per-item values: Newcombe's interval of two independent rates."""
    margin, p_old = 0.05, 0.7
    k = np.arange(n + 1)
    p_new, p_base = binom.pmf(k, n, p_old - margin), binom.pmf(k, n, p_old)
    lows = np.array([[D.newcombe_unpaired(k1, n, k2, n, 1 - 2 * TAIL)[0] for k2 in k] for k1 in k]) \
        if n <= 100 else None
    if lows is None:  # n = 1000: only outcomes with any probability mass
        support = k[(binom.cdf(k, n, p_old) > 1e-9) & (binom.sf(k, n, p_old - margin) > 1e-9)]
        rate = sum(p_new[k1] * p_base[k2] for k1 in support for k2 in support
                   if D.newcombe_unpaired(k1, n, k2, n, 1 - 2 * TAIL)[0] > -margin)
    else:
        rate = float((np.outer(p_new, p_base) * (lows > -margin)).sum())
    print(f"Newcombe unpaired non-inferiority at the margin, n={n}: exact pass rate {rate:.4f} (tail {TAIL})")
    assert rate <= TAIL * 1.1


@pytest.mark.parametrize("n", [1, 2, 3])
def test_nothing_passes_on_three_items_or_fewer(n):
    gate = GateConfig()
    for outcome in itertools.product([0, 1, 2], repeat=n):  # 0 both right, 1 candidate only, 2 other only
        a = np.array([x in (0, 1) for x in outcome])
        b = np.array([x in (0, 2) for x in outcome])
        assert not compare_correct("x", a, b).decide(TAIL, 0.5).passed
        assert not compare_values("x", a * 10.0 + np.arange(n), b * 0.0).decide(TAIL, 0.5).passed
        k = int(a.sum())
        assert not D.above(k / n, *D.clopper_pearson(k, n, gate.ci_level), 0.0 if k else 0.5, n, 6).passed
        votes = Votes(("d",) * n, (1.0,) * n, (0.0,) * n, (1.0,) * n, tuple(a.tolist()))
        assert not agreement_rate(votes, n, AlignmentSettings(), gate).passed
        lo, _ = win_interval(k, n - k, n, gate.ci_level)
        assert not (lo > 0.5 and sign_test_p(k, n - k) < TAIL)
