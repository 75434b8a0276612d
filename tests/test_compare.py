"""--compare: paired tests of two adapters on the same items, the second adapter beside the first on one
loaded base, only its own side computed; and the paired baseline check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny import make_adapter, write_pairs

from dpo_eval_core.backend import GenerationSettings, HFBackend
from dpo_eval_core.chat import accepts_system
from dpo_eval_core.claims import Claim, not_worse
from dpo_eval_core.compare import compare_correct, compare_features, compare_values, match
from dpo_eval_core.config import EvalConfig, GateConfig
from dpo_eval_core.errors import ConfigError
from dpo_eval_core.gate import GateRun
from dpo_eval_core.models import add_adapter, attach_adapter, load_base, load_tokenizer, resolve
from dpo_eval_core.regression import not_lower, not_lower_paired, paired_values
from dpo_eval_core.stats import bootstrap_mean_ci

RNG = np.random.default_rng


# --------------------------------------------------------------------------- the paired tests


def test_mcnemar_counts_only_the_items_where_exactly_one_adapter_is_right():
    a = np.array([1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1], dtype=bool)
    b = np.array([1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0], dtype=bool)
    c = compare_correct("reward-accuracy", a, b, 0.95, 500, RNG(0))
    # discordant: a right and b wrong on 9, the reverse on 1 -> two-sided binomial(10, 1/2) p = 22/1024
    assert (c.better, c.worse, c.n) == (9, 1, 12) and c.p_value == pytest.approx(22 / 1024)
    assert c.difference[0] == pytest.approx(8 / 12) and c.prefers(0.05) == "candidate"
    swapped = compare_correct("reward-accuracy", b, a, 0.95, 500, RNG(0))
    assert (swapped.better, swapped.worse, swapped.p_value) == (1, 9, c.p_value) and swapped.prefers(0.05) == "other"


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-50, 50, allow_nan=False), min_size=1, max_size=40), st.floats(-5, 5, allow_nan=False))
def test_exchanging_the_adapters_mirrors_the_wilcoxon_comparison(values, shift):
    a = np.array(values)
    b = a - shift + np.linspace(-1, 1, a.size)
    ab, ba = (compare_values("reward-margin", x, y, 0.95, 200, RNG(0)) for x, y in ((a, b), (b, a)))
    assert (ab.better, ab.worse) == (ba.worse, ba.better) and ab.p_value == pytest.approx(ba.p_value)
    assert ab.effect == pytest.approx(-ba.effect) and ab.difference[0] == pytest.approx(-ba.difference[0])


def test_an_adapter_against_itself_differs_nowhere():
    a = np.array([0.5, -1.0, 2.0, 3.0])
    c = compare_values("reward-margin", a, a.copy(), 0.95, 200, RNG(0))
    assert (c.better, c.worse, c.p_value, c.difference) == (0, 0, 1.0, (0.0, 0.0, 0.0))
    assert not_worse(c, GateConfig(), "other").passed


def test_values_are_matched_by_id_whatever_the_order():
    x, y = match(["p1", "p2", "p3"], [1.0, 2.0, 3.0], ["p3", "p9", "p1"], [30.0, 90.0, 10.0])
    assert x.tolist() == [1.0, 3.0] and y.tolist() == [10.0, 30.0]


def test_the_feature_comparison_counts_shifted_signal_features_by_the_data_direction():
    rng = RNG(0)
    n = 60
    other = rng.normal(0, 1, (n, 4))
    candidate = other + np.array([2.0, -2.0, -2.0, 0.0]) + rng.normal(0, 0.1, (n, 4))
    # features 0 and 1 point up in the data, 2 points down, 3 has no signal: shifts +, -, - agree, disagree, agree
    test, shifts = compare_features(candidate, other, ["f0", "f1", "f2", "f3"], [1.0, 1.0, 1.0, 1.0],
                                    [1, 1, -1, 0], "bh", 0.05)
    assert [s.feature for s in shifts] == ["f0", "f1", "f2"] and (test.better, test.worse) == (2, 1)
    assert test.prefers(0.05) == "neither"  # 2 against 1 proves nothing


# --------------------------------------------------------------------------- two adapters, one model


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pairs(tmp_path_factory.mktemp("data") / "pairs.jsonl", 40)


def test_the_second_adapter_on_the_same_model_answers_as_if_loaded_alone(tiny_llama, tmp_path):
    a1, a2 = (make_adapter(tiny_llama, tmp_path / f"a{s}", seed=s) for s in (1, 2))
    s1, s2 = resolve(EvalConfig(adapter=a1)), resolve(EvalConfig(adapter=a2))
    tok = load_tokenizer(s1.base)
    shared, _ = attach_adapter(load_base(s1.base, "none", "float32", "cpu"), s1)
    assert add_adapter(shared, s2, "compare").ok
    alone, _ = attach_adapter(load_base(s2.base, "none", "float32", "cpu"), s2)
    one, two = (HFBackend(m, tok, system_ok=accepts_system(tok), device="cpu") for m in (shared, alone))
    prompts, settings = [(("user", "hello there"),), (("user", "why?"),)], GenerationSettings(max_new_tokens=8)
    other = one.with_adapter("compare")
    assert other.generate(prompts, adapter=True, settings=settings) == two.generate(prompts, adapter=True,
                                                                                   settings=settings)
    assert other.logprobs(prompts, ["abc", "de"], adapter=True) == two.logprobs(prompts, ["abc", "de"], adapter=True)
    assert one.logprobs(prompts, ["abc", "de"], adapter=True) != two.logprobs(prompts, ["abc", "de"], adapter=True)
    assert shared.active_adapter == "default"  # the view switches adapters only while it computes


def run_of(adapter: Path, pairs: Path, cache: Path, **kw) -> GateRun:
    return GateRun(EvalConfig(adapter=adapter, data=str(pairs), cache_dir=cache, max_new_tokens=8, batch_tokens=256,
                              **kw))


def not_worse_claims(run: GateRun) -> dict:
    return {c.id: c for c in run.all_claims() if c.id.startswith("not-worse[")}


def test_comparing_a_second_adapter_after_a_gate_run_computes_only_its_own_side(tiny_adapter, tiny_llama, pairs,
                                                                                tmp_path):
    first = run_of(tiny_adapter, pairs, tmp_path / "cache")
    first.all_claims()
    other = make_adapter(tiny_llama, tmp_path / "other", seed=7)
    run = run_of(tiny_adapter, pairs, tmp_path / "cache", compare=other)
    claims = not_worse_claims(run)
    assert set(claims) == {f"not-worse[{w}]" for w in ("reward-accuracy", "reward-accuracy-per-token",
                                                       "reward-margin", "sign-agreement")}
    answered = sum(g is not None for g in run.other.answers["tuned"])
    valid = run.reward_summary.n
    assert run.computed == {"logps": 0, "feature_rows": 0, "generations_tuned": 0, "generations_base": 0,
                            "compare: logps": 2 * valid,  # the other's policy log-probs; references reused
                            "compare: generations_tuned": answered, "compare: generations_base": 0,
                            "compare: feature_rows": run.computed["compare: feature_rows"]}
    new_texts = {g.text for g in run.other.answers["tuned"] if g} - {g.text for r in ("tuned", "base")
                                                                    for g in first.answers[r] if g}
    assert run.computed["compare: feature_rows"] == len(new_texts)  # only the other's new answers
    assert run.other.model.backend.model is run.model.backend.model  # one loaded base for both adapters


def test_an_adapter_compared_with_itself_has_zero_differences_and_passes(tiny_adapter, pairs, tmp_path):
    run = run_of(tiny_adapter, pairs, tmp_path / "cache", compare=tiny_adapter)
    claims = not_worse_claims(run)
    assert claims and all(c.passed for c in claims.values())
    for what, c in run.comparison.items.items():
        assert (c.better, c.worse) == (0, 0), what
        if what != "sign-agreement":
            assert c.difference == (0.0, 0.0, 0.0), what


def test_an_adapter_of_another_base_is_refused_as_the_other(tiny_adapter, tiny_mistral, pairs, tmp_path):
    stranger = make_adapter(tiny_mistral, tmp_path / "stranger")
    run = run_of(tiny_adapter, pairs, tmp_path / "cache", compare=stranger)
    with pytest.raises(ConfigError, match="--compare.*an adapter of this run's base"):
        _ = run.other


# --------------------------------------------------------------------------- the paired baseline


def test_the_baseline_check_is_paired_when_the_baseline_has_per_pair_values():
    ids = [f"p{i}" for i in range(30)]
    baseline = {"rewards": {"pair_ids": ids, "correct": [True] * 30}}
    now = {"pair_ids": ids[::-1], "correct": [i % 3 != 0 for i in range(30)]}  # 10 of 30 pairs lost
    x, y = paired_values(baseline, now, "reward-accuracy")
    test = compare_correct("reward-accuracy", x, y, 0.95, 500, RNG(0))
    overlap = Claim("not-lower[reward-accuracy]", True, 0.0, "", "", 30, "intervals overlap")
    claim = not_lower_paired("reward-accuracy", test, 0.05, overlap)
    assert (test.worse, test.better, test.n) == (10, 0, 30) and test.p_value == pytest.approx(2 / 1024)
    assert not claim.passed and "10 pairs lost, 0 gained, exact McNemar p=0.00195" in claim.message


@pytest.mark.parametrize("baseline, rate, why", [
    ({"rewards": {"margins": [1.0]}}, "reward-accuracy", "no per-pair values"),
    ({"rewards": {"pair_ids": ["p"], "correct": [True]}}, "sign-agreement-rate", "a rate over features"),
])
def test_without_per_pair_values_the_interval_rule_is_used_and_says_why(baseline, rate, why):
    assert why in paired_values(baseline, {"pair_ids": ["p"], "correct": [True]}, rate)


def test_the_paired_check_catches_a_drop_the_interval_rule_misses():
    ids = [f"p{i}" for i in range(100)]
    old, new = [i < 80 for i in range(100)], [i < 72 for i in range(100)]  # the 8 pairs that changed all got worse
    test = compare_correct("reward-accuracy", *paired_values({"rewards": {"pair_ids": ids, "correct": old}},
                                                             {"pair_ids": ids, "correct": new}, "reward-accuracy"),
                           0.95, 2000, RNG(0))
    assert (test.worse, test.better) == (8, 0) and test.p_value == pytest.approx(2 / 2 ** 8)
    ci_old, ci_new = (bootstrap_mean_ci(np.array(x, dtype=float), 0.95, 2000, RNG(0)) for x in (old, new))
    unpaired = not_lower("reward-accuracy", {"id": "reward-accuracy", "value": 0.8, "ci": list(ci_old)},
                         Claim("reward-accuracy", True, 0.72, "", "", 100, "", ci=ci_new))
    assert ci_new[1] > ci_old[0] and unpaired.passed  # the two intervals overlap: no drop by the interval rule
    assert not not_lower_paired("reward-accuracy", test, 0.05, unpaired).passed


def test_on_a_handful_of_pairs_the_interval_rule_still_catches_all_right_to_all_wrong():
    # 5 pairs, all lost: McNemar p = 2/32 cannot reach 0.05; the intervals [1, 1] and [0, 0] do not overlap
    test = compare_correct("reward-accuracy", np.zeros(5), np.ones(5), 0.95, 500, RNG(0))
    interval = not_lower("reward-accuracy", {"id": "reward-accuracy", "value": 1.0, "ci": [1.0, 1.0]},
                         Claim("reward-accuracy", False, 0.0, "", "", 5, "", ci=(0.0, 0.0)))
    claim = not_lower_paired("reward-accuracy", test, 0.05, interval)
    assert test.p_value == pytest.approx(2 / 32) and not interval.passed
    assert not claim.passed and "REGRESSED by the interval rule" in claim.message
