"""Sequential decisions (dpo_eval_core/sequential.py): the schedule spends exactly the look's error; the reward
accuracy rule in rounds passes an adapter on the threshold at most that often (exact, by dynamic programming over
the rounds, from 128 to 3,000 pairs), keeps the fixed-n rule's power, and decides a clearly good or bad adapter on
a third of the pairs or fewer; the non-inferiority and skewed-mean rules in rounds hold their error (seeded Monte
Carlo); the engine stops once every gating claim is decided, keeps each first decision, and stops waiting for a
claim that cannot pass; a gate run in rounds scores only the pairs its rounds used.

Measured values are printed (`pytest -s`) and stated in docs/decisions.md's "Sequential decisions"."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import beta, binom, norm

from dpo_eval_core import decide as D
from dpo_eval_core.claims import Claim, rate_above
from dpo_eval_core.config import EvalConfig, GateConfig
from dpo_eval_core.errors import ConfigError
from dpo_eval_core.families.rewards import REWARDS
from dpo_eval_core.plan import LIKELY, Assumptions, reward_chances
from dpo_eval_core.results import sections
from dpo_eval_core.sequential import (Schedule, at_tail, decide_in_rounds, order, paired_may_pass, rate_may_pass,
                                      schedule)
from tiny import write_pairs

TAIL = 0.02  # a first look's one-sided error
GATE = dataclasses.replace(GateConfig(), ci_level=1 - 2 * TAIL)


@given(st.integers(1, 20_000), st.integers(1, 500), st.floats(0.5, 4))
@settings(max_examples=300, deadline=None)
def test_the_rounds_double_up_to_every_item_and_spend_exactly_the_looks_error(n, first, rho):
    s = Schedule(n, TAIL, first, rho)
    rounds = s.rounds
    assert rounds[-1] == n and all(a < b for a, b in zip(rounds, rounds[1:]))
    assert rounds[0] >= min(first, n) and all(b <= 2 * a for a, b in zip(rounds, rounds[1:]))
    spent = [s.tail_at(k) for k in range(len(rounds))]
    assert all(t > 0 for t in spent) and sum(spent) == pytest.approx(TAIL, rel=1e-12)
    if len(rounds) > 1:  # the last round keeps 1 - (1/2)^rho of the error (rounded halving: a little less)
        assert spent[-1] >= TAIL * (1 - ((rounds[-2]) / n) ** rho) - 1e-15


@given(st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=60, unique=True),
       st.lists(st.text(min_size=1, max_size=8), max_size=30, unique=True))
def test_more_data_keeps_the_order_of_the_items_there_were(ids, more):
    more = [m for m in more if m not in ids]
    before = [ids[i] for i in order(ids, 0)]
    after = [x for x in ((ids + more)[i] for i in order(ids + more, 0)) if x in set(ids)]
    assert before == after


def clopper_pearson(k: np.ndarray, n: int, tail: float) -> tuple[np.ndarray, np.ndarray]:
    lo = np.where(k > 0, beta.ppf(tail, k, n - k + 1), 0.0)
    hi = np.where(k < n, beta.ppf(1 - tail, k + 1, n - k), 1.0)
    return lo, hi


def rate_in_rounds(n: int, p: float, threshold: float = 0.5, futility: bool = False,
                   until: int | None = None) -> tuple[float, float, float]:
    """Exactly, for a true rate p: the chance the reward-accuracy rule in rounds passes, fails, and the expected
    number of pairs it scores (the mass over successes so far is carried from round to round; what a round
    decides stops there; with `futility`, so does what sequential.rate_may_pass gives up on); with `until`, the
    chances to have passed and failed by the round of that many pairs."""
    s = Schedule(n, TAIL)
    last = at_tail(GATE, s.tail_at(len(s.rounds) - 1))
    mass, before, passed, failed, items = np.array([1.0]), 0, 0.0, 0.0, 0.0
    for k, m in enumerate(s.rounds[:None if until is None else s.rounds.index(until) + 1]):
        mass = np.convolve(mass, binom.pmf(np.arange(m - before + 1), m - before, p))
        lo, hi = clopper_pearson(np.arange(m + 1), m, s.tail_at(k))
        stop_pass, stop_fail = lo > threshold, hi <= threshold
        stop = stop_pass | stop_fail
        if futility and m < n:
            stop |= ~np.array([rate_may_pass(j, m, n, threshold, last) for j in range(m + 1)])
        passed, failed = passed + mass[stop_pass].sum(), failed + mass[stop_fail].sum()
        items += m * mass[stop].sum()
        mass, before = np.where(stop, 0.0, mass), m
    return passed, failed, items + n * mass.sum()


def fixed_n_pass(n: int, p: float, threshold: float = 0.5) -> float:
    k = np.arange(n + 1)
    return float(binom.pmf(k, n, p)[clopper_pearson(k, n, TAIL)[0] > threshold].sum())


@pytest.mark.parametrize("n", [128, 300, 1000, 3000], ids=lambda n: f"{n}-pairs")
def test_reward_accuracy_in_rounds_passes_an_adapter_on_the_threshold_at_most_the_looks_error(n):
    passed, failed, items = rate_in_rounds(n, 0.5)
    print(f"\nN={n}: false pass {passed:.4f} (fixed n {fixed_n_pass(n, 0.5):.4f}), expected pairs {items:.0f}")
    assert passed <= TAIL


@pytest.mark.parametrize("p", [0.55, 0.6, 0.65])
def test_reward_accuracy_in_rounds_keeps_the_fixed_n_rules_power(p):
    passed, _, items = rate_in_rounds(1000, p)
    print(f"\np={p}: power {passed:.4f} in rounds, {fixed_n_pass(1000, p):.4f} on every pair; {items:.0f} pairs")
    assert passed >= fixed_n_pass(1000, p) - 0.02


@pytest.mark.parametrize("n", [1000, 3000], ids=lambda n: f"{n}-pairs")
@pytest.mark.parametrize("p", [0.35, 0.65], ids=["clearly-bad", "clearly-good"])
def test_a_clearly_good_or_bad_adapter_is_decided_on_a_third_of_the_pairs_or_fewer(n, p):
    passed, failed, items = rate_in_rounds(n, p)
    print(f"\nN={n}, p={p}: decided {passed + failed:.4f}, expected pairs {items:.0f} ({n / items:.1f}x fewer)")
    assert passed + failed > 0.999 and items <= n / 3


@pytest.mark.parametrize("n", [1000, 2369], ids=lambda n: f"{n}-pairs")
def test_the_plan_names_the_round_by_which_a_good_adapter_has_likely_passed_and_the_margin_the_last(n):
    """The plan before the work says, in rounds, where a good adapter's reward stage stops for each claim: the
    round it names for the accuracy is one by which the rule in rounds has passed it at least half the time
    (exact), and the margin, a mean, is named at the last round."""
    s, a = Schedule(n, TAIL), Assumptions()
    rounds = tuple((m, s.tail_at(k)) for k, m in enumerate(s.rounds))
    accuracy, _, margin = reward_chances(("a", "t", "m"), n, 0.5, rounds[-1][1], a, rounds)
    by = accuracy.passed_by
    assert by in s.rounds[:-1]  # a good adapter's accuracy is decided before the last round
    passed, failed, _ = rate_in_rounds(n, a.reward_accuracy, until=by)
    print(f"\nN={n}: the plan names {by} pairs; passed by then {passed:.3f}, failed {failed:.2e}")
    assert passed >= LIKELY and failed < 1e-3
    assert margin.passed_by == n and "last round" in margin.note


@pytest.mark.parametrize("n", [300, 1000], ids=lambda n: f"{n}-pairs")
def test_giving_up_on_a_claim_that_will_not_pass_costs_little_power_and_saves_pairs_on_the_line(n):
    """From half the pairs on, a rate whose chance to pass by the last round (were the rest like the pairs so far)
    is below 1% is no longer waited for: exact, the false pass does not rise, a good adapter loses at most 0.01 of
    its chance, and a claim sitting on the threshold stops after about two thirds of the pairs."""
    on_line, on_line_futile = rate_in_rounds(n, 0.5), rate_in_rounds(n, 0.5, futility=True)
    print(f"\nN={n}: on the line {on_line[2]:.0f} -> {on_line_futile[2]:.0f} pairs, false pass "
          f"{on_line[0]:.4f} -> {on_line_futile[0]:.4f}")
    assert on_line_futile[0] <= on_line[0] and on_line_futile[2] <= 0.75 * n
    for p in (0.52, 0.55, 0.6):
        before, after = rate_in_rounds(n, p)[0], rate_in_rounds(n, p, futility=True)[0]
        print(f"  p={p}: power {before:.4f} -> {after:.4f}")
        assert after >= before - 0.01


def test_the_exact_table_is_the_rule_the_engine_runs():
    """The dynamic programme's boundaries are the engine's decisions: the same outcome and round, sequence by
    sequence."""
    rng = np.random.default_rng(0)
    s = Schedule(300, TAIL)
    for p in (0.5, 0.58, 0.66):
        for _ in range(40):
            right = rng.random(300) < p
            run = decide_in_rounds(s, GATE, lambda n: right[:n],  # noqa: B023
                                   lambda x, g: [rate_above("reward-accuracy", int(x.sum()), x.size, 0.5, g, "")])
            expected = ("inconclusive", s.rounds[-1])
            for k, m in enumerate(s.rounds):
                lo, hi = clopper_pearson(np.array([right[:m].sum()]), m, s.tail_at(k))
                if lo[0] > 0.5 or hi[0] <= 0.5:
                    expected = ("pass" if lo[0] > 0.5 else "fail", m)
                    break
            assert (run.claims[0].outcome, run.rounds[-1].n) == expected


def tango_passes(better: np.ndarray, worse: np.ndarray, n: int, margin: float, tail: float) -> np.ndarray:
    """Tango's non-inferiority decision, vectorised as decide.PairedComparison takes it (its z corrected by
    1 + 1/n)."""
    return (n >= D.min_items(tail)) & (D.tango_statistic(better, worse, n, -margin) > norm.ppf(1 - tail) * (1 + 1 / n))


@pytest.mark.parametrize("discordance", [0.05, 0.15, 0.4])
def test_no_forgetting_in_rounds_at_a_drop_equal_to_the_margin_passes_at_most_the_looks_error(discordance):
    """1,000 questions in rounds of 125, 250, 500 and 1,000, the true drop equal to the 0.04 margin; 20,000 runs."""
    rng, n, margin, runs = np.random.default_rng(1), 1000, 0.04, 20_000
    s = Schedule(n, TAIL)
    gained_p = (discordance - margin) / 2
    outcome = rng.choice(3, size=(runs, n), p=[gained_p, gained_p + margin, 1 - discordance])
    b, c = np.cumsum(outcome == 0, axis=1), np.cumsum(outcome == 1, axis=1)
    passed = np.zeros(runs, dtype=bool)
    for k, m in enumerate(s.rounds):
        passed |= tango_passes(b[:, m - 1].astype(float), c[:, m - 1].astype(float), m, margin, s.tail_at(k))
    rate, se = passed.mean(), np.sqrt(TAIL * (1 - TAIL) / runs)
    print(f"\ndiscordance {discordance}: false pass {rate:.4f} (SE {se:.4f})")
    assert rate <= TAIL + 3 * se


def test_no_forgetting_in_rounds_keeps_the_power_of_every_question_at_once():
    """No true drop, 15% of answers changing, 2,000 questions (4,000 runs): the rounds pass a good adapter about as
    often as one look at every question, and the runs that pass need fewer questions."""
    rng, n, margin, runs = np.random.default_rng(2), 2000, 0.04, 4000
    s = Schedule(n, TAIL)
    outcome = rng.choice(3, size=(runs, n), p=[0.075, 0.075, 0.85])
    b, c = np.cumsum(outcome == 0, axis=1).astype(float), np.cumsum(outcome == 1, axis=1).astype(float)
    stop = np.full(runs, n + 1)
    for k, m in reversed(list(enumerate(s.rounds))):
        stop = np.where(tango_passes(b[:, m - 1], c[:, m - 1], m, margin, s.tail_at(k)), m, stop)
    once = tango_passes(b[:, -1], c[:, -1], n, margin, TAIL).mean()
    passed = stop <= n
    print(f"\nno drop: {passed.mean():.3f} pass in rounds, {once:.3f} at once; questions of a pass: median "
          f"{np.median(stop[passed]):.0f}, mean {stop[passed].mean():.0f}")
    assert passed.mean() >= once - 0.03 and stop[passed].mean() < n


def test_giving_up_on_no_forgetting_that_will_not_pass_costs_little_power():
    """1,000 questions, 15% changing (2,000 runs each): with no true drop the rounds with futility pass within 0.01
    of those without; at a true drop of 1.5 margins (1,000 questions show it neither within nor beyond the margin)
    they stop waiting at about 500 questions."""
    n, margin, runs = 1000, 0.04, 2000
    s = Schedule(n, TAIL)
    last = at_tail(GATE, s.tail_at(len(s.rounds) - 1))

    def simulate(drop: float, futility: bool, seed: int) -> tuple[float, float]:
        p_gain = (0.15 - drop) / 2
        outcome = np.random.default_rng(seed).choice(3, size=(runs, n), p=[p_gain, p_gain + drop, 0.85])
        b, c = np.cumsum(outcome == 0, axis=1), np.cumsum(outcome == 1, axis=1)
        passed, stopped, items = np.zeros(runs, bool), np.zeros(runs, bool), np.full(runs, float(n))
        for k, m in enumerate(s.rounds):
            now = ~stopped & tango_passes(b[:, m - 1].astype(float), c[:, m - 1].astype(float), m, margin,
                                          s.tail_at(k))
            passed |= now
            if futility and m < n:
                give_up = np.array([not stopped[i] and not now[i] and not paired_may_pass(
                    int(b[i, m - 1]), int(c[i, m - 1]), m, n, margin, last) for i in range(runs)])
            else:
                give_up = np.zeros(runs, bool)
            items = np.where(~stopped & (now | give_up), m, items)
            stopped |= now | give_up
        return passed.mean(), items.mean()

    good, good_futile = simulate(0.0, False, 5), simulate(0.0, True, 5)
    bad, bad_futile = simulate(1.5 * margin, False, 6), simulate(1.5 * margin, True, 6)
    print(f"\nno drop: pass {good[0]:.4f} -> {good_futile[0]:.4f}; drop 0.06: questions {bad[1]:.0f} -> "
          f"{bad_futile[1]:.0f}, pass {bad[0]:.4f} -> {bad_futile[0]:.4f}")
    assert good_futile[0] >= good[0] - 0.01 and bad_futile[0] <= bad[0] and bad_futile[1] <= 0.6 * n


@pytest.mark.parametrize("shape,side", [(0.5, 1), (1.0, 1), (0.5, -1), (1.0, -1)],
                         ids=["right-skewed", "very-right-skewed", "left-skewed", "very-left-skewed"])
def test_a_skewed_mean_on_its_threshold_in_rounds_passes_no_more_often_than_on_every_item(shape, side):
    """Reward margins with a long tail and a true mean of 0, 300 pairs in rounds of 75, 150 and 300; 4,000 runs.
    A long left tail is a regression concentrated in a few pairs. The skew-guarded t does not hold an early
    round's tiny share there (at 75 values it passes 5x its share), so a mean passes only at the last round:
    in rounds it passes no more often than on every pair at once, and within the tail where the rule itself
    holds it (right tails; a very long left tail, skewness -6, is the rule's own excess at any n)."""
    rng, n, runs = np.random.default_rng(3), 300, 4000
    s = Schedule(n, TAIL)
    x = side * (rng.lognormal(0.0, shape, size=(runs, n)) - np.exp(shape ** 2 / 2))
    last = 1 - 2 * s.tail_at(len(s.rounds) - 1)
    rounds = np.mean([D.mean_bounds(row, last)[1] > 0 for row in x])
    once = np.mean([D.mean_bounds(row, 1 - 2 * TAIL)[1] > 0 for row in x])
    early = np.mean([D.mean_bounds(row[:75], 1 - 2 * s.tail_at(0))[1] > 0 for row in x])
    se = np.sqrt(TAIL * (1 - TAIL) / runs)
    print(f"\nlognormal sigma {shape}, side {side}: false pass {rounds:.4f} in rounds, {once:.4f} at once; an early "
          f"pass would have added up to {early:.4f} (its share {s.tail_at(0):.5f})")
    assert rounds <= once
    if side > 0 or shape < 1:
        assert rounds <= TAIL + 3 * se


def test_a_mean_passes_only_at_the_last_round_and_can_fail_at_any():
    s = Schedule(500, TAIL)
    run = decide_in_rounds(s, GATE, lambda n: n, lambda n, g: [claim("reward-margin", "pass")],
                           last_round_pass=frozenset({"reward-margin"}))
    assert [r.outcomes["reward-margin"] for r in run.rounds] == ["inconclusive", "inconclusive", "pass"]
    assert run.claims[0].passed and len(run.rounds) == 3
    failed = decide_in_rounds(s, GATE, lambda n: n, lambda n, g: [claim("reward-margin", "fail")],
                              last_round_pass=frozenset({"reward-margin"}))
    assert failed.stopped == "decided" and len(failed.rounds) == 1


def test_rounds_add_no_error_to_items_that_move_together():
    """1,000 questions in 20 subjects whose drops scatter around the 0.04 margin (each subject's drawn anew,
    +-0.04): every rule that assumes independent items passes more often than stated here, in rounds or not
    (docs/safety.md measured it); the rounds, whose order spreads each subject over them, pass no more often
    than one look at every question (4,000 runs)."""
    rng, n, margin, runs, subjects = np.random.default_rng(7), 1000, 0.04, 4000, 20
    s = Schedule(n, TAIL)
    subject = rng.integers(0, subjects, size=n)
    drop = margin + rng.uniform(-margin, margin, size=(runs, subjects))[:, subject]
    p_gain = (0.15 - drop) / 2
    u = rng.random((runs, n))
    b, c = np.cumsum(u < p_gain, axis=1), np.cumsum((u >= p_gain) & (u < 0.15), axis=1)
    rounds = np.zeros(runs, dtype=bool)
    for k, m in enumerate(s.rounds):
        rounds |= tango_passes(b[:, m - 1].astype(float), c[:, m - 1].astype(float), m, margin, s.tail_at(k))
    once = tango_passes(b[:, -1].astype(float), c[:, -1].astype(float), n, margin, TAIL)
    se = np.sqrt(once.mean() * (1 - once.mean()) / runs)
    print(f"\nclustered: false pass {rounds.mean():.4f} in rounds, {once.mean():.4f} at once")
    assert rounds.mean() <= once.mean() + 3 * se


@pytest.mark.parametrize("n", [1, 2, 3])
def test_nothing_passes_on_three_items_or_fewer_in_rounds(n):
    gate = dataclasses.replace(GATE, sequential="on", first_round=1)
    s = schedule(gate, n, comparing=False)[0]
    run = decide_in_rounds(s, gate, lambda m: m, lambda m, g: [rate_above("reward-accuracy", m, m, 0.5, g, "")])
    assert not run.claims[0].passed


def claim(cid: str, outcome: str) -> Claim:
    return Claim(cid, outcome == "pass", 0.0, "", "", 1, outcome, inconclusive=outcome == "inconclusive")


def test_the_engine_stops_once_every_gating_claim_is_decided_and_keeps_each_first_decision():
    script = {125: {"reward-accuracy": "pass", "reward-margin": "inconclusive"},
              250: {"reward-accuracy": "inconclusive", "reward-margin": "fail"}}
    measured = []
    run = decide_in_rounds(Schedule(500, TAIL), GATE, lambda n: measured.append(n) or n,
                           lambda n, g: [claim(c, o) for c, o in script[n].items()])
    assert measured == [125, 250] and run.stopped == "decided"  # rounds 125, 250, 500: the last never scored
    assert [c.outcome for c in run.claims] == ["pass", "fail"]  # the pass of round 1 stands


def test_a_claim_that_does_not_gate_does_not_hold_the_stage_open():
    gate = dataclasses.replace(GATE, gating=("reward-accuracy",))
    run = decide_in_rounds(Schedule(500, TAIL), gate, lambda n: n,
                           lambda n, g: [claim("reward-accuracy", "pass"), claim("reward-margin", "inconclusive")])
    assert run.stopped == "decided" and len(run.rounds) == 1


def test_a_stage_stops_when_no_open_claim_can_pass_and_says_so():
    run = decide_in_rounds(Schedule(500, TAIL), GATE, lambda n: n, lambda n, g: [claim("reward-accuracy",
                                                                                        "inconclusive")],
                           lambda n, g: {"reward-accuracy": n < 100})
    assert run.stopped == "futile" and run.rounds[-1].n == 125
    assert not run.claims[0].passed and "with all 500 items it could not pass" in run.claims[0].message


def test_a_claim_is_decided_at_its_rounds_share_of_the_error():
    s = Schedule(1000, TAIL)
    seen = []
    decide_in_rounds(s, GATE, lambda n: n, lambda n, g: seen.append(g.tail) or [claim("reward-accuracy",
                                                                                       "inconclusive")])
    assert seen == pytest.approx([s.tail_at(k) for k in range(len(s.rounds))])


def test_auto_takes_every_item_at_once_where_rounds_cannot_help_and_on_is_refused_with_a_comparison():
    assert schedule(GATE, 109, comparing=False)[0] is None  # one round of 109 at first_round 64
    assert schedule(dataclasses.replace(GATE, sequential="on"), 0, comparing=False) == (None, "no items")
    assert schedule(GATE, 1000, comparing=False)[0].rounds == (125, 250, 500, 1000)
    assert schedule(GATE, 1000, comparing=True)[0] is None
    assert schedule(dataclasses.replace(GATE, sequential="off"), 1000, comparing=False)[0] is None
    with pytest.raises(ConfigError, match="gate.sequential"):
        schedule(dataclasses.replace(GATE, sequential="on"), 1000, comparing=True)


def test_a_gate_run_in_rounds_scores_only_the_pairs_its_rounds_used(tiny_adapter, zero_adapter, tmp_path):
    """The zero adapter's rewards are all ties: reward accuracy fails on the first round of 25 of 200 pairs,
    and only those 25 are scored; the random adapter's claims stay open longer. Every claim is the rule's
    decision on the pairs of its round, at the round's share."""
    from dpo_eval_core.families.rewards import rewards
    from dpo_eval_core.run import GateRun

    data = write_pairs(tmp_path / "pairs.jsonl", 250)
    gate = GateConfig(sequential="on", first_round=25, gating=("reward-accuracy", "reward-accuracy-per-token"))
    out = {}
    for name, adapter in (("zero", zero_adapter), ("random", tiny_adapter)):
        cfg = EvalConfig(adapter=adapter, data=str(data), split="hash", valid_fraction=0.8, cache_dir=tmp_path / name,
                         looks=tmp_path / name / "looks.json", gate=gate)
        run = GateRun(cfg)
        claims = {c.id: c for c in (run.claim(k) for k in ("reward-accuracy", "reward-accuracy-per-token"))}
        record = sections(run)["sequential"]["rewards"]
        n = len(run.valid_index)
        assert record["planned"][-1] == n and record["n_used"] == run.stages.computed(REWARDS).n
        assert run.computed.get("logps", 0) == 4 * record["n_used"]  # policy and reference, chosen and rejected
        rounds = record["rounds"]
        again = {c.id: c for c in rewards(run.stages.computed(REWARDS), run.settings(run.resolve("reward-accuracy")[0]),
                                          dataclasses.replace(run.gate, ci_level=1 - 2 * rounds[-1]["tail"]))}
        for cid, c in claims.items():  # decided at the last round: the rule's decision on its pairs and share
            first = next((i for i, r in enumerate(rounds) if r["outcomes"][cid] != "inconclusive"), len(rounds) - 1)
            if first == len(rounds) - 1:
                assert (c.outcome, c.value, c.ci) == (again[cid].outcome, again[cid].value, again[cid].ci)
            assert f"round {first + 1} of {len(record['planned'])}" in c.message
        out[name] = (record, claims, n)
    record, claims, n = out["zero"]
    assert record["stopped"] == "decided" and record["n_used"] == record["planned"][0] < n
    assert claims["reward-accuracy"].outcome == "fail" and "round 1 of" in claims["reward-accuracy"].message
    record, claims, n = out["random"]
    print(f"\nrandom adapter: {record['n_used']} of {n} pairs, {record['stopped']}, "
          f"{[(c.id, c.outcome) for c in claims.values()]}")
    json.dumps(record)  # the record is results.json material


def test_each_xdist_workers_stages_reach_results_json_and_the_console():
    from dpo_eval_core.report import sequential_lines
    from dpo_eval_core.results import merge_sections

    rounds = decide_in_rounds(Schedule(500, TAIL), GATE, lambda n: n, lambda n, g: [claim("reward-accuracy", "pass")])
    parts = [{"sequential": {"rewards": {"why": "in rounds of 125, 250, 500 items", **rounds.record()}}},
             {"sequential": {"forgetting[arc]": {"why": "every item: 90 are one round"}}}]
    merged = merge_sections(parts)["sequential"]
    assert set(merged) == {"rewards", "forgetting[arc]"}
    assert sequential_lines(merged) == ["forgetting[arc]: every item: 90 are one round",
                                        "rewards scored 125 of 500 items in 1 of 3 rounds (every gating claim decided)"]


def test_a_cap_stops_before_the_round_past_it_and_a_larger_cap_continues_the_same_rounds():
    rng = np.random.default_rng(4)
    right = rng.random(1000) < 0.53  # a claim that stays open: the rounds run on while allowed
    decide = lambda x, g: [rate_above("reward-accuracy", int(x.sum()), x.size, 0.5, g, "")]  # noqa: E731
    runs = {}
    for cap in (300, 600, None):
        seen: list[int] = []
        gate = dataclasses.replace(GATE, max_items=cap)
        runs[cap] = (decide_in_rounds(Schedule(1000, TAIL), gate, lambda n: seen.append(n) or right[:n], decide),
                     seen)  # noqa: B023
    assert runs[300][1] == [125, 250] and runs[600][1] == [125, 250, 500] and runs[None][1] == [125, 250, 500, 1000]
    assert runs[300][0].stopped == "cap" and "stopped at gate.max_items 300" in runs[300][0].claims[0].message
    assert runs[None][0].rounds[:3] == runs[600][0].rounds and runs[600][0].rounds[:2] == runs[300][0].rounds


def test_other_rounds_on_the_same_data_are_another_look_and_a_cap_is_not():
    from dpo_eval_core.looks import inputs_digest

    def digest(**gate):
        return inputs_digest("pairs", EvalConfig(gate=GateConfig(**gate)), lambda p: "")

    assert digest() == digest(max_items=300) == digest(sequential="auto", first_round=64)
    assert len({digest(), digest(sequential="off"), digest(sequential="on"), digest(first_round=32)}) == 4
