"""A training run gated checkpoint by checkpoint: the base loads once, every checkpoint's verdicts are those of
gating it alone, a checkpoint without weights is reported and cannot ship, a new checkpoint is all a re-run
computes, and the checkpoint to ship is the latest whose gating claims all pass, each at its share of the
gate's error."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from api_server import model_server
from tiny import load_backend, make_adapter, write_pairs

from dpo_eval_core import models as M
from dpo_eval_core.cache import Cache
from dpo_eval_core.claims import Claim
from dpo_eval_core.config import EvalConfig, GateConfig
from dpo_eval_core.errors import CacheError, CheckpointError, ConfigError
from dpo_eval_core.results import build_results, claim_record, run_sections
from dpo_eval_core.run import GateRun
from dpo_eval_core.report import series_html
from dpo_eval_core.series import Checkpoint, Series, find_series
from dpo_eval_core.training import (
    Gated,
    SeriesResult,
    gate_series,
    gated_of,
    lines,
    overoptimized,
    record,
    series_gate,
    series_of,
    ship,
    threshold_line,
)

REWARDS = ("reward-accuracy", "reward-accuracy-per-token", "reward-margin")
outcome = st.sampled_from(["pass", "fail", "inconclusive"])


@given(st.lists(st.tuples(st.dictionaries(st.sampled_from(REWARDS), outcome, max_size=3), st.booleans(),
                          st.booleans()), min_size=1, max_size=8))
def test_the_latest_passing_checkpoint_none_is_shown_better_than_ships_and_every_other_says_why(rows):
    gated = [Gated(Checkpoint(Path(f"checkpoint-{i}"), i, "trainer_state.json", None if ok else "no weights"),
                   outcomes, {}) for i, (outcomes, ok, _) in enumerate(rows)]
    worse = {g.checkpoint.name: ["not-worse[reward-accuracy] than checkpoint-0 fails"]
             for g, (_, _, bad) in zip(gated, rows) if bad}
    d = ship(gated, worse)
    eligible = [g.checkpoint for g in gated if g.checkpoint.problem is None and outcomes_pass(g.outcomes)
                and g.checkpoint.name not in worse]
    assert d.chosen == (eligible[-1] if eligible else None)
    assert set(d.reasons) == {g.checkpoint.name for g in gated}
    for g in gated:
        why = d.reasons[g.checkpoint.name]
        assert why.startswith("ships" if g.checkpoint == d.chosen else
                              "not gated" if g.checkpoint.problem else "does not pass" if not g.passed else
                              "passes, but is shown worse" if g.checkpoint.name in worse else "passes, but")


def outcomes_pass(outcomes: dict[str, str]) -> bool:
    return bool(outcomes) and all(o == "pass" for o in outcomes.values())


@pytest.mark.parametrize("n", [1, 2, 5, 20])
def test_each_checkpoint_decides_at_its_share_of_the_gates_error(n):
    gate = GateConfig()
    assert series_gate(gate, n).tail == pytest.approx(gate.tail / n)
    with pytest.raises(CheckpointError, match="nothing to gate"):
        series_gate(gate, 0)


def trained(base: Path, root: Path, steps: tuple[int, ...], no_weights: tuple[int, ...] = ()) -> Path:
    """A Trainer-style run directory: checkpoint-<step>/ with an adapter (a seed per step) and trainer_state.json."""
    for step in steps:
        d = root / f"checkpoint-{step}"
        if not d.exists():
            make_adapter(base, d, seed=step, scale=0.05 * step)
            (d / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
        if step in no_weights:
            (d / M.ADAPTER_WEIGHTS).unlink()
    return root


def config(run_dir: Path, data: Path, cache: Path) -> EvalConfig:
    return EvalConfig(adapter=run_dir, data=str(data), device="cpu", compute_dtype="float32", cache_dir=cache,
                      valid_fraction=0.5)


def test_a_series_loads_the_base_once_and_each_checkpoint_gets_the_verdicts_it_gets_alone(tiny_llama, tmp_path,
                                                                                         monkeypatch):
    run_dir = trained(tiny_llama, tmp_path / "run", (10, 20, 30, 40), no_weights=(40,))
    data = write_pairs(tmp_path / "pairs.jsonl", 48)
    loads = []
    load = M.load_gate_model
    monkeypatch.setattr(M, "load_gate_model", lambda *a, **k: loads.append(a) or load(*a, **k))
    series = find_series(run_dir)
    result = gate_series(config(run_dir, data, tmp_path / "cache"), series, cache=Cache(tmp_path / "cache"),
                         claims=REWARDS)
    assert len(loads) == 1
    assert [g.checkpoint.step for g in result.gated] == [10, 20, 30, 40]
    assert result.tail == pytest.approx(GateConfig().tail / 3)  # three checkpoints could be gated
    for g in result.gated[:3]:
        alone = GateRun(dataclasses.replace(config(g.checkpoint.path, data, tmp_path / f"alone-{g.checkpoint.step}"),
                                            gate=series_gate(GateConfig(), 3)))
        claims = {c.id: c for c in (alone.claim(i) for i in REWARDS) if c is not None}
        assert g.outcomes == {k: c.outcome for k, c in claims.items()}
        assert g.values == pytest.approx({k: c.value for k, c in claims.items()}, rel=1e-6)
        alone.free()
    assert len({tuple(g.values.values()) for g in result.gated[:3]}) == 3  # each checkpoint its own adapter
    last = result.gated[3]
    assert not last.outcomes and M.ADAPTER_WEIGHTS in result.decision.reasons["checkpoint-40"]
    assert result.decision.chosen is None or result.decision.chosen.step != 40
    json.dumps(record(result), allow_nan=False)
    assert lines(result)[0].startswith("series: ")
    assert result.plateau is not None and "checkpoint-30" in result.plateau  # the last two gated, compared


def test_a_rerun_after_one_more_checkpoint_computes_only_that_one(tiny_llama, tmp_path):
    data = write_pairs(tmp_path / "pairs.jsonl", 48)
    run_dir = trained(tiny_llama, tmp_path / "run", (10, 20))
    gate_series(config(run_dir, data, tmp_path / "cache"), find_series(run_dir), cache=Cache(tmp_path / "cache"),
                claims=REWARDS)
    trained(tiny_llama, run_dir, (10, 20, 30))
    cache = Cache(tmp_path / "cache")
    result = gate_series(config(run_dir, data, tmp_path / "cache"), find_series(run_dir), cache=cache,
                         claims=REWARDS)
    n_valid = len(GateRun(config(run_dir, data, tmp_path / "x")).valid_index)
    assert [g.checkpoint.step for g in result.gated] == [10, 20, 30] and result.decision.reasons
    assert [sum(g.computed.values()) == 0 for g in result.gated] == [True, True, False]  # said per checkpoint
    assert cache.stats()["misses"].get("logp") == 2 * n_valid  # its policy log-probs; the reference is shared


def test_a_single_adapters_results_read_as_a_series_of_one(tiny_adapter, tmp_path):
    data = write_pairs(tmp_path / "pairs.jsonl", 48)
    run = GateRun(config(tiny_adapter, data, tmp_path / "cache"))
    claims = [c for c in (run.claim(i) for i in REWARDS) if c is not None]
    results = json.loads(json.dumps(build_results(run_sections(run), [claim_record(c, True) for c in claims])))
    one = series_of(results)
    [c] = one["checkpoints"]
    assert c["name"] == tiny_adapter.name and c["step"] is None and c["gated"]
    assert c["outcomes"] == {x.id: x.outcome for x in claims}
    assert c["intervals"] == {x.id: list(x.ci) if x.ci else None for x in claims}
    passed = all(x.outcome == "pass" for x in claims)
    assert one["chosen"] == (tiny_adapter.name if passed else None)
    assert c["reason"].startswith("ships" if passed else "does not pass")
    assert set(one) == set(record(SeriesResult(Series(()), (), ship([]), 0.0)))  # the layout of a real series
    assert series_of({"series": one, "claims": []}) == one
    with pytest.raises(CheckpointError, match="no adapter"):
        series_of({"facts": {}, "claims": []})


def test_a_served_series_asks_each_checkpoint_under_its_own_name_and_answers_as_local_generation(tiny_llama,
                                                                                                    tmp_path):
    run_dir = trained(tiny_llama, tmp_path / "run", (10, 20))
    data = write_pairs(tmp_path / "pairs.jsonl", 24)
    backend = load_backend(run_dir / "checkpoint-10")  # a server holding both checkpoints as LoRA modules
    M.add_adapter(backend.model, M.resolve(EvalConfig(adapter=run_dir / "checkpoint-20")), "ckpt-20")
    server = model_server(backend, {"run1-checkpoint-10": True, "run1-checkpoint-20": "ckpt-20", "base": False},
                          "base")
    try:
        served = dataclasses.replace(config(run_dir, data, tmp_path / "cache"), serve_url=server.url,
                                     serve_model="run1-{checkpoint}", serve_base_model="base", max_new_tokens=8)
        result = gate_series(served, find_series(run_dir), cache=Cache(tmp_path / "cache"),
                             claims=("adapter-changes-answers",))
        asked = {r["body"]["model"] for r in server.requests if r["body"].get("max_tokens", 0) > 1}
        with pytest.raises(ConfigError, match=r"\{checkpoint\}"):
            gate_series(dataclasses.replace(served, serve_model="run1"), find_series(run_dir),
                        cache=Cache(tmp_path / "cache"), claims=("adapter-changes-answers",))
        answers = {g.checkpoint.name: GateRun(dataclasses.replace(
            served, adapter=g.checkpoint.path, serve_model=f"run1-{g.checkpoint.name}"),
            cache=Cache(tmp_path / "cache")).answers["tuned"] for g in result.gated}  # from the cache
    finally:
        server.close()
    assert asked == {"run1-checkpoint-10", "run1-checkpoint-20", "base"}
    first, second = result.gated
    assert first.computed["generations_base"] > 0 and not second.computed.get("generations_base")  # base shared
    assert first.computed["generations_tuned"] == second.computed["generations_tuned"] > 0
    for g in result.gated:  # each checkpoint's served answers are its local greedy answers
        local = GateRun(dataclasses.replace(config(g.checkpoint.path, data, tmp_path / f"local-{g.checkpoint.step}"),
                                            max_new_tokens=8))
        assert [a.text if a else None for a in local.answers["tuned"]] == [
            a.text if a else None for a in answers[g.checkpoint.name]]
        local.free()
    assert answers["checkpoint-10"] != answers["checkpoint-20"]


class Disk:
    """os.statvfs of a disk with `blocks` free 4 KiB blocks and `files` free inodes (0 of 0: not counted)."""

    def __init__(self, blocks: int, files: int) -> None:
        self.f_bavail, self.f_frsize, self.f_favail, self.f_files = blocks, 4096, files, files


@pytest.mark.parametrize("disk,short", [(Disk(10, 10**9), "MB are free"), (Disk(10**9, 50), "files and 50 are free")],
                         ids=["bytes", "inodes"])
def test_a_series_too_large_for_the_cache_disk_is_refused_before_the_base_loads(tiny_llama, tmp_path, monkeypatch,
                                                                                disk, short):
    run_dir = trained(tiny_llama, tmp_path / "run", (10, 20, 30))
    data = write_pairs(tmp_path / "pairs.jsonl", 48)
    monkeypatch.setattr("dpo_eval_core.cache.os.statvfs", lambda _: disk)
    monkeypatch.setattr(M, "load_gate_model", lambda *a, **k: pytest.fail("the base loaded before the refusal"))
    with pytest.raises(CacheError) as e:
        gate_series(config(run_dir, data, tmp_path / "cache"), find_series(run_dir), cache=Cache(tmp_path / "cache"),
                    claims=REWARDS)
    probe = GateRun(config(run_dir / "checkpoint-10", data, tmp_path / "x"))
    answered = len(probe.pairs.answered(probe.cfg.train_answers, probe.cfg.seed))  # valid and --train-answers
    entries = 3 * (4 * len(probe.valid_index) + 2 * answered)  # log-probs, judge verdicts; answers, features
    assert f"gating 3 checkpoints of {run_dir} needs up to" in str(e.value) and f"{entries:,}" in str(e.value)
    assert short in str(e.value) and "--eval-cache-dir" in str(e.value) and "fewer checkpoints" in str(e.value)
    Cache(tmp_path / "off", enabled=False).room(10**12, "nothing is written")  # --no-cache needs no room


GATE_TEST = """
import pytest

