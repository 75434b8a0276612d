"""bfloat16 speed with float32 verdicts: the band's rules cannot miss an item float32 would decide otherwise, and
on a model the gate's reward and forgetting verdicts, with every pair's correctness and every question's answer,
are float32's while the near ties alone are scored again (and cached under the float32 identity)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from tiny import write_pairs

from dpo_eval_core import precision as P
from dpo_eval_core.backend import HFBackend
from dpo_eval_core.cache import Cache
from dpo_eval_core.config import EvalConfig
from dpo_eval_core.errors import DpoEvalError
from dpo_eval_core.forgetting import measure
from dpo_eval_core.identity import ModelIdentity
from dpo_eval_core.mcq import McqSettings, load_questions
from dpo_eval_core.run import GateRun

sizes = st.integers(1, 2_000)
values = st.floats(-300, 300, allow_nan=False)
shares = st.floats(-1, 1)


@given(c=values, r=values, nc=sizes, nr=sizes, summed=shares, per_token=shares)
def test_a_settled_pair_keeps_its_correctness_for_every_error_within_the_band(c, r, nc, nr, summed, per_token):
    """Outside the bands, no float32 margin within them reverses the summed or the per-token comparison."""
    if P.unsettled_pairs([(c, r)], [(nc, nr)]):
        return
    assert (c - r > 0) == (c - r + summed * P.SUMMED(nc + nr) > 0)
    assert (c / nc - r / nr > 0) == (c / nc - r / nr + per_token * P.PER_TOKEN(1 / nc + 1 / nr) > 0)


@pytest.mark.parametrize("metric", ["acc", "acc_norm"])
@given(lp=st.lists(st.floats(-200, 0), min_size=2, max_size=5), data=st.data())
def test_a_settled_question_keeps_its_answer_for_every_error_within_the_band(metric, lp, data):
    k = len(lp)
    tokens = data.draw(st.lists(st.integers(1, 40), min_size=k, max_size=k))
    chars = data.draw(st.lists(st.integers(1, 200), min_size=k, max_size=k))
    if P.unsettled_choice(lp, tokens, chars, metric):
        return
    top = int(np.argmax(lp if metric == "acc" else np.divide(lp, chars)))
    for j in range(k):  # every other choice, moved toward the best by up to the band of the difference
        if j == top:
            continue
        if metric == "acc":
            assert lp[top] - lp[j] - data.draw(shares) * P.CHOICES(tokens[top] + tokens[j]) > 0
        else:
            moved_top = (lp[top] + data.draw(shares) * P.CHOICE(tokens[top])) / chars[top]
            assert moved_top > (lp[j] + data.draw(shares) * P.CHOICE(tokens[j])) / chars[j]


def test_near_ties_are_unsettled_and_clear_leads_are_not():
    assert P.unsettled_pairs([(-1.0, -1.0 - P.SUMMED(200)), (50.0, -50.0)], [(100, 100), (100, 100)]) == [0]
    clear = 1.01 * max(P.SUMMED(200), 100 * P.PER_TOKEN(2 / 100))  # past both bands, by 1%
    assert P.unsettled_pairs([(-1.0, -1.0 - clear), (-1.0, -1.0 - clear / 1.02)], [(100, 100)] * 2) == [1]
    assert P.unsettled_choice([-3.0, -3.0 - P.CHOICES(2)], [1, 1], [1, 1], "acc")
    assert not P.unsettled_choice([-3.0, -3.0 - 1.01 * P.CHOICES(2)], [1, 1], [1, 1], "acc")
    assert P.unsettled_choice([-3.0, -3.0 - 2 * P.CHOICE(1)], [1, 1], [1, 1], "acc_norm")
    assert not P.unsettled_choice([-1.0, -9.0], [1, 1], [1, 1], "acc_norm")


def test_a_mean_is_settled_only_when_no_move_within_the_band_changes_its_decision():
    rng = np.random.default_rng(0)
    x = rng.normal(0.05, 1.0, 400)
    decide = lambda v: v.mean() - 2 * v.std(ddof=1) / np.sqrt(v.size) > 0  # noqa: E731
    far, near = x + 1.0, x - x.mean() + 2 * x.std(ddof=1) / np.sqrt(x.size)  # clear pass; on the line
    assert P.mean_settled(far, np.full(x.size, 0.05), decide)
    assert not P.mean_settled(near, np.full(x.size, 0.05), decide)
    assert P.mean_settled(near, np.zeros(x.size), decide)  # every pair already float32


@given(st.lists(st.tuples(values, st.floats(0, 5)), min_size=2, max_size=200), st.floats(-3, 3),
       st.integers(0, 50))
def test_to_settle_picks_the_widest_bands_that_would_settle_the_mean(rows, threshold, at_least):
    x, b = (np.array(v, dtype=float) for v in zip(*rows))
    decide = lambda v: (v.mean() - 2 * v.std(ddof=1) / np.sqrt(v.size) > threshold,  # noqa: E731
                        v.mean() + 2 * v.std(ddof=1) / np.sqrt(v.size) < threshold)
    pick = P.to_settle(x, b, decide, at_least)
    if P.mean_settled(x, b, decide):
        assert pick.size == 0
        return
    left = b.copy()
    left[pick] = 0.0
    assert P.mean_settled(x, left, decide)  # had float32 given these values
    assert pick.size >= min(at_least, int((b > 0).sum())) and (b[pick] > 0).all()
    assert b[pick].min() >= np.delete(b, pick).max(initial=0.0)  # widest first


def test_rescoring_for_the_mean_stops_well_before_every_pair_when_the_verdict_is_clear_of_most_bands():
    """A mean near its line, most pairs short (narrow bands), a few long ones (wide): float32 for the long ones
    settles it, and the loop the rewards family runs (to_settle, score, settle again) ends settled."""
    rng = np.random.default_rng(1)
    n = 300
    b = np.where(np.arange(n) < 30, 2.0, 0.01)
    true = rng.normal(0.3, 1.0, n)
    x = true + rng.uniform(-1, 1, n) * b  # the bfloat16 pass: within the band of float32's
    decide = lambda v: v.mean() - 2 * v.std(ddof=1) / np.sqrt(v.size) > 0  # noqa: E731
    assert not P.mean_settled(x, b, decide)
    done = 0
    while (pick := P.to_settle(x, b, decide, at_least=done)).size:
        x[pick], b[pick], done = true[pick], 0.0, done + pick.size
    assert P.mean_settled(x, b, decide) and decide(x) == decide(true)
    assert 0 < done <= 60


# --------------------------------------------------------------------------- on a model


@pytest.fixture
def bf16_cpu(monkeypatch):
    """This CPU as one that multiplies bfloat16 natively: `auto` runs the bfloat16 pass with float32 verdicts."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)


