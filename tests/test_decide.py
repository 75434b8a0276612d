"""Decision rules: pass only on evidence, fail only on evidence, inconclusive otherwise, with the n that
would decide; intervals that stay honest at small n. Type I error at the margin: tests/test_decision_errors.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from dpo_eval_core import decide as D
from dpo_eval_core.claims import not_worse
from dpo_eval_core.compare import compare_correct, compare_values
from dpo_eval_core.config import GateConfig
from dpo_eval_core.families.forgetting import forgetting
from dpo_eval_core.families.judge import judge_claims
from dpo_eval_core.families.rewards import Settings as RewardSettings
from dpo_eval_core.families.rewards import rewards
from dpo_eval_core.judge import LengthControl, length_controlled, summarize
from dpo_eval_core.rewards import PairLogps
from dpo_eval_core.rewards import summarize as reward_summary

Z90 = float(norm.ppf(0.95))  # the two-sided 90% interval = one-sided 95% bounds at alpha 0.05
Z80 = float(norm.ppf(0.80))  # n_needed is the size at which a fresh sample decides with 80% power


def test_clopper_pearson_known_values():
    # all right: lower = (tail)^(1/n); 5 of 5 at 95%: 0.025^(1/5) = 0.4782, 6 of 6: 0.025^(1/6) = 0.5407
    assert D.clopper_pearson(5, 5, 0.95) == (pytest.approx(0.025 ** 0.2), 1.0)
    assert D.clopper_pearson(6, 6, 0.95)[0] == pytest.approx(0.025 ** (1 / 6))
    assert D.clopper_pearson(0, 10, 0.95) == (0.0, pytest.approx(1 - 0.025 ** 0.1))


def test_min_items_is_where_an_all_one_sided_sign_test_first_reaches_the_tail():
    assert (D.min_items(0.05), D.min_items(0.025), D.min_items(0.5)) == (5, 6, 1)
    for tail in (0.05, 0.025, 0.01):
        n = D.min_items(tail)
        assert 0.5 ** n <= tail < 0.5 ** (n - 1)


def test_tango_with_no_discordant_item_is_z_squared_over_n_plus_z_squared():
    # b = c = 0: T(d0) = -sqrt(n d0 / (1 - d0)) for d0 > 0, so the bound solves n d0 / (1 - d0) = z^2
    for n in (1, 20, 67, 1000):
        lo, hi = D.tango_interval(0, 0, n, 0.90)
        assert hi == pytest.approx(Z90 ** 2 / (n + Z90 ** 2), rel=1e-6) and lo == pytest.approx(-hi, rel=1e-6)


def test_tango_at_zero_is_the_mcnemar_score_statistic():
    assert D.tango_statistic(9, 1, 12, 0.0) == pytest.approx((9 - 1) / math.sqrt(9 + 1))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 60), st.integers(0, 60), st.integers(0, 60))
def test_tango_interval_holds_the_estimate_stays_in_range_and_mirrors(b, c, same):
    n = b + c + same
    if n == 0:
        return
    lo, hi = D.tango_interval(b, c, n, 0.9)
    assert -1 <= lo <= (b - c) / n + 1e-9 and (b - c) / n - 1e-9 <= hi <= 1
    lo2, hi2 = D.tango_interval(c, b, n, 0.9)
    assert lo2 == pytest.approx(-hi, abs=1e-7) and hi2 == pytest.approx(-lo, abs=1e-7)


def test_newcombe_unpaired_is_wider_than_the_paired_interval_for_the_same_counts():
    lo, hi = D.newcombe_unpaired(72, 100, 80, 100, 0.9)
    plo, phi = D.tango_interval(0, 8, 100, 0.9)  # the same two rates, but the 8 changes all one way
    assert lo < plo and phi < hi and lo < -0.08 < hi


@pytest.mark.parametrize("lo, hi, outcome", [(0.6, 0.9, "pass"), (0.1, 0.4, "fail"), (0.4, 0.6, "inconclusive")])
def test_above_decides_only_on_the_side_the_interval_lies(lo, hi, outcome):
    assert D.above(0.5, lo, hi, 0.5, 100, 6).outcome == outcome


def test_too_few_items_never_pass_even_with_a_clean_interval():
    d = D.above(1.0, 0.9, 1.0, 0.5, 3, 6, lambda m: (0.9, 1.0))
    assert d.outcome == "inconclusive" and d.n_needed == 6


def test_an_inconclusive_decision_says_how_many_items_give_80_percent_power():
    # no discordant item: non-inferiority at margin 0.02 needs z^2 / (n + z^2) < 0.02 -> n > z^2 (1 - 0.02) / 0.02,
    # with z = z_0.95 + z_0.80 = 2.486 (the 80%-power size, not the 50% one at z_0.95 alone: 303, not 133)
    c = compare_correct("reward-accuracy", np.ones(67), np.ones(67))
    d = c.decide(0.05, 0.02)
    # ... and Tango's small-sample z, z (1 + 1/n): the smallest n with n > (z (1 + 1/n))^2 (1 - 0.02) / 0.02
    need = next(n for n in range(68, 1000) if n > ((Z90 + Z80) * (1 + 1 / n)) ** 2 * 0.98 / 0.02)
    assert d.outcome == "inconclusive" and d.n_needed == need == 305
    again = compare_correct("reward-accuracy", np.ones(d.n_needed), np.ones(d.n_needed)).decide(0.05, 0.02)
    assert again.outcome == "pass" and "80% power" in D.describe(d)


def test_an_estimate_exactly_on_the_margin_reports_no_deciding_n():
    c = compare_values("reward-margin", np.array([-0.2, 0.0] * 50), np.zeros(100))  # mean difference -0.1
    d = c.decide(0.05, -c.estimate)  # a margin of exactly that drop: no n can show it inside or outside
    assert d.outcome == "inconclusive" and d.n_needed is None


# --------------------------------------------------------------------------- the reviewer's examples


def test_a_skewed_difference_is_judged_by_its_mean_not_its_median():
    """40 items +0.1 and 5 items -3.0: the mean is -0.244 [-0.52, +0.03]; a signed-rank test called this a
    significant preference for the candidate. Now the mean decides: not shown within a 0.1 margin."""
    a = np.array([0.1] * 40 + [-3.0] * 5)
    c = compare_values("reward-margin", a, np.zeros(45))
    assert c.estimate == pytest.approx(-0.24444, abs=1e-4)
    claim = not_worse("not-worse[reward-margin]", c, 0.0, "margin 0", GateConfig(), "this adapter", "other")
    assert not claim.passed and "prefers this adapter" not in claim.message and "-0.2444" in claim.message


def test_one_won_judge_pair_does_not_pass():
    s = summarize("j", "t", [_pair(0)], ["long tuned"], ["base"], ["[[A]]"], ["[[B]]"], 0.95, 200,
                  np.random.default_rng(0))
    win = judge_claims(s, GateConfig(), 0.5)[0]
    assert (s.wins, s.win_rate) == (1, 1.0) and not win.passed and win.inconclusive


def test_no_reward_claim_passes_on_three_pairs_however_clean():
    lp = [PairLogps(-1.0, -9.0, -5.0, -5.0, 3, 3)] * 3
    s = reward_summary(lp, 0.1, 0.95, 200, np.random.default_rng(0), tie_tolerance=1e-6, pair_ids=["a", "b", "c"])
    claims = rewards(s, RewardSettings(), GateConfig())
    assert s.accuracy.value == 1.0 and s.accuracy.ci_low < 0.5  # exact: 0.025 ** (1/3) = 0.29
    assert all(c.inconclusive and not c.passed for c in claims), [c.message for c in claims]


def test_the_length_controlled_rate_agrees_with_the_raw_rate_when_the_judge_ignores_length():
    # 30 wins, 10 losses, 60 order flips (ties), lengths unrelated to the outcome: raw 0.60
    rng = np.random.default_rng(1)
    y = np.array([1.0] * 30 + [0.0] * 10 + [0.5] * 60)
    d = rng.normal(0, 100, y.size)
    lc = length_controlled(y, d, 0.95, 1000, rng)
    assert isinstance(lc, LengthControl) and lc.value is not None
    assert lc.value == pytest.approx(0.60, abs=0.03) and lc.ci[0] < 0.6 < lc.ci[1]


def test_six_all_win_pairs_leave_the_length_controlled_rate_inconclusive():
    s = summarize("j", "t", [_pair(i) for i in range(6)], [f"tuned answer {i}" * (1 + i % 2) for i in range(6)],
                  ["base"] * 6, ["[[A]]"] * 6, ["[[B]]"] * 6, 0.95, 500, np.random.default_rng(0))
    lc = judge_claims(s, GateConfig(), 0.5)[1]
    assert not lc.passed and lc.inconclusive


def test_forgetting_passes_only_when_the_upper_bound_of_the_drop_is_inside_the_margin():
    from test_forgetting import (
        summary_with,  # the one helper that builds a ForgettingSummary from counts
    )

    assert forgetting(summary_with(0, 0, 570), 0.02, GateConfig())[1].passed  # identical: bound 2.7/572.7 = 0.0047
    assert forgetting(summary_with(0, 0, 100), 0.02, GateConfig())[1].inconclusive  # 2.7/102.7 = 0.026 > 0.02
    assert not forgetting(summary_with(60, 10, 570), 0.02, GateConfig())[1].inconclusive  # drop 0.088: shown


def _pair(i: int):
    from dpo_eval_core.data import PreferencePair

    return PreferencePair((("user", f"q{i}"),), "c", "r", "valid")