@pytest.mark.claim("adapter-loads")
def test_adapter_loads(claim_id, check_claim):
    check_claim(claim_id)

@pytest.mark.claim("reward-margin")
def test_reward_margin(claim_id, check_claim):
    check_claim(claim_id)
"""


@pytest.fixture(scope="module")
def run_dir(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Made before pytester snapshots sys.modules: peft imports bitsandbytes, whose torch ops register once."""
    return trained(tiny_llama, tmp_path_factory.mktemp("run"), (10, 20, 30), no_weights=(30,))


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_pytest_on_a_run_directory_gates_the_series_and_then_the_checkpoint_to_ship(pytester, run_dir, tmp_path,
                                                                                    workers):
    pytester.makepyfile(test_gate=GATE_TEST)
    results = tmp_path / "results.json"
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", *workers, "--adapter", str(run_dir), "--data",
        str(write_pairs(tmp_path / "pairs.jsonl", 24)), "--results", str(results), "--eval-cache-dir",
        str(tmp_path / "cache"), "--gate", "gating=adapter-loads", "--compute-dtype", "float32")
    out = result.stdout.str()
    assert result.ret == 0, out + result.stderr.str()
    assert "series: checkpoint-20 ships" in out
    assert "checkpoint-30 (step 30; 0 s; computed nothing): not gated" in out
    data = json.loads(results.read_text())
    assert data["series"]["chosen"] == "checkpoint-20"
    assert [c["step"] for c in data["series"]["checkpoints"]] == [10, 20, 30]
    assert data["facts"]["adapter"] == str(run_dir / "checkpoint-20")  # the session gated the one to ship
    assert data["series"]["tail"] == pytest.approx(0.025 / 2)
    page = results.with_suffix(".html").read_text()
    assert "Training run: checkpoint-20 ships" in page and "data:image/png;base64," in page