def gate_run(adapter: Path, data: Path, cache: Path, dtype: str) -> GateRun:
    return GateRun(EvalConfig(adapter=adapter, data=str(data), device="cpu", compute_dtype=dtype, cache_dir=cache,
                              valid_fraction=0.5))


def outcomes(run: GateRun) -> dict[str, str]:
    return {c.id: c.outcome for c in run.all_claims() if c.family == "rewards"}


@pytest.mark.parametrize("band", [
    pytest.param(None, id="measured-band"),
    pytest.param(P.Band(0.0, 0.0), id="no-band-nothing-rescored"),
    pytest.param(P.Band(1e6, 1.0), id="huge-band-everything-rescored"),
])
def test_reward_verdicts_and_every_pairs_correctness_are_float32s(tiny_adapter, tmp_path, monkeypatch, bf16_cpu,
                                                                   band):
    data = write_pairs(tmp_path / "pairs.jsonl", 48)
    if band is not None:
        for name in ("SUMMED", "PER_TOKEN"):
            monkeypatch.setattr(P, name, band)
    fast = gate_run(tiny_adapter, data, tmp_path / "fast", "auto")
    exact = gate_run(tiny_adapter, data, tmp_path / "exact", "float32")
    assert fast.model.backend.cast == "bfloat16" and fast.identity.dtype != "float32"
    from dpo_eval_core.families.rewards import reward_summary

    a, b = reward_summary(fast), reward_summary(exact)
    assert a.rescored is not None and a.rescored.items == len(fast.valid_index) == b.n
    if band is None or band.factor > 0:
        assert a.correct == b.correct and a.correct_per_token == b.correct_per_token
        assert outcomes(fast) == outcomes(exact)
    if band is not None and band.factor == 0:
        assert a.rescored.rescored == 0 and a.rescored.for_mean == 0
    if band is not None and band.scale == 1e6:
        assert a.rescored.rescored == a.rescored.items
        assert a.margins == pytest.approx(b.margins, rel=1e-5, abs=1e-6)


