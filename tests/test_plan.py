"""The plan before the work: a good adapter's chance per gating claim and for the whole gate, and the sizes
that give 80% (dpo_eval_core/plan.py)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from dpo_eval_core import operating as O
from dpo_eval_core.config import EvalConfig, GateConfig, installed
from dpo_eval_core.families.rewards import REWARDS
from dpo_eval_core.plan import (FLOOR, Assumptions, Plan, agreement_chance, forgetting_chance, not_lower_chance,
                                plan_of, reward_chances)
from dpo_eval_core.run import GateRun
from dpo_eval_core.sequential import Schedule
from tiny import write_pairs

A = Assumptions()
IDS = ("accuracy", "accuracy per token", "margin")


@pytest.mark.parametrize("n", [67, 200, 1000])
def test_reward_chances_grow_with_the_pairs_and_their_80_percent_sizes_deliver_it(n):
    rows = {c.claim: c for c in reward_chances(IDS, n, 0.5, 0.025, A)}
    for c in rows.values():
        assert 0.0 <= c.chance <= 1.0 and c.n_for_80 is not None
    acc = rows[IDS[0]]
    # the size the plan names gives at least 80% (exact binomial) and one item fewer does not
    assert O.proportion_pass_rate(acc.n_for_80, 0.62, 0.5) >= 0.8 > O.proportion_pass_rate(acc.n_for_80 - 1, 0.62, 0.5)
    assert acc.chance == pytest.approx(O.proportion_pass_rate(n, 0.62, 0.5))


def test_sixteen_directions_cannot_give_a_good_adapter_80_percent_and_the_plan_says_how_many_would():
    c = agreement_chance("rate", 16, 0.5, 0.025, A)
    # 13 of 16 agreeing is decided as 12 of 15 (one direction spent on the projection), CP lower 0.519 > 0.5;
    # 12 of 16 (11 of 15: 0.449) is not: P(Bin(16, 0.8) >= 13) = 0.598
    assert c.chance == pytest.approx(0.598, abs=0.001) and c.n_for_80 is not None and c.n_for_80 > 16


def test_no_forgetting_at_the_default_margin_on_1000_questions_is_about_nine_in_ten():
    c = forgetting_chance("kept[arc]", 1000, 0.04, 0.025, A)
    assert 0.85 < c.chance < 0.95
    # normal approximation of the 80% size: (1.96 + 0.84)^2 x 0.15 / 0.04^2 = 736
    assert c.n_for_80 == math.ceil((1.959964 + 0.841621) ** 2 * 0.15 / 0.04 ** 2)


def test_the_whole_gate_is_the_product_and_a_plan_below_the_floor_says_so_with_the_ways_out():
    rows = (*reward_chances(IDS, 67, 0.5, 0.025, A), forgetting_chance("kept[arc]", 200, 0.04, 0.025, A))
    plan = Plan(rows, A)
    assert plan.whole == pytest.approx(math.prod(c.chance for c in rows)) and plan.whole < FLOOR
    text = "\n".join(plan.lines())
    assert "whole gate" in text and "more data" in text and "wider margin" in text
    assert plan.record()["whole_gate"] == pytest.approx(plan.whole)


def test_in_rounds_the_plan_says_where_each_claim_likely_stops_and_at_once_it_says_nothing_of_rounds():
    rounds = ((250, 1e-4), (500, 1e-3), (1000, 0.015))
    rows = (*reward_chances(IDS, 1000, 0.5, 0.015, A, rounds),
            forgetting_chance("kept[arc]", 1000, 0.04, 0.015, A, rounds=rounds))
    by = {c.claim: c.passed_by for c in rows}
    # the first round whose own test a good adapter passes half the time or more (exact, at that round's error)
    assert by[IDS[0]] == next(n for n, t in rounds if O.proportion_pass_rate(n, 0.62, 0.5, 1 - 2 * t) >= 0.5)
    assert by[IDS[2]] == 1000 and "last round" in rows[2].note  # a mean passes only at the last round
    assert by["kept[arc]"] in (500, 1000)
    text, record = "\n".join(Plan(rows, A).lines()), Plan(rows, A).record()
    assert f"in rounds likely passed by {by[IDS[0]]:,}" in text
    assert [c["passed_by"] for c in record["claims"]] == [by[c.claim] for c in rows]
    at_once = reward_chances(IDS, 1000, 0.5, 0.025, A)
    assert all(c.passed_by is None for c in at_once) and "rounds" not in "\n".join(Plan(tuple(at_once), A).lines())


def test_the_operating_tables_use_the_gate_s_own_defaults():
    """`python -m dpo_eval_core.operating` writes docs/decisions.md's power table at the defaults of the gate."""
    import inspect

    from dpo_eval_core.families.forgetting import Settings as Forgetting
    from dpo_eval_core.families.rewards import Settings as Rewards

    source = inspect.getsource(O.main)
    assert f"default={Forgetting().max_forgetting}" in source and f"default={Rewards().min_reward_accuracy}" in source