def test_a_checkpoint_pattern_for_one_served_adapter_is_refused_naming_the_fix(pytester, tiny_adapter, tmp_path):
    pytester.makepyfile(test_gate=GATE_TEST)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--adapter", str(tiny_adapter), "--data", str(write_pairs(tmp_path / "p.jsonl", 8)),
        "--serve-url", "http://127.0.0.1:9/v1", "--serve-model", "{checkpoint}", "--serve-base-model", "base",
        "--eval-cache-dir", str(tmp_path / "cache"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "is one adapter: pass the name the server serves it under" in result.stderr.str() + result.stdout.str()


@pytest.mark.parametrize("text,line", [("CI low > 0.5", 0.5), ("CI low > 0", 0.0), ("CI low > chance 0.250", 0.25),
                                       ("drop upper bound < 0.04", -0.04), ("increase upper bound < 0.05", None),
                                       ("", None)],
                         ids=["rate", "margin", "chance", "forgetting-gain-above-minus-margin", "other-scale", "none"])
def test_the_curves_draw_a_threshold_only_where_it_bounds_the_value_itself(text, line):
    assert threshold_line(text) == line


def test_the_report_shows_the_curves_and_every_checkpoints_reason():
    gated = [Gated(Checkpoint(Path(f"checkpoint-{s}"), s, "trainer_state.json"), {"reward-accuracy": o},
                   {"reward-accuracy": v}, {"reward-accuracy": (v - 0.1, v + 0.1)}, {"reward-accuracy": "CI low > 0.5"})
             for s, o, v in ((10, "inconclusive", 0.55), (20, "pass", 0.7), (30, "fail", 0.4))]
    gated.append(Gated(Checkpoint(Path("checkpoint-40"), 40, "name: no trainer_state.json", "no weights"), {}, {}))
    result = SeriesResult(Series(tuple(g.checkpoint for g in gated)), tuple(gated), ship(gated), 0.025 / 3)
    rec = json.loads(json.dumps(record(result)))
    assert rec["chosen"] == "checkpoint-20" and rec["thresholds"] == {"reward-accuracy": 0.5}
    page = series_html({"series": rec})
    assert "data:image/png;base64," in page and "checkpoint-20 ships" in page
    assert all(f"checkpoint-{s} (step {s})" in page for s in (10, 20, 30, 40)) and "not gated: no weights" in page
    assert series_html({}) == ""


def drifting(step: int, margin: float, moved: float, data: float = -20.0) -> Gated:
    return Gated(Checkpoint(Path(f"checkpoint-{step}"), step, "trainer_state.json"), {"reward-margin": "pass"},
                 {"reward-margin": margin}, drift={"n_tokens": (moved, data)})


@pytest.mark.parametrize("series,flagged", [
    ([drifting(1, 0.5, -5.0), drifting(2, 2.0, 35.0)], True),     # margin up, answers 35 tokens longer: past 20
    ([drifting(1, 0.5, -5.0), drifting(2, 2.0, -15.0)], False),   # margin up, within the data's own difference
    ([drifting(1, 2.0, -5.0), drifting(2, 0.5, 35.0)], False),    # margin down: not DPO's failure
    ([drifting(1, 0.5, 40.0), drifting(2, 2.0, 35.0)], False),    # already past the data at the start: no drift
    ([drifting(1, 0.5, -5.0)], False),                            # one checkpoint: no trend
], ids=["rising-margin-longer-answers", "within-the-data", "falling-margin", "no-further-drift", "one-checkpoint"])
def test_over_optimization_is_flagged_when_the_margin_rises_while_answers_drift_past_the_data(series, flagged):
    flag = overoptimized(series)
    assert (flag is not None) == flagged
    if flagged:
        assert "n_tokens" in flag and "checkpoint-2" in flag


def judged(step: int, margin: float, win: float, half_width: float) -> Gated:
    return Gated(Checkpoint(Path(f"checkpoint-{step}"), step, "trainer_state.json"), {"reward-margin": "pass"},
                 {"reward-margin": margin, "judge-win-rate": win},
                 {"judge-win-rate": (win - half_width, win + half_width)})


@pytest.mark.parametrize("series,flagged", [
    ([judged(1, 0.5, 0.70, 0.05), judged(2, 2.0, 0.50, 0.05)], True),   # margin up, win rate down, apart
    ([judged(1, 0.5, 0.70, 0.15), judged(2, 2.0, 0.50, 0.15)], False),  # the intervals overlap: could be noise
    ([judged(1, 2.0, 0.70, 0.05), judged(2, 0.5, 0.50, 0.05)], False),  # margin down
], ids=["win-rate-fell", "within-noise", "falling-margin"])
def test_over_optimization_is_flagged_when_the_margin_rises_while_the_judges_win_rate_falls(series, flagged):
    flag = overoptimized(series)
    assert (flag is not None) == flagged
    if flagged:
        assert "judge-win-rate fell from 0.700 [0.650, 0.750] to 0.500 [0.450, 0.550]" in flag


def test_the_judges_win_rate_is_drawn_and_watched_but_never_part_of_a_checkpoints_verdict():
    def claim(cid: str, passed: bool, value: float) -> Claim:
        return Claim(cid, passed, value, "CI low > 0.5", "Wilson", 40, "", ci=(value - 0.1, value + 0.1))
    g = gated_of(Checkpoint(Path("checkpoint-1"), 1, "trainer_state.json"),
                 [claim("reward-accuracy", True, 0.8), claim("judge-win-rate", False, 0.45)], GateConfig(), 1.0)
    assert g.outcomes == {"reward-accuracy": "pass"} and g.passed
    assert g.values["judge-win-rate"] == 0.45 and g.intervals["judge-win-rate"] == pytest.approx((0.35, 0.55))


def test_the_quantization_axis_gates_each_load_and_compares_it_with_the_unquantized_one(tiny_adapter, tmp_path):
    from dpo_eval_core import loads as L

    cfg = config(tiny_adapter, write_pairs(tmp_path / "pairs.jsonl", 48), tmp_path / "cache")
    loads = L.gate_loads(cfg, cache=Cache(tmp_path / "cache"), claims=REWARDS)
    assert [x.quant for x in loads] == ["none", "8bit", "4bit"]
    assert loads[0].against_none == ()
    for x in loads[1:]:
        assert {c.id for c in x.against_none} == {f"not-worse[{k}]" for k in REWARDS}
        assert x.gated.values["reward-margin"] != loads[0].gated.values["reward-margin"]  # another model
        assert x.servable == (x.gated.passed and all(c.outcome != "fail" for c in x.against_none))
    rec = json.loads(json.dumps(L.record(loads), allow_nan=False))
    assert [r["quant"] for r in rec["loads"]] == ["none", "8bit", "4bit"] and all(r["reason"] for r in rec["loads"])
    assert L.lines(loads)[0].startswith("quantization axis: ")


def smallest_passing(n: int, gate: GateConfig) -> int:
    """The fewest right pairs of n with which reward-accuracy passes at `gate` (n + 1: never)."""
    from dpo_eval_core.claims import rate_above

    return next((k for k in range(n // 2, n + 1) if rate_above("r", k, n, 0.5, gate, "").passed), n + 1)


@pytest.mark.parametrize("n", [3, 30, 300, 3000], ids=lambda n: f"{n}-pairs")
@pytest.mark.parametrize("n_checkpoints", [1, 4, 12], ids=lambda k: f"{k}-checkpoints")
def test_a_series_at_the_threshold_ships_no_more_often_than_one_adapters_error(n_checkpoints, n):
    """Every checkpoint exactly at the threshold (accuracy 0.5), independent pairs (the union bound's worst
    case): the chance that any checkpoint passes, so that one ships, computed exactly from the binomial."""
    from scipy.stats import binom

    k = smallest_passing(n, series_gate(GateConfig(), n_checkpoints))
    any_passes = 1 - binom.cdf(k - 1, n, 0.5) ** n_checkpoints if k <= n else 0.0
    print(f"{n_checkpoints} checkpoints, {n} pairs: a bad one ships with chance {any_passes:.4f}")
    assert any_passes <= GateConfig().tail
    if n <= 3:
        assert k > n  # nothing passes on 3 pairs
    naive = smallest_passing(n, GateConfig())  # every checkpoint at the full error: the choice inflates it
    naive_ships = 1 - binom.cdf(naive - 1, n, 0.5) ** n_checkpoints
    if n_checkpoints == 12 and n >= 300:
        assert naive_ships > 2 * GateConfig().tail


def test_a_series_of_clustered_checkpoints_and_its_power_simulated():
    """Checkpoints that share most of their pairs' outcomes (a run's neighbours differ on 10% of pairs): at the
    threshold the ship rate stays within the error; a good run (accuracy 0.65 at 300 pairs) still ships."""
    rng = np.random.default_rng(0)
    n, n_checkpoints, sims = 300, 6, 4000
    k = smallest_passing(n, series_gate(GateConfig(), n_checkpoints))
    for p, check in ((0.5, lambda rate: rate <= GateConfig().tail), (0.65, lambda rate: rate >= 0.8)):
        shared = rng.random((sims, n)) < p
        own = rng.random((sims, n_checkpoints, n)) < p
        moved = rng.random((sims, n_checkpoints, n)) < 0.1
        right = np.where(moved, own, shared[:, None, :]).sum(axis=2)
        rate = float((right >= k).any(axis=1).mean())
        print(f"accuracy {p}: some checkpoint of {n_checkpoints} ships in {rate:.4f} of {sims} runs")
        assert check(rate)