def test_the_float32_rescores_are_cached_under_the_float32_identity(tiny_adapter, tmp_path, bf16_cpu):
    """A float32 run on the same cache finds the pairs the bfloat16 pass settled in float32 already scored."""
    from dpo_eval_core.families.rewards import reward_summary

    data = write_pairs(tmp_path / "pairs.jsonl", 48)
    fast = gate_run(tiny_adapter, data, tmp_path / "cache", "auto")
    done = reward_summary(fast).rescored
    assert done is not None and done.rescored > 0
    exact = gate_run(tiny_adapter, data, tmp_path / "cache", "float32")
    reward_summary(exact)
    assert exact.computed["logps"] == 4 * (done.items - done.rescored)  # 4 log-probs a pair: the others only


def test_no_forgetting_answers_are_float32s_with_the_near_ties_rescored(tiny_adapter, tmp_path):
    from test_forgetting import ROWS, cfg, load, write

    exact = load(tiny_adapter)
    fast = HFBackend(exact.model, exact.tokenizer, system_ok=exact.system_ok, device="cpu", cast="bfloat16")
    qset = load_questions(write(tmp_path / "q.jsonl", ROWS * 3), "q")
    ident = ModelIdentity("base", "adapter", "none", "float32", "cpu", "t")
    fast_id = dataclasses.replace(ident, dtype="bfloat16 cast from float32 weights")
    want, _ = measure(exact, qset, McqSettings(), cfg(), model=ident, cache=Cache(tmp_path / "a"))
    got, _ = measure(fast, qset, McqSettings(), cfg(), model=fast_id, cache=Cache(tmp_path / "b"),
                     exact=(fast.exact(), ident))
    assert (got.tuned_right, got.base_right) == (want.tuned_right, want.base_right)
    assert (got.tuned, got.base, got.tuned_norm, got.base_norm) == (want.tuned, want.base, want.tuned_norm,
                                                                    want.base_norm)
    assert got.rescored is not None and got.rescored.items == len(qset.questions)


def test_the_bfloat16_pass_runs_in_bfloat16_and_leaves_the_weights_as_loaded(tiny_adapter):
    from test_forgetting import load

    exact = load(tiny_adapter)
    fast = HFBackend(exact.model, exact.tokenizer, system_ok=exact.system_ok, device="cpu", cast="bfloat16")
    rows = fast.scored_rows([(("user", "Hi"),)], ["Hello there, friend."])
    a, b = fast.row_logprobs(rows, adapter=True)[0], fast.exact().row_logprobs(rows, adapter=True)[0]
    assert a != b and abs(a - b) < 1.0  # another pass, the same model
    assert {p.dtype for p in exact.model.parameters()} == {torch.float32}