def test_not_lower_against_a_baseline_takes_the_baseline_s_rate_and_never_more_change_than_it_allows():
    c = not_lower_chance("not-lower[x]", 1000, "valid pairs", 0.62, 0.15, 0.02, 0.02)
    assert c.chance == pytest.approx(O.paired_pass_rate(1000, 0.075, 0.075, 0.02, 0.02))
    assert "0.620" in c.note and "15%" in c.note and c.n_for_80 > 1000
    # a baseline right on 97% of pairs leaves room for at most 6% of them to change
    assert "6%" in not_lower_chance("not-lower[x]", 1000, "valid pairs", 0.97, 0.15, 0.02, 0.02).note


def test_with_a_baseline_the_plan_adds_its_not_lower_claims_from_the_baseline_s_per_pair_values(
        tmp_path, tiny_adapter):
    from dpo_eval_core.results import build_results, claim_record, run_sections, write_json

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Question {i}?", "chosen": f"Answer {i}.",
                                        "rejected": f"Well, um, I guess {i}, maybe."}) + "\n" for i in range(40)))
    cfg = EvalConfig(adapter=tiny_adapter, data=str(data), cache_dir=tmp_path / "cache", device="cpu")
    release = GateRun(cfg)
    claims = [claim_record(release.claim(cid), True) for cid in ("reward-accuracy", "reward-accuracy-per-token")]
    write_json(tmp_path / "baseline.json", build_results(run_sections(release), claims))
    now = GateRun(dataclasses.replace(cfg, families={"regression": {"baseline": tmp_path / "baseline.json"}}))
    rows = {c.claim: c for c in plan_of(now, [f for f in installed() if f.name == "rewards"]).claims}
    accuracy = float(np.mean(release.stages.computed(REWARDS).correct))
    assert f"{accuracy:.3f}" in rows["not-lower[reward-accuracy]"].note
    assert rows["not-lower[reward-accuracy]"].n == len(release.valid_index)
    assert "not-lower[reward-accuracy-per-token]" in rows


@pytest.mark.parametrize("sequential", ["auto", "off"])
def test_a_gate_in_rounds_plans_each_reward_claim_s_stopping_round_and_one_at_once_plans_none(
        tmp_path, tiny_adapter, sequential):
    cfg = EvalConfig(adapter=tiny_adapter, data=str(write_pairs(tmp_path / "pairs.jsonl", 1000)),
                     cache_dir=tmp_path / "cache", device="cpu", gate=GateConfig(sequential=sequential))
    run = GateRun(cfg)
    plan = {c.claim: c for c in plan_of(run, [f for f in installed() if f.name == "rewards"]).claims}
    n = len(run.valid_index)
    margin = plan["reward-margin"]
    if sequential == "off":
        assert all(c.passed_by is None for c in plan.values()) and "last round" not in margin.note
    else:
        assert len(Schedule(n, run.look.tail).rounds) >= 2  # this data runs in rounds
        assert margin.passed_by == n and "last round" in margin.note
        assert plan["reward-accuracy"].passed_by in Schedule(n, run.look.tail).rounds
