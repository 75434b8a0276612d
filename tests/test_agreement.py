"""Sign agreement on independent evidence and on the preference (dpo_eval_core/agreement.py).

The rate counts votes of the data's independent signal directions (principal components of the
standardised chosen - rejected differences), each after the pull toward the data's texts is projected out.
On the demo's real feature table, an adapter that moves answers in a random direction passes at most the
nominal 0.025 (the per-feature count it replaces passed 0.1 of the time on the same table)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from dpo_eval_core import decide as D
from dpo_eval_core.agreement import components, random_direction_pass_rate, residual, signal_columns, votes
from dpo_eval_core.config import GateConfig
from dpo_eval_core.families.alignment import Settings, agreement_rate

TAIL = 0.025


def passes(k: int, n: int) -> bool:
    return agreement_rate(_votes(k, n), n, Settings(), GateConfig()).passed


def _votes(k: int, n: int):
    from dpo_eval_core.agreement import Votes

    return Votes(("d",) * n, (1.0,) * n, (0.0,) * n, (1.0,) * n, tuple(i < k for i in range(n)))


def table(rng: np.random.Generator, n: int, k: int, preference: np.ndarray, pull: np.ndarray, shift: np.ndarray
          ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Features of four roles for n pairs (half train, half valid): correlated noise, the preference between
    chosen and rejected, base answers `pull` away from the data's mean, tuned answers `shift` from base."""
    mix = rng.standard_normal((k, k)) * 0.4 + np.eye(k)
    noise = lambda: rng.standard_normal((n, k)) @ mix  # noqa: E731
    data = noise()
    chosen, rejected = data + preference / 2 + noise() * 0.5, data - preference / 2 + noise() * 0.5
    base = data - pull + noise() * 0.5
    return {"chosen": chosen, "rejected": rejected, "base": base, "tuned": base + shift + noise() * 0.1}, \
        np.arange(n) < n // 2


def comps_of(values, is_train):
    d = values["chosen"][is_train] - values["rejected"][is_train]
    k = d.shape[1]
    return components(d, [f"f{j}" for j in range(k)], d.std(axis=0, ddof=1), 0.05, "bh")


def test_components_are_orthonormal_and_point_the_data_s_way():
    rng = np.random.default_rng(0)
    values, is_train = table(rng, 400, 6, np.array([1.0, 0.5, -0.5, 0.3, 0.0, 0.2]), np.zeros(6), np.zeros(6))
    c = comps_of(values, is_train)
    w = np.array(c.loadings)
    assert c.k >= 3 and np.allclose(w @ w.T, np.eye(c.k), atol=1e-9)
    assert (c.project(values["chosen"][is_train] - values["rejected"][is_train]).mean(axis=0) > 0).all()
    assert all(p < 0.05 for p in c.p_adj) and len(c.names()) == c.k


def test_an_adapter_that_follows_the_preference_agrees_and_one_trained_the_other_way_does_not():
    rng = np.random.default_rng(1)
    pref = np.array([1.0, 0.6, -0.8, 0.4, -0.3, 0.5, 0.7, -0.6])
    pull = rng.standard_normal(8)  # the base's answers sit away from the data's texts
    for sign, expect in ((1.0, True), (-1.0, False)):
        # training on these texts moves toward them (pull) and, by DPO, along the preference (sign)
        values, is_train = table(rng, 600, 8, pref, pull, 0.5 * pull + sign * pref)
        c = comps_of(values, is_train)
        v = votes(values, is_train, c)
        assert passes(v.agreeing, v.k) is expect, (sign, v.agreeing, v.k)


def test_an_adapter_that_only_moves_toward_the_data_s_texts_is_no_evidence_of_the_preference():
    # tuned - base = exactly the general pull: nothing is left after projecting it out, so nothing agrees
    p, g = np.array([1.0, 2.0, -1.0]), np.array([0.5, 1.0, 1.0])
    assert np.allclose(residual(g, g), 0.0)
    assert not (residual(g, g) * residual(p, g) > 0).any()


