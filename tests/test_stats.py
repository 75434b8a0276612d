"""The method's statistics: hand-computed cases and invariants under hypothesis."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.stats import false_discovery_control, wilcoxon

from dpo_eval_core.stats import (
    ROLES,
    adjust,
    bootstrap_mean_ci,
    feature_stats,
    min_attainable_p,
    pairs_needed,
    rank_biserial,
    wilcoxon_p,
)


def table(chosen, rejected, tuned, base):
    return {r: np.asarray(v, dtype=float).reshape(-1, 1) for r, v in zip(ROLES, (chosen, rejected, tuned, base))}


def test_hand_computed_normalised_averages_and_sign_agreement():
    # train pairs 0-3: d_cr = 1, 2, 3, 4 -> S = std([1,2,3,4], ddof=1) = 1.2909944
    # valid pairs 4-5: d_cr = 2, 2 (mean 2); d_tb = 1, 3 (mean 2)
    split = ["train"] * 4 + ["valid"] * 2
    chosen = [1, 2, 3, 4, 2, 2]
    tuned = [0, 0, 0, 0, 1, 3]
    (s,) = feature_stats(table(chosen, [0] * 6, tuned, [0] * 6), split, ["f"], correction="none")
    S = np.std([1, 2, 3, 4], ddof=1)
    assert s.scale == pytest.approx(S)
    assert s.cr_train == pytest.approx(2.5 / S) and s.cr_valid == pytest.approx(2 / S)
    assert s.tb_valid == pytest.approx(2 / S) and s.tb_train == 0.0
    assert s.sign_agreement == 1
    assert (s.n_train, s.n_valid) == (4, 2)


def test_wilcoxon_matches_scipy_and_handles_all_zero():
    d = np.array([1.5, -0.5, 2.0, 3.0, 2.5, -1.0, 4.0])
    assert wilcoxon_p(d) == pytest.approx(wilcoxon(d).pvalue)
    assert wilcoxon_p(np.zeros(10)) == 1.0


def test_rank_biserial_by_hand():
    # |d| ranks: 1->1, 2->2, 3->3 ; W+ = 1 + 3 = 4, W- = 2 -> r = (4 - 2) / 6 = 1/3
    assert rank_biserial(np.array([1.0, -2.0, 3.0])) == pytest.approx(1 / 3)
    assert rank_biserial(np.array([1.0, 2.0])) == 1.0
    assert math.isnan(rank_biserial(np.zeros(3)))


def test_smallest_attainable_p_and_pairs_needed():
    assert min_attainable_p(5) == 0.0625  # 2 / 2**5, as NOTES.md says: 5 pairs can never reach 0.05
    assert pairs_needed(0.05) == 6
    assert wilcoxon_p(np.arange(1.0, 7.0)) == pytest.approx(2 / 2**6)


def test_bh_adjustment_equals_scipy_and_skips_nan():
    p = np.array([0.01, 0.04, np.nan, 0.03, 0.2])
    out = adjust(p, "bh")
    np.testing.assert_allclose(out[~np.isnan(p)], false_discovery_control(p[~np.isnan(p)]))
    assert math.isnan(out[2])
    np.testing.assert_allclose(adjust([0.01, 0.2], "bonferroni"), [0.02, 0.4])


finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)


@st.composite
def tables(draw, nan_ok=False):
    n = draw(st.integers(6, 25))
    k = draw(st.integers(1, 4))
    elems = st.one_of(finite, st.just(float("nan"))) if nan_ok else finite
    vals = {r: draw(arrays(float, (n, k), elements=elems)) for r in ROLES}
    split = ["train"] * (n - 3) + ["valid"] * 3
    return vals, split, [f"f{j}" for j in range(k)]


@settings(max_examples=60, deadline=None)
@given(tables())
def test_swapping_chosen_and_rejected_flips_signs_and_keeps_p_values(t):
    vals, split, names = t
    a = feature_stats(vals, split, names)
    b = feature_stats({**vals, "chosen": vals["rejected"], "rejected": vals["chosen"]}, split, names)
    for x, y in zip(a, b):
        assert x.p_cr == pytest.approx(y.p_cr) and x.p_cr_adj == pytest.approx(y.p_cr_adj, nan_ok=True)
        assert x.cr_train == pytest.approx(-y.cr_train, nan_ok=True)
        assert x.cr_valid == pytest.approx(-y.cr_valid, nan_ok=True)
        assert x.sign_agreement == -y.sign_agreement
        assert x.r_cr == pytest.approx(-y.r_cr, nan_ok=True)


@settings(max_examples=30, deadline=None)
@given(tables(), st.floats(0.01, 100))
def test_scaling_a_feature_leaves_normalised_averages_unchanged(t, c):
    vals, split, names = t
    a = feature_stats(vals, split, names)
    b = feature_stats({r: v * c for r, v in vals.items()}, split, names)
    for x, y in zip(a, b):
        if x.scale <= 1e-6:  # a constant feature has no scale to normalise by (a per-feature skip, not a
            continue         # rejected example: hypothesis then spent minutes looking for tables without one)
        for f in ("cr_train", "tb_train", "cr_valid", "tb_valid"):
            assert getattr(x, f) == pytest.approx(getattr(y, f), rel=1e-6, abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(tables(nan_ok=True))
def test_nan_rows_are_dropped_per_feature_not_globally(t):
    vals, split, names = t
    stats = feature_stats(vals, split, names)
    for j, s in enumerate(stats):
        # chosen-rejected tests count the pairs where both are defined; tuned-base ones where all four are
        ok_cr = ~np.any([np.isnan(vals[r][:, j]) for r in ("chosen", "rejected")], axis=0)
        ok = ~np.any([np.isnan(vals[r][:, j]) for r in ROLES], axis=0)
        tr = np.array([x == "train" for x in split])
        assert s.n_train == int((ok_cr & tr).sum()) and s.n_valid == int((ok & ~tr).sum())


@settings(max_examples=60, deadline=None)
@given(tables(nan_ok=True))
def test_chosen_rejected_statistics_do_not_depend_on_the_answers(t):
    """The data-signal tests are the same with any answers, or none: a new adapter cannot move them."""
    vals, split, names = t
    fields = ("n_train", "scale", "cr_train", "cr_valid", "p_cr", "p_cr_adj", "r_cr", "n_cr_nonzero")
    with_answers = feature_stats(vals, split, names)
    data_only = feature_stats({r: vals[r] for r in ("chosen", "rejected")}, split, names)
    for x, y in zip(with_answers, data_only):
        assert [getattr(x, f) for f in fields] == pytest.approx([getattr(y, f) for f in fields], nan_ok=True)


@settings(max_examples=50, deadline=None)
@given(arrays(float, st.integers(1, 40), elements=finite), st.floats(0.5, 0.99))
def test_bootstrap_interval_contains_the_mean(x, level):
    lo, hi = bootstrap_mean_ci(x, level, 500, np.random.default_rng(0))
    assert lo - 1e-9 <= x.mean() <= hi + 1e-9 or np.ptp(x) == 0


def test_a_claim_that_can_never_reach_alpha_fails_and_says_how_many_pairs_it_needs():
    from dpo_eval_core.config import GateConfig
    from dpo_eval_core.families import alignment as AL
    from dpo_eval_core.families import data_signal as DS

    # 5 train pairs, all chosen > rejected: exact p = 2/2**5 = 0.0625 > 0.05, so no n=5 test can pass
    values = {"chosen": np.arange(1.0, 8.0)[:, None], "rejected": np.zeros((7, 1)),
              "tuned": np.zeros((7, 1)), "base": np.zeros((7, 1))}
    stats = feature_stats(values, ["train"] * 5 + ["valid"] * 2, ["f"])
    claim = {c.id: c for c in DS.data_signal(stats, DS.Settings(), GateConfig())}["data-signal[f]"]
    assert not claim.passed and "at least 6 pairs" in claim.message and "0.0625" in claim.message
    tuned = {c.id: c for c in AL.alignment(stats, AL.Settings(), GateConfig())}["tuned-differs[f]"]
    assert not tuned.passed and "no pair differs" in tuned.message  # tuned == base everywhere: nothing to test
