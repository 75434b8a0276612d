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
from dpo_eval_core.claims import not_worse
from dpo_eval_core.agreement import Votes
from dpo_eval_core.compare import PairedComparison, compare_correct, compare_values, feature_shifts, match
from dpo_eval_core.config import EvalConfig, GateConfig
from dpo_eval_core.errors import ConfigError
from dpo_eval_core.families import alignment as AL
from dpo_eval_core.families import comparison as CO
from dpo_eval_core.families.comparison import RECORDS
from dpo_eval_core.families import rewards as RW
from dpo_eval_core.models import add_adapter, attach_adapter, load_base, load_tokenizer, resolve
from dpo_eval_core.rewards import PairLogps, RewardSummary, summarize
from dpo_eval_core.run import GateRun

RNG = np.random.default_rng


def judged(c: PairedComparison):
    """The not-worse claim of a comparison, with the margin its family gives it."""
    m = (RW.margin(c.what, c.other, RW.Settings())[0] if c.what in RW.FIELDS else AL.Settings().max_agreement_drop)
    return not_worse(f"not-worse[{c.what}]", c, m, "", GateConfig(), "this adapter", "other")


# --------------------------------------------------------------------------- the paired comparisons


def test_only_the_items_where_exactly_one_adapter_is_right_are_counted():
    a = np.array([1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1], dtype=bool)
    b = np.array([1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0], dtype=bool)
    c = compare_correct("reward-accuracy", a, b)
    assert (c.better, c.worse, c.n) == (9, 1, 12) and c.estimate == pytest.approx(8 / 12)
    assert c.decide(0.05, 0.02).outcome == "pass"  # 9 of 10 changes in its favour: shown not worse
    swapped = compare_correct("reward-accuracy", b, a)
    assert (swapped.better, swapped.worse) == (1, 9) and swapped.decide(0.05, 0.02).outcome == "fail"


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-50, 50, allow_nan=False), min_size=2, max_size=40), st.floats(-5, 5, allow_nan=False))
def test_exchanging_the_adapters_mirrors_the_interval(values, shift):
    a = np.array(values)
    b = a - shift + np.linspace(-1, 1, a.size)
    ab, ba = (compare_values("reward-margin", x, y) for x, y in ((a, b), (b, a)))
    assert (ab.better, ab.worse) == (ba.worse, ba.better) and ab.estimate == pytest.approx(-ba.estimate)
    (_, lo, hi, _), (_, lo2, hi2, _) = ab.bounds(0.05), ba.bounds(0.05)
    assert lo == pytest.approx(-hi2) and hi == pytest.approx(-lo2)


def test_an_adapter_against_itself_differs_nowhere_and_is_never_worse():
    a = np.array([0.5, -1.0, 2.0, 3.0, 1.0, 2.0])
    c = compare_values("reward-margin", a, a.copy())
    assert (c.better, c.worse, c.estimate, c.sd) == (0, 0, 0.0, 0.0)
    # zero spread measures no noise: no lower bound can be claimed, so it never passes, and it never fails either
    assert judged(c).outcome == "inconclusive"


def test_values_are_matched_by_id_whatever_the_order():
    x, y = match(["p1", "p2", "p3"], [1.0, 2.0, 3.0], ["p3", "p9", "p1"], [30.0, 90.0, 10.0])
    assert x.tolist() == [1.0, 3.0] and y.tolist() == [10.0, 30.0]


def test_feature_shifts_keep_the_signal_features_with_their_data_direction():
    rng = RNG(0)
    n = 60
    other = rng.normal(0, 1, (n, 4))
    candidate = other + np.array([2.0, -2.0, -2.0, 0.0]) + rng.normal(0, 0.1, (n, 4))
    shifts = feature_shifts(candidate, other, ["f0", "f1", "f2", "f3"], [1.0, 1.0, 1.0, 1.0], [1, 1, -1, 0], "bh")
    assert [s.feature for s in shifts] == ["f0", "f1", "f2"] and [s.data_sign for s in shifts] == [1, 1, -1]
    assert all(s.p_adj < 0.05 for s in shifts) and [round(s.shift) for s in shifts] == [2, -2, -2]


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
                              families={"comparison": {"compare": kw["compare"]}} if "compare" in kw else {}))


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
    other = CO.other(run)
    answered = sum(g is not None for g in other.answers["tuned"])
    valid = RW.reward_summary(run).n
    assert run.computed == {"logps": 0, "feature_rows": 0, "generations_tuned": 0, "generations_base": 0,
                            "compare: logps": 2 * valid,  # the other's policy log-probs; references reused
                            "compare: generations_tuned": answered, "compare: generations_base": 0,
                            "compare: feature_rows": run.computed["compare: feature_rows"]}
    new_texts = {g.text for g in other.answers["tuned"] if g} - {g.text for r in ("tuned", "base")
                                                                for g in first.answers[r] if g}
    assert run.computed["compare: feature_rows"] == len(new_texts)  # only the other's new answers
    assert other.model.backend.model is run.model.backend.model  # one loaded base for both adapters


