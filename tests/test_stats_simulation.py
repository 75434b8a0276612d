"""Seeded simulations: BH keeps false discoveries at alpha under the null, and has power when there is
a shift; a data set whose rejected answers are other pairs' chosen answers shows no data signal."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from dpo_eval_core.config import GateConfig
from dpo_eval_core.families import data_signal as DS
from dpo_eval_core.stats import ROLES, adjust, feature_stats, wilcoxon_p

N_FEATURES = 69
ALPHA = 0.05


def correlated_differences(rng: np.random.Generator, n: int, shift: float) -> np.ndarray:
    """[n, 69] paired differences: a shared factor (correlation 0.5 between features) plus noise, + shift SD."""
    common = rng.standard_normal((n, 1))
    return np.sqrt(0.5) * common + np.sqrt(0.5) * rng.standard_normal((n, N_FEATURES)) + shift


def any_discovery(d: np.ndarray) -> tuple[bool, float]:
    p = adjust([wilcoxon_p(d[:, j]) for j in range(d.shape[1])], "bh")
    return bool((p < ALPHA).any()), float((p < ALPHA).mean())


@pytest.mark.slow  # 500 null runs x 69 Wilcoxon tests: about a minute of the CI budget
def test_bh_controls_the_share_of_null_runs_with_any_discovery():
    rng = np.random.default_rng(20261125)
    runs = 500
    hits = sum(any_discovery(correlated_differences(rng, 30, 0.0))[0] for _ in range(runs))
    rate = hits / runs
    se = np.sqrt(ALPHA * (1 - ALPHA) / runs)
    print(f"null runs with any BH discovery: {rate:.3f} (alpha {ALPHA}, +2 SE = {ALPHA + 2 * se:.3f})")
    assert rate <= ALPHA + 2 * se


def test_power_for_a_half_sd_shift_at_n_100():
    rng = np.random.default_rng(7)
    runs = 40
    power = np.mean([any_discovery(correlated_differences(rng, 100, 0.5))[1] for _ in range(runs)])
    print(f"share of shifted features found (power): {power:.3f}")
    assert power > 0.8


def test_no_warnings_leak_from_degenerate_differences(recwarn):
    values = {r: np.zeros((12, 3)) for r in ROLES}
    values["chosen"][:, 1] = 1e-15  # float noise only
    values["tuned"][:, 2] = np.nan
    stats = feature_stats(values, ["train"] * 8 + ["valid"] * 4, ["a", "b", "c"], ci_level=0.95, n_boot=1000,
                          rng=np.random.default_rng(0))
    assert [s.p_cr for s in stats] == [1.0, 1.0, 1.0]
    assert not [w for w in recwarn.list if issubclass(w.category, RuntimeWarning)]


@pytest.fixture(scope="module")
def shuffled_pairs_features(tmp_path_factory):
    """Demo pairs whose rejected answer is the chosen answer of another pair: no real preference."""
    from dpo_eval_core.cache import Cache
    from dpo_eval_core.data import load_pairs
    from dpo_eval_core.demo import demo_pairs
    from dpo_eval_core.features import FEATURE_NAMES, feature_rows

    rows = demo_pairs()
    others = [r["chosen"] for r in rows]
    random.Random(0).shuffle(others)
    path = tmp_path_factory.mktemp("shuffled") / "pairs.jsonl"
    path.write_text("".join(json.dumps({**r, "rejected": o}) + "\n" for r, o in zip(rows, others)
                            if o != r["chosen"]))
    ps = load_pairs(str(path))
    texts = [p.chosen for p in ps.pairs] + [p.rejected for p in ps.pairs]
    feats, _ = feature_rows(texts, Cache(tmp_path_factory.mktemp("cache")))
    m = np.array([[row[k] for k in FEATURE_NAMES] for row in feats])
    n = len(ps.pairs)
    values = {"chosen": m[:n], "rejected": m[n:], "tuned": m[:n], "base": m[:n]}
    return ps, values


def test_shuffled_rejected_answers_carry_no_data_signal(shuffled_pairs_features):
    from dpo_eval_core.features import FEATURE_NAMES

    ps, values = shuffled_pairs_features
    gate = GateConfig()
    stats = feature_stats(values, [p.split for p in ps.pairs], FEATURE_NAMES, gate.correction)
    claims = {c.id: c for c in DS.data_signal(stats, DS.Settings(), gate)}
    significant = sum(c.passed for cid, c in claims.items() if "[" in cid)
    print(f"features significant on shuffled data: {significant} of {N_FEATURES}")
    assert significant <= ALPHA * N_FEATURES
    assert not claims["data-signal"].passed
