"""Type I error of every decision rule, by exact enumeration where the outcomes can be counted and by seeded
Monte Carlo where they cannot: at a true value exactly on the line (a drop equal to the margin, an accuracy
of exactly the threshold, a judge with no preference) the pass rate stays at or below the rule's nominal
error for n = 20, 100 and 1000; at no true drop it rises with n; and nothing passes on 1, 2 or 3 items.

Measured values are printed (`pytest -s`) and stated in README's "Decisions"."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.special import gammaln
from scipy.stats import binom, norm

from dpo_eval_core import decide as D
from dpo_eval_core.compare import PairedComparison, compare_correct, compare_values
from dpo_eval_core.config import GateConfig
from dpo_eval_core.families.alignment import Settings as AlignmentSettings
from dpo_eval_core.families.alignment import agreement_rate
from dpo_eval_core.judge import sign_test_p, win_interval

ALPHA = 0.05
TAIL = 0.025  # the one-sided error of "interval at 95% above a threshold"
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


def paired_pass_rate(n: int, p_better: float, p_worse: float, margin: float) -> float:
    """P(the paired non-inferiority rule passes): its lower bound lies above -margin exactly when Tango's
    statistic at d0 = -margin exceeds z (the statistic falls as d0 rises), with at least min_items."""
    b, c, p = trinomial(n, p_better, p_worse)
    passes = D.tango_statistic(b, c, n, -margin) > norm.ppf(1 - ALPHA)
    return float(p[passes].sum()) if n >= D.min_items(ALPHA) else 0.0


def test_the_enumerated_rule_is_the_decision_the_code_takes():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(5, 80))
        b, c = rng.multinomial(n, [0.2, 0.1, 0.7])[:2]
        d = PairedComparison("x", "paired proportions", n, 0, 0, int(b), int(c)).decide(ALPHA, 0.05)
        assert d.passed == bool(D.tango_statistic(b, c, n, -0.05) > norm.ppf(1 - ALPHA))


@pytest.mark.parametrize("margin, discordance", [(0.02, 0.04), (0.02, 0.15), (0.02, 0.4), (0.05, 0.06), (0.05, 0.15),
                                                  (0.05, 0.4)])  # a drop of m needs at least m of items changing
def test_paired_proportions_at_a_drop_equal_to_the_margin_pass_at_most_alpha(margin, discordance):
    # true drop = margin: P(lost) - P(gained) = margin, with `discordance` of the items changing
    rates = [paired_pass_rate(n, (discordance - margin) / 2, (discordance + margin) / 2, margin) for n in SIZES]
    print(f"Tango non-inferiority, margin {margin}, discordance {discordance}: exact pass rate at the margin "
          + ", ".join(f"n={n}: {r:.4f}" for n, r in zip(SIZES, rates)))
    # Tango's score test is within a tenth of its nominal level (largest seen here: 0.0535 at n = 20)
    assert max(rates) <= ALPHA * 1.1


def test_paired_proportions_with_no_true_drop_pass_more_often_as_n_grows():
    rates = [paired_pass_rate(n, 0.075, 0.075, 0.02) for n in SIZES]
    print("Tango non-inferiority, no true drop, 15% discordance, margin 0.02: "
          + ", ".join(f"n={n}: {r:.3f}" for n, r in zip(SIZES, rates)))
    # power follows n: with 15% of answers changing, a 2-point margin needs about 2,000 questions for 80%
    assert rates[0] < rates[1] < rates[2] and rates[2] > 0.45


def t_pass_rate(rng: np.random.Generator, n: int, draw, margin: float, runs: int) -> float:
    """Monte Carlo pass rate of the paired-values rule (t lower bound above -margin) at mean difference -margin."""
    hits = 0
    for _ in range(runs):
        d = draw(rng, n) - margin
        hits += compare_values("reward-margin", d, np.zeros(n)).decide(ALPHA, margin).passed
    return hits / runs


@pytest.mark.parametrize("shape", ["normal", "skewed"])
def test_paired_values_at_a_drop_equal_to_the_margin_pass_at_most_alpha(shape):
    draws = {"normal": lambda rng, n: rng.standard_normal(n),
             # centred lognormal (skewness ~6): the t interval's worst case among reward margins' shapes
             "skewed": lambda rng, n: (rng.lognormal(0, 1, n) - math.exp(0.5)) / math.sqrt((math.e - 1) * math.e)}
    rng = np.random.default_rng(20261201)
    runs = 2000
    rates = [t_pass_rate(rng, n, draws[shape], 0.1, runs) for n in SIZES]
    se = math.sqrt(ALPHA * (1 - ALPHA) / runs)
    print(f"t non-inferiority, {shape} differences at the margin: " + ", ".join(
        f"n={n}: {r:.4f}" for n, r in zip(SIZES, rates)) + f" (alpha {ALPHA}, Monte Carlo SE {se:.4f})")
    assert max(rates) <= ALPHA + 3 * se


def test_an_exact_rate_at_the_threshold_passes_at_most_its_tail():
    gate = GateConfig()
    for n in SIZES:
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
    lows = np.array([[D.newcombe_unpaired(k1, n, k2, n, 1 - 2 * ALPHA)[0] for k2 in k] for k1 in k]) \
        if n <= 100 else None
    if lows is None:  # n = 1000: only outcomes with any probability mass
        support = k[(binom.cdf(k, n, p_old) > 1e-9) & (binom.sf(k, n, p_old - margin) > 1e-9)]
        rate = sum(p_new[k1] * p_base[k2] for k1 in support for k2 in support
                   if D.newcombe_unpaired(k1, n, k2, n, 1 - 2 * ALPHA)[0] > -margin)
    else:
        rate = float((np.outer(p_new, p_base) * (lows > -margin)).sum())
    print(f"Newcombe unpaired non-inferiority at the margin, n={n}: exact pass rate {rate:.4f} (alpha {ALPHA})")
    assert rate <= ALPHA * 1.1


@pytest.mark.parametrize("n", [1, 2, 3])
def test_nothing_passes_on_three_items_or_fewer(n):
    gate = GateConfig()
    for outcome in itertools.product([0, 1, 2], repeat=n):  # 0 both right, 1 candidate only, 2 other only
        a = np.array([x in (0, 1) for x in outcome])
        b = np.array([x in (0, 2) for x in outcome])
        assert not compare_correct("x", a, b).decide(ALPHA, 0.5).passed
        assert not compare_values("x", a * 10.0 + np.arange(n), b * 0.0).decide(ALPHA, 0.5).passed
        k = int(a.sum())
        assert not D.above(k / n, *D.clopper_pearson(k, n, gate.ci_level), 0.0 if k else 0.5, n, 6).passed
        assert not agreement_rate(k, n, (1.0, 1.0), AlignmentSettings(), gate).passed
        lo, _ = win_interval(k, n - k, n, gate.ci_level)
        assert not (lo > 0.5 and sign_test_p(k, n - k) < TAIL)
