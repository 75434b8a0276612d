"""Looks: a run on more or other data for the same adapter is another chance to pass it, so the gate spends
its one-sided error across the looks (dpo_eval_core/looks.py) and a team that extends its data keeps the
gate's error."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dpo_eval_core import decide as D
from dpo_eval_core import operating as O
from dpo_eval_core.config import EvalConfig, GateConfig
from dpo_eval_core.errors import LooksError
from dpo_eval_core.looks import FIRST, Look, commit, find, share
from dpo_eval_core.run import GateRun

TOTAL = 0.025


@given(st.integers(min_value=1, max_value=60))
def test_the_looks_shares_never_spend_more_than_the_total(looks):
    spent = sum(share(j) for j in range(1, looks + 1))
    assert spent <= 1.0 + 1e-12 and share(1) == FIRST
    assert all(share(j + 1) < share(j) for j in range(1, looks))


def test_a_re_run_on_the_same_inputs_is_the_same_look_and_other_inputs_are_the_next(tmp_path):
    ledger = tmp_path / "looks.json"
    first = find(ledger, "sha-a", "inputs-1", TOTAL)
    assert (first.number, first.tail) == (1, pytest.approx(0.02)) and first.ci_level == pytest.approx(0.96)
    commit(ledger, "sha-a", first)
    commit(ledger, "sha-a", first)  # the same look again writes nothing
    assert len(json.loads(ledger.read_text())["adapters"]["sha-a"]) == 1
    assert find(ledger, "sha-a", "inputs-1", TOTAL).number == 1
    second = find(ledger, "sha-a", "inputs-2", TOTAL)
    assert (second.number, second.tail, second.spent) == (2, pytest.approx(0.0025), pytest.approx(0.0225))
    assert first.next_ci_level == pytest.approx(second.ci_level)
    assert find(ledger, "sha-b", "inputs-2", TOTAL).number == 1  # another adapter counts its own looks
    commit(ledger, "sha-a", second)
    assert find(ledger, "sha-a", "inputs-1", TOTAL).number == 1  # an earlier look keeps its place and level
    assert "look 2 on this adapter" in second.line() and "0.0025" in second.line()


def test_a_look_recorded_meanwhile_by_another_run_is_refused_not_overwritten(tmp_path):
    ledger = tmp_path / "looks.json"
    mine, theirs = find(ledger, "sha", "mine", TOTAL), find(ledger, "sha", "theirs", TOTAL)
    commit(ledger, "sha", theirs)
    with pytest.raises(LooksError, match="another run recorded a look"):
        commit(ledger, "sha", mine)


def test_a_ledger_that_is_not_one_names_its_path_and_what_to_do(tmp_path):
    ledger = tmp_path / "looks.json"
    ledger.write_text("[1, 2]")
    with pytest.raises(LooksError, match=r"looks\.json: not a looks ledger.*restore it"):
        find(ledger, "sha", "x", TOTAL)


def test_when_earlier_looks_spent_more_than_the_share_a_look_gets_only_what_is_left():
    """A gate whose ci_level was raised between looks: the earlier looks spent 0.02 of a total now 0.005."""
    from dpo_eval_core.looks import Earlier

    spent = Look(2, "b", 0.021, (Earlier("a", 0.02, "t"),))
    assert spent.tail == pytest.approx(0.001)


def test_n_needed_is_sized_for_the_next_look_which_decides_at_a_smaller_share():
    k, n = 60, 100  # 0.6 of 100 pairs, inconclusive at 0.96 above 0.55
    p, lo, hi, this = D.proportion_bounds(k, n, 0.96)
    *_, nxt = D.proportion_bounds(k, n, 0.96, 0.995)
    now = D.above(p, lo, hi, 0.55, n, 6, this)
    later = D.above(p, lo, hi, 0.55, n, 6, nxt)
    assert now.outcome == later.outcome == "inconclusive" and later.n_needed > 1.3 * now.n_needed


def test_extending_the_data_after_each_look_keeps_the_error_only_with_the_looks_shares():
    cells = O.looks_cells(200, 100_000, np.random.default_rng(3))
    by = {(c.rule.split(",")[0], c.setting, c.n): c.false_pass for c in cells}
    for rule in ("Clopper-Pearson above 0.5", "Tango non-inferiority"):
        full = [by[(rule, "every look at 0.025", n)] for n in (200, 400, 800)]
        spent = [by[(rule, "looks' shares (0.8, 0.1, 0.05 of 0.025)", n)] for n in (200, 400, 800)]
        assert full[2] > 0.04, full  # each re-run at the whole level is a fresh chance: the error grows
        assert max(spent) <= TOTAL, spent


@pytest.fixture
def pairs(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Question {i}?", "chosen": f"Answer {i}.",
                                        "rejected": f"Well, um, I guess {i}, maybe."}) + "\n" for i in range(40)))
    return path


def test_the_gate_decides_its_first_look_at_0_02_and_a_run_on_more_data_at_0_0025(tmp_path, tiny_adapter, pairs):
    cfg = EvalConfig(adapter=tiny_adapter, data=str(pairs), cache_dir=tmp_path / "cache", device="cpu",
                     max_samples=5)
    first = GateRun(cfg)
    claim = first.claim("reward-accuracy")
    assert first.gate.ci_level == pytest.approx(0.96) and "96% Clopper-Pearson" in claim.message
    assert first.gate.sized_at == pytest.approx(0.995)
    assert json.loads(cfg.looks_path.read_text())["adapters"][first.adapter_fingerprint][0]["tail"] == \
        pytest.approx(0.02)

    again = GateRun(cfg)  # the same inputs: the same look, the same decision
    assert again.claim("reward-accuracy") == claim and again.look.number == 1

    more = GateRun(dataclasses.replace(cfg, max_samples=None))
    assert "99.5% Clopper-Pearson" in more.claim("reward-accuracy").message
    assert more.look.number == 2 and more.gate.tail == pytest.approx(0.0025)

    judged_against = GateRun(dataclasses.replace(cfg, max_samples=None, families={"regression": {
        "baseline": Path(__file__)}}))  # a baseline is what the adapter is measured against, not data: the same look
    assert judged_against.look.number == 2

    data_only = GateRun(dataclasses.replace(cfg, max_samples=None, looks=tmp_path / "elsewhere.json"))
    assert data_only.claim("data-signal") is not None
    assert not (tmp_path / "elsewhere.json").exists()  # claims about the data alone are no look at the adapter


def test_the_plan_is_for_this_look_and_says_which_it_is(tmp_path, tiny_adapter, pairs):
    from dpo_eval_core.config import installed
    from dpo_eval_core.plan import plan_of

    cfg = EvalConfig(adapter=tiny_adapter, data=str(pairs), cache_dir=tmp_path / "cache", device="cpu")
    rewards = [f for f in installed() if f.name == "rewards"]
    plan = plan_of(GateRun(cfg), rewards)
    assert plan.look is not None and plan.look.number == 1 and "look 1 on this adapter" in plan.lines()[1]
    assert not cfg.looks_path.exists()  # planning records nothing: no claim was decided yet
    gate = GateConfig()
    assert gate.sized_at == gate.ci_level == 0.95  # outside a run: one look at the whole level