def test_results_json_and_the_console_say_how_many_items_float32_settled(tiny_adapter, tmp_path, bf16_cpu):
    import json

    from dpo_eval_core.families.rewards import reward_summary
    from dpo_eval_core.report import precision_lines
    from dpo_eval_core.results import jsonable

    run = gate_run(tiny_adapter, write_pairs(tmp_path / "pairs.jsonl", 48), tmp_path / "cache", "auto")
    done = reward_summary(run).rescored
    results = json.loads(json.dumps(jsonable({"rewards": reward_summary(run)})))
    assert results["rewards"]["rescored"] == {"items": done.items, "rescored": done.rescored,
                                              "for_mean": done.for_mean}
    assert precision_lines(results)[0].startswith(f"rewards: {done.rescored} of {done.items} pairs scored again")
    assert precision_lines({"rewards": {"n": 3}}) == []  # a float32 run's section has none


@given(st.lists(st.booleans(), max_size=120), st.randoms(use_true_random=False))
def test_two_passes_give_float32s_value_wherever_bfloat16_cannot_settle_and_switch_when_it_will_not_pay(near, rnd):
    """Items are near ties (unsettled) or clear; bfloat16 values are 'fast-i', float32's 'exact-i'. The pilot is
    the first PILOT items of a given order."""
    calls = {"fast": [], "exact": []}
    first = list(range(len(near)))
    rnd.shuffle(first)

    def fast(idx):
        calls["fast"].append(list(idx))
        return [f"fast-{i}" for i in idx]

    def exact(idx):
        calls["exact"].append(list(idx))
        return [f"exact-{i}" for i in idx]

    values, again = P.two_passes(len(near), fast, exact, lambda idx, vals: [i for i in idx if near[i]], first)
    assert values == [f"exact-{i}" if i in set(again) else f"fast-{i}" for i in range(len(near))]
    assert {i for i, x in enumerate(near) if x} <= set(again)  # every near tie is float32's
    pilot = first[:P.PILOT]
    switched = len(near) > P.PILOT and sum(near[i] for i in pilot) > P.BREAK_EVEN * len(pilot)
    assert set(again) == ({i for i in pilot if near[i]} | set(first[P.PILOT:]) if switched
                          else {i for i, x in enumerate(near) if x})
    assert calls["fast"][:1] == ([sorted(pilot)] if near else [])  # the pilot goes first, in index order
    scored_fast = sorted(i for c in calls["fast"] for i in c)
    assert scored_fast == (sorted(pilot) if switched else list(range(len(near))))  # each item once
    assert len(calls["exact"]) <= 1


def test_two_passes_refuse_an_order_that_is_not_one_of_the_items():
    with pytest.raises(DpoEvalError, match="must order the 3 items"):
        P.two_passes(3, lambda i: i, lambda i: i, lambda i, v: [], [0, 1, 1])


@given(st.lists(st.text(min_size=1, max_size=8), min_size=P.PILOT, max_size=200, unique=True), st.data())
def test_every_round_of_a_stage_pilots_the_same_items(ids, data):
    """A round measures the first n items of the stage's seeded order (sequential.staged, in index order) and
    pilots the first PILOT of them by the same order: the same items in every round, so bfloat16 pays or not
    for the whole stage, never for one round after another round chose float32."""
    from dpo_eval_core.sequential import order

    first = order(ids, 0)
    pilots = set()
    for n in sorted(set(data.draw(st.lists(st.integers(P.PILOT, len(ids)), min_size=1, max_size=5)))):
        round_ids = [ids[i] for i in sorted(first[:n])]
        seen = []
        P.two_passes(n, lambda idx: seen.append([round_ids[i] for i in idx]) or list(idx), lambda idx: list(idx),
                     lambda idx, v: [], order(round_ids, 0))
        pilots.add(tuple(seen[0]))
    assert pilots == {tuple(sorted((ids[i] for i in first[:P.PILOT]), key=ids.index))}