def test_no_rate_passes_on_six_directions_or_fewer():
    # one direction is spent on projecting out the general pull, so 6 of 6 is decided as 5 of 5, and an exact
    # interval over 5 cannot clear 0.5 at 95% (0.025^(1/5) = 0.478 < 0.5); 7 of 7 (6 of 6: 0.541) can
    assert not any(passes(k, n) for n in range(1, 7) for k in range(n + 1))
    assert passes(7, 7)


@pytest.fixture(scope="module")
def demo_differences(tmp_path_factory):
    """The demo pairs' real chosen - rejected feature differences on the train split, for the data-signal
    features (the table the rule runs on)."""
    from dpo_eval_core.cache import Cache
    from dpo_eval_core.data import load_pairs
    from dpo_eval_core.demo import demo_pairs
    from dpo_eval_core.features import FEATURE_NAMES, feature_rows
    from dpo_eval_core.families.data_signal import signal_features
    from dpo_eval_core.stats import feature_stats

    path = tmp_path_factory.mktemp("demo") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in demo_pairs()))
    ps = load_pairs(str(path))
    feats, _ = feature_rows([p.chosen for p in ps.pairs] + [p.rejected for p in ps.pairs],
                            Cache(tmp_path_factory.mktemp("cache")))
    m = np.array([[row[k] for k in FEATURE_NAMES] for row in feats])
    n = len(ps.pairs)
    values = {"chosen": m[:n], "rejected": m[n:], "tuned": m[:n], "base": m[:n]}
    split = [p.split for p in ps.pairs]
    st = feature_stats(values, split, FEATURE_NAMES, "bh")
    scale = [s.scale for s in st]
    cols = signal_columns(FEATURE_NAMES, {s.feature for s in signal_features(st, 0.05)}, scale)
    train = np.array([s == "train" for s in split])
    d = (m[:n] - m[n:])[train][:, cols]
    return d, [FEATURE_NAMES[j] for j in cols], [scale[j] for j in cols]


@pytest.mark.parametrize("isotropic", [False, True], ids=["data-covariance", "isotropic"])
@pytest.mark.parametrize("n_valid", [pytest.param(20, marks=pytest.mark.slow), 67,
                                     pytest.param(500, marks=pytest.mark.slow)])  # the demo's own n in CI
def test_a_random_direction_adapter_passes_at_most_the_nominal_rate_on_the_demo_table(demo_differences, n_valid,
                                                                                       isotropic):
    d, names, scale = demo_differences
    comps = components(d, names, scale, 0.05, "bh")
    runs = 3000
    rate = random_direction_pass_rate(d, comps, passes, runs, n_valid, np.random.default_rng(n_valid), isotropic)
    se = math.sqrt(TAIL * (1 - TAIL) / runs)
    print(f"random-direction adapter, {comps.k} directions from {len(names)} features, {n_valid} valid pairs, "
          f"{'isotropic' if isotropic else 'data covariance'}: false pass {rate:.4f} (nominal {TAIL}, SE {se:.4f})")
    assert rate <= TAIL * 1.1 + 2 * se


def test_the_per_feature_count_it_replaces_passed_random_directions_far_too_often(demo_differences):
    """Why the rule changed: the same random adapters, counted feature by feature (each feature's mean shift
    against the data's direction) on an exact interval over features."""
    d, names, scale = demo_differences
    z = np.nan_to_num(d / np.asarray(scale), nan=0.0)
    noise, p = z - z.mean(axis=0), np.sign(z.mean(axis=0))
    chol = np.linalg.cholesky(np.cov(z, rowvar=False) + 1e-9 * np.eye(z.shape[1]))
    rng, runs, hits = np.random.default_rng(5), 2000, 0
    for _ in range(runs):
        t = 0.3 * chol @ rng.standard_normal(z.shape[1]) + noise[rng.integers(0, len(z), 67)].mean(axis=0)
        k = int((np.sign(t) == p).sum())
        hits += D.clopper_pearson(k, len(p), 0.95)[0] > 0.5
    print(f"per-feature count, random directions, {len(p)} features, 67 valid pairs: false pass {hits / runs:.3f}")
    assert hits / runs > 0.05