def test_an_adapter_compared_with_itself_has_zero_differences_and_never_fails(tiny_adapter, pairs, tmp_path):
    run = run_of(tiny_adapter, pairs, tmp_path / "cache", compare=tiny_adapter)
    claims = not_worse_claims(run)
    assert claims and not any(c.outcome == "fail" for c in claims.values())
    for what, c in run.stages.computed(RECORDS)["items"].items():
        assert (c.better, c.worse, c.estimate) == (0, 0, 0.0), what
    # the few valid pairs of this set cannot show a 2-point bound: the claim says how many would, with 80% power
    # at the next look's one-sided 0.0025 (a run with more data is that look): z = (2.807 + 0.842)(1 + 1/n)
    # (Tango's small-sample z), n > z^2 (1 - 0.02) / 0.02: 655 (sized at 0.025 for a single look it was 387)
    acc = claims["not-worse[reward-accuracy]"]
    assert acc.inconclusive and acc.n_needed == 655 and "about 655 items would decide it with 80% power" in acc.message


def test_an_adapter_of_another_base_is_refused_as_the_other(tiny_adapter, tiny_mistral, pairs, tmp_path):
    stranger = make_adapter(tiny_mistral, tmp_path / "stranger")
    run = run_of(tiny_adapter, pairs, tmp_path / "cache", compare=stranger)
    with pytest.raises(ConfigError, match="--compare.*an adapter of this run's base"):
        CO.other(run)


# --------------------------------------------------------------------------- the paired baseline


def rewards_of(ids: list[str], correct: list[bool]) -> RewardSummary:
    """A reward summary whose pairs are right or wrong as given (policy up on chosen, or on rejected)."""
    logps = [PairLogps(1.0, 0.0, 0.0, 0.0, 5, 5) if ok else PairLogps(0.0, 1.0, 0.0, 0.0, 5, 5) for ok in correct]
    return summarize(logps, 0.1, 0.95, 100, RNG(0), tie_tolerance=1e-6, pair_ids=ids)


def regressed(baseline: dict, now: RewardSummary):
    return RW.regressed(RW.ACCURACY, now, baseline, RW.Settings(), GateConfig(), "not-lower[reward-accuracy]")


def test_the_baseline_check_is_paired_when_the_baseline_has_per_pair_values():
    ids = [f"p{i}" for i in range(30)]
    baseline = {"rewards": {"pair_ids": ids, "correct": [True] * 30}}
    claim = regressed(baseline, rewards_of(ids[::-1], [i % 3 != 0 for i in range(30)]))  # 10 of 30 pairs lost
    assert claim.outcome == "fail" and "better on 0, worse on 10" in claim.message and "REGRESSED" in claim.message


def test_without_per_pair_values_the_check_is_unpaired_and_says_why():
    claim = regressed({"rewards": {"margins": [1.0]}, "claims": [{"id": "reward-accuracy", "value": 1.0, "n": 1}]},
                      rewards_of(["p"], [True]))
    assert "unpaired: the baseline records no per-pair values" in claim.message


def votes_of(agrees: list[bool]) -> Votes:
    k = len(agrees)
    return Votes(tuple(f"PC{i + 1}" for i in range(k)), (1.0,) * k, (0.0,) * k, (1.0,) * k, tuple(agrees))


def test_a_baseline_without_votes_per_direction_is_not_compared_and_says_why():
    claim = AL.regressed(votes_of([True]), {"claims": []}, AL.Settings(), GateConfig(), "not-lower[sign-agreement-rate]")
    assert not claim.applicable and "no votes per signal direction" in claim.message


def test_the_sign_agreement_rate_is_paired_by_direction_against_the_baseline():
    old = {"agreement": {"directions": [{"name": f"PC{i + 1}", "agrees": True} for i in range(40)]}}
    now = votes_of([i >= 10 for i in range(40)])  # 10 of 40 directions no longer agree
    claim = AL.regressed(now, old, AL.Settings(), GateConfig(), "not-lower[sign-agreement-rate]")
    assert claim.outcome == "fail" and "on 40 signal directions" in claim.message


def test_the_paired_check_catches_a_drop_the_unpaired_one_cannot_show():
    ids = [f"p{i}" for i in range(100)]
    old, new = [i < 80 for i in range(100)], [i < 72 for i in range(100)]  # the 8 pairs that changed all got worse
    paired = regressed({"rewards": {"pair_ids": ids, "correct": old}}, rewards_of(ids, new))
    unpaired = regressed({"claims": [{"id": "reward-accuracy", "value": 0.8, "n": 100}]}, rewards_of(ids, new))
    assert paired.outcome == "fail" and unpaired.outcome == "inconclusive"
    assert "unpaired: the baseline records no per-pair values" in unpaired.message


def test_five_pairs_from_all_right_to_all_wrong_is_a_regression():
    ids = [f"p{i}" for i in range(5)]
    claim = regressed({"rewards": {"pair_ids": ids, "correct": [True] * 5}}, rewards_of(ids, [False] * 5))
    assert claim.outcome == "fail", claim.message


@pytest.mark.parametrize("version, readable", [(1, True), (2, True), (3, False)])
def test_a_baseline_of_the_previous_schema_is_still_read(tmp_path, version, readable):
    """Schema 2 moved the families' settings under config.families; what a baseline is compared on is as in 1."""
    from dpo_eval_core.results import load_results, write_json

    path = tmp_path / "results.json"
    write_json(path, {"schema_version": version, "config": {"mcq": [], "judge": None}, "facts": {}, "claims": []})
    if readable:
        assert load_results(path)["schema_version"] == version
    else:
        with pytest.raises(ConfigError, match="schema_version 1 or 2"):
            load_results(path)
