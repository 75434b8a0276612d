"""A training run gated checkpoint by checkpoint on one loaded base, and the checkpoint to ship.

Every checkpoint of the series (series.py) is gated on the gate model's claims (the quantization probes, which
load models of their own, run afterwards on the chosen one). The base loads once: each checkpoint's adapter is
joined to it under a name of its own, gated, and taken off again, so memory holds the base and one adapter at a
time beside the first. Everything is cached per checkpoint (its weights' digest), and the reference log-probs
and the base's answers are shared by all of them, so a re-run after training wrote one more checkpoint computes
that one alone.

The rule (`ship`): the latest checkpoint whose gating claims all pass. Choosing among N checkpoints is N chances
to pass a bad one, so each checkpoint decides at the gate's one-sided error divided by the N checkpoints gated
(Bonferroni): whichever checkpoint ships, the chance that it should not have stays at most the gate's error,
whatever the checkpoints have in common.
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .cache import Cache
from .claims import Claim
from .config import EvalConfig, GateConfig
from .errors import CheckpointError, ConfigError
from .families import forgetting
from .families.comparison import NOT_WORSE, items
from .families.judge import WIN as JUDGE_WIN
from .families.rewards import MARGIN as REWARD_MARGIN
from .models import LocalBases
from .run import GateRun
from .series import Checkpoint, Series
from .stages import Stage


GATED: Stage[list[str]] = Stage("series claims")
"""The gating claims a candidate of a series (a checkpoint, a load) was decided on: what its comparisons cover."""


@dataclass(frozen=True, slots=True)
class Gated:
    """One checkpoint's gating outcomes: claim id -> pass, fail or inconclusive (or why it was not gated)."""

    checkpoint: Checkpoint
    outcomes: Mapping[str, str]
    values: Mapping[str, float | None]
    intervals: Mapping[str, tuple[float, float] | None] = dataclasses.field(default_factory=dict)
    thresholds: Mapping[str, str] = dataclasses.field(default_factory=dict)
    drift: Mapping[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    """Per DRIFT feature: (median tuned - base over its answers, median chosen - rejected of the data on the same
    pairs); empty when the answers were not generated."""
    seconds: float = 0.0
    """Wall time of its claims (the base's load counts to the first checkpoint)."""
    computed: Mapping[str, int] = dataclasses.field(default_factory=dict)
    """What it computed rather than read from the cache (log-probs, answers, feature rows, questions)."""

    @property
    def passed(self) -> bool:
        return self.checkpoint.problem is None and bool(self.outcomes) and all(
            o == "pass" for o in self.outcomes.values())


@dataclass(frozen=True, slots=True)
class ShipDecision:
    """The checkpoint to ship (None: none can), and for every checkpoint why it was or was not chosen."""

    chosen: Checkpoint | None
    reasons: Mapping[str, str]
    rule: str


@dataclass(frozen=True, slots=True)
class SeriesResult:
    series: Series
    gated: tuple[Gated, ...]
    decision: ShipDecision
    tail: float
    """The one-sided error each checkpoint decided at: the gate's, divided by the checkpoints gated."""
    flag: str | None = None
    """Over-optimization, when seen (overoptimized)."""
    plateau: str | None = None
    """Whether the last two checkpoints are shown within the comparisons' margins of each other (plateau)."""


def series_gate(gate: GateConfig, n_checkpoints: int) -> GateConfig:
    """The gate each of `n_checkpoints` decides at: its one-sided error split evenly among them (Bonferroni)."""
    if n_checkpoints < 1:
        raise CheckpointError(f"a series of {n_checkpoints} checkpoints: nothing to gate. Point --adapter at a "
                              f"training run with at least one checkpoint holding adapter weights.")
    return dataclasses.replace(gate, ci_level=1 - (1 - gate.ci_level) / n_checkpoints)


RULE = ("the latest checkpoint whose gating claims all pass and that no other passing checkpoint is shown better "
        "than (a paired not-worse comparison that fails), each checkpoint deciding at the gate's one-sided error "
        "divided by the checkpoints gated")


def ship(gated: Sequence[Gated], worse: Mapping[str, Sequence[str]] | None = None) -> ShipDecision:
    """The latest checkpoint (training order) whose gating claims all pass and which `worse` (checkpoint name ->
    the comparisons that show it worse than another passing checkpoint) holds nothing against, with every other
    checkpoint's reason. An inconclusive comparison blocks nothing: only a shown difference moves the choice."""
    worse = worse or {}
    chosen = next((g.checkpoint for g in reversed(gated) if g.passed and not worse.get(g.checkpoint.name)), None)
    reasons = {}
    for g in gated:
        c = g.checkpoint
        if c.problem is not None:
            reasons[c.name] = f"not gated: {c.problem}"
        elif not g.passed:
            bad = [f"{k} {o}" for k, o in g.outcomes.items() if o != "pass"]
            reasons[c.name] = "does not pass: " + (", ".join(bad) if bad else "no gating claim was made")
        elif worse.get(c.name):
            reasons[c.name] = "passes, but is shown worse: " + "; ".join(worse[c.name])
        elif c is chosen:
            reasons[c.name] = (f"ships: every gating claim ({len(g.outcomes)}) passes, no passing checkpoint is "
                               f"shown better, and no later checkpoint is both")
        else:
            reasons[c.name] = f"passes, but {chosen.name if chosen else '?'} is later and passes too"
    return ShipDecision(chosen, reasons, RULE)


def shown_worse(runs: Mapping[str, GateRun], passing: Sequence[str]) -> dict[str, list[str]]:
    """For each passing checkpoint, the paired not-worse comparisons (each family's `compare`, on the items its
    `compared` names) against another passing checkpoint that fail: the data shows it worse than that one."""
    out: dict[str, list[str]] = {}
    for a in passing:
        for b in passing:
            if a != b:
                out.setdefault(a, []).extend(f"{c.id} than {b} fails ({c.message})"
                                             for c in compared(runs[a], runs[b]) if c.outcome == "fail")
    return out


def plateau(runs: Mapping[str, GateRun], names: Sequence[str]) -> str | None:
    """Whether the last two gated checkpoints are shown within the comparisons' margins of each other (not worse
    either way: a plateau), shown apart (still moving), or neither; None with fewer than two."""
    if len(names) < 2:
        return None
    a, b = names[-2], names[-1]
    ways = [c.outcome for c in (*compared(runs[b], runs[a]), *compared(runs[a], runs[b]))]
    if not ways:
        return None
    if all(o == "pass" for o in ways):
        return f"plateau: {b} and {a} are shown within every comparison's margin of each other"
    if "fail" in ways:
        return f"still moving: {b} and {a} are shown apart on at least one comparison"
    return f"convergence cannot be told: the data does not decide whether {b} and {a} differ"


def compared(run: GateRun, other: GateRun) -> list[Claim]:
    """`run` not worse than `other`, on every item the families that made this series' claims compare (their
    `compare` hooks, as --compare uses them), from the stages both runs computed."""
    made = {found[0].name for cid in (run.stages.computed(GATED) or ()) if (found := run.resolve(cid))}
    return [f.compare(run, other, item, NOT_WORSE.id(item))[0] for item, f in items(run).items()
            if f.name in made and f.compare is not None]


SERVED_AS = "{checkpoint}"
"""In --serve-model with a training run: each checkpoint's directory name (vLLM serves each checkpoint as a LoRA
module of its own: --lora-modules checkpoint-500=out/checkpoint-500 ...)."""


def for_checkpoint(cfg: EvalConfig, c: Checkpoint, gate: GateConfig) -> EvalConfig:
    """The gate's configuration for one checkpoint of a series: its adapter, the series' gate and, with --serve-url,
    its served name (--serve-model with SERVED_AS replaced by the checkpoint's directory name)."""
    if cfg.serve_url and cfg.serve_model and SERVED_AS not in cfg.serve_model:
        raise ConfigError("--serve-model", cfg.serve_model, f"a served name with {SERVED_AS} in it, with a training run",
                          f"Each checkpoint is asked for under its own served name. Serve them as LoRA modules named "
                          f"after their directories (vLLM: --lora-modules {c.name}={c.path} ...) and pass "
                          f"--serve-model '{SERVED_AS}' (or a pattern such as 'run1-{SERVED_AS}').")
    served = {"serve_model": cfg.serve_model.replace(SERVED_AS, c.name)} if cfg.serve_url and cfg.serve_model else {}
    return dataclasses.replace(cfg, adapter=c.path, gate=gate, **served)


def decided_on(run: GateRun, gate: GateConfig) -> list[str]:
    """The claims a candidate of a series is measured on: its gating claims and the WATCHED ones (not the
    per-feature claims that do not gate; the session on the chosen one makes those)."""
    return [cid for cid in run.claim_ids() if gate.gates(cid) or cid in WATCHED]


def entries_per_checkpoint(run: GateRun) -> int:
    """Cache entries a checkpoint adds at most: its policy's log-probs of both answers of each valid pair and a
    judge's verdicts in both orders, its answer to each answered prompt and that answer's features, and its score
    of each multiple-choice question (the base's entries are shared by the whole series)."""
    answered = len(run.pairs.answered(run.cfg.train_answers, run.cfg.seed))
    questions = (sum(len(q.questions) for q in forgetting.question_sets(run).values())
                 if forgetting.FAMILY.absent(run.cfg) is None else 0)
    return 4 * len(run.valid_index) + 2 * answered + questions


def gate_series(cfg: EvalConfig, series: Series, *, cache: Cache, local_bases: LocalBases | None = None,
                claims: Sequence[str] | None = None) -> SeriesResult:
    """Gate every checkpoint of `series` that can be gated on one loaded base (the gate model's claims, or the
    claim ids given), and choose the checkpoint to ship. `cfg` is the gate's configuration; its adapter is
    replaced by each checkpoint's and its gate by series_gate's."""
    todo = series.gated
    gate = series_gate(cfg.gate, len(todo))
    first: GateRun | None = None
    done: dict[str, Gated] = {}
    runs: dict[str, GateRun] = {}
    try:
        for c in todo:
            started = time.perf_counter()
            run = GateRun(for_checkpoint(cfg, c, gate), cache=cache, local_bases=local_bases, beside=first,
                          label=c.name)
            if first is None:
                cache.room(len(todo) * entries_per_checkpoint(run), f"gating {len(todo)} checkpoints of {c.path.parent}")
            made = [x for cid in (claims if claims is not None else decided_on(run, gate))
                    if (x := run.claim(cid)) is not None]
            run.stages.put(GATED, [x.id for x in made if gate.gates(x.id)])
            done[c.name] = dataclasses.replace(gated_of(c, made, gate, time.perf_counter() - started),
                                               drift=answer_drift(run), computed=dict(run.computed))
            runs[c.name] = run  # its stages stay for the comparisons; its model does not
            if first is None:
                first = run  # it holds the base for the others
            else:
                run.free()  # its adapter leaves the base
        passing = [n for n, g in done.items() if g.passed]
        worse, still = shown_worse(runs, passing), plateau(runs, list(runs))
    finally:
        if first is not None:
            first.free()
    gated = tuple(done.get(c.name, Gated(c, {}, {})) for c in series.checkpoints)
    return SeriesResult(series, gated, ship(gated, worse), gate.tail, overoptimized(gated), still)


DRIFT = ("n_tokens", "duplicate_ngram_chr_fraction_5", "top_ngram_chr_fraction_2")
"""Answer features in which DPO's over-optimization shows: length, duplicated 5-grams, the most repeated bigram."""
MARGIN = REWARD_MARGIN.id()
WIN_RATE = JUDGE_WIN.id()
WATCHED = (WIN_RATE,)
"""Claims a series draws and the over-optimization flag reads even where they do not gate: the judge's win rate
against the base (made with --judge)."""


def answer_drift(run: GateRun) -> dict[str, tuple[float, float]]:
    """Per DRIFT feature, how far the tuned answers moved from the base's (median tuned - base) and how far the
    data's chosen lie from its rejected (median chosen - rejected), on the pairs answered; empty when this run
    generated no answers (the features are then not computed for it)."""
    if "answers" not in run.__dict__:
        return {}
    from .features import FEATURE_NAMES

    a, d = run.answer_features, run.data_features
    rows = ~(np.isnan(a["tuned"]).all(axis=1) | np.isnan(a["base"]).all(axis=1))
    out = {}
    for name in DRIFT:
        j = FEATURE_NAMES.index(name)
        moved, data = a["tuned"][rows, j] - a["base"][rows, j], d["chosen"][rows, j] - d["rejected"][rows, j]
        if np.isfinite(moved).any() and np.isfinite(data).any():
            out[name] = (float(np.nanmedian(moved)), float(np.nanmedian(data)))
    return out


def overoptimized(gated: Sequence[Gated]) -> str | None:
    """DPO's known failure, flagged: the mean reward margin rose from the first checkpoint to the last while an
    answer feature of DRIFT moved further from the base's than the data's own chosen lie from its rejected, and
    further than at the first checkpoint, or while the judge's win rate against the base fell with the two
    checkpoints' intervals apart. A description, not a test (no error rate)."""
    seen = [g for g in gated if g.values.get(MARGIN) is not None]
    if len(seen) < 2:
        return None
    first, last = seen[0], seen[-1]
    if not last.values[MARGIN] > first.values[MARGIN]:  # type: ignore[operator]
        return None
    past = [f"{k}: tuned - base {m:+.3g} against the data's chosen - rejected {d:+.3g} ({first.checkpoint.name}: "
            f"{first.drift[k][0]:+.3g})" for k, (m, d) in last.drift.items()
            if abs(m) > abs(d) and k in first.drift and abs(m) > abs(first.drift[k][0])]
    was, now = first.intervals.get(WIN_RATE), last.intervals.get(WIN_RATE)
    if was and now and now[1] < was[0]:
        past.append(f"{WIN_RATE} fell from {first.values[WIN_RATE]:.3f} [{was[0]:.3f}, {was[1]:.3f}] to "
                    f"{last.values[WIN_RATE]:.3f} [{now[0]:.3f}, {now[1]:.3f}]")
    if not past:
        return None
    return (f"over-optimization: the reward margin rose from {first.values[MARGIN]:.3g} ({first.checkpoint.name}) "
            f"to {last.values[MARGIN]:.3g} ({last.checkpoint.name}) while the answers drifted past the data: "
            + "; ".join(past))


def gated_of(c: Checkpoint, claims: Sequence[Claim], gate: GateConfig, seconds: float) -> Gated:
    """A checkpoint's (or a load's) gating claims, as the series records them, and the WATCHED claims' values
    where they were made (drawn and read by the flag, never part of the verdict)."""
    kept = [x for x in claims if gate.gates(x.id) and x.applicable]
    shown = kept + [x for x in claims if x.id in WATCHED and x.applicable and not gate.gates(x.id)]
    return Gated(c, {x.id: x.outcome for x in kept}, {x.id: _number(x.value) for x in shown},
                 {x.id: x.ci for x in shown}, {x.id: x.threshold for x in shown}, seconds=seconds)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


def threshold_line(text: str) -> float | None:
    """The number a claim's value is held against, for the curves: where its threshold bounds the value's own
    interval ('CI low > 0.5', 'CI low > chance 0.250'), and for no-forgetting, whose value is tuned - base and
    which holds when the drop's upper bound is below the margin ('drop upper bound < 0.04': the gain's lower
    bound above -0.04); None otherwise."""
    number = r"(-?\d+(?:\.\d+)?(?:e-?\d+)?)"
    if found := re.fullmatch(rf"CI (?:low|high) [<>] (?:chance )?{number}", text.strip()):
        return float(found.group(1))
    if found := re.fullmatch(rf"drop upper bound < {number}", text.strip()):
        return -float(found.group(1))
    return None


def record(result: SeriesResult) -> dict[str, Any]:
    """The series for results.json: each checkpoint in training order with its step, outcomes, values and
    intervals, each claim's threshold line, the checkpoint to ship and every checkpoint's reason."""
    d = result.decision
    lines_at = {k: v for g in result.gated for k, t in g.thresholds.items() if (v := threshold_line(t)) is not None}
    return {"rule": d.rule, "tail": result.tail, "chosen": d.chosen.name if d.chosen else None,
            "notes": list(result.series.notes), "thresholds": lines_at, "overoptimization": result.flag,
            "convergence": result.plateau,
            "checkpoints": [{"name": g.checkpoint.name, "path": str(g.checkpoint.path), "step": g.checkpoint.step,
                             "step_from": g.checkpoint.step_from, "gated": g.checkpoint.problem is None,
                             "outcomes": dict(g.outcomes), "values": dict(g.values),
                             "drift": {k: list(v) for k, v in g.drift.items()},
                             "intervals": {k: list(v) if v else None for k, v in g.intervals.items()},
                             "computed": dict(g.computed), "seconds": round(g.seconds, 2),
                             "reason": d.reasons[g.checkpoint.name]} for g in result.gated]}


def series_of(results: Mapping[str, Any]) -> dict[str, Any]:
    """results.json's series: its `series` section, or a single adapter's results read as a series of one (its
    gating claims, under the same rule), so a reader of many runs needs one layout."""
    if isinstance(results.get("series"), Mapping):
        return dict(results["series"])
    facts = results.get("facts", {})
    kept = [c for c in results.get("claims", ()) if c.get("gating") and c.get("applicable", True)]
    if not facts.get("adapter"):
        raise CheckpointError("results.json holds no adapter and no series: it was written by a run that gated no "
                              "adapter (a data-only selection). Read the results of a run with --adapter.")
    one = Gated(Checkpoint(Path(facts["adapter"]), None, "one adapter"), {c["id"]: c["outcome"] for c in kept},
                {c["id"]: _number(c.get("value")) for c in kept},
                {c["id"]: tuple(c["ci"]) if c.get("ci") else None for c in kept},
                {c["id"]: c.get("threshold", "") for c in kept},
                seconds=sum(facts.get("timings_s", {}).values()), computed=facts.get("computed", {}))
    tail = facts.get("look", {}).get("tail", (1 - results.get("config", {}).get("gate", {}).get("ci_level", 0.95)) / 2)
    return record(SeriesResult(Series((one.checkpoint,)), (one,), ship([one]), tail))


def lines(result: SeriesResult) -> list[str]:
    """The console's account of the series: which checkpoint ships, and why each other one does not."""
    d = result.decision
    head = (f"series: {d.chosen.name} ships" if d.chosen else "series: no checkpoint can ship") + (
        f" ({len(result.gated)} checkpoints; rule: {d.rule}, here one-sided {result.tail:.3g} each)")
    return [head, *(f"  {g.checkpoint.name} (step {g.checkpoint.step}; {g.seconds:.0f} s; computed "
                    f"{', '.join(f'{k} {v}' for k, v in g.computed.items() if v) or 'nothing'}): "
                    f"{d.reasons[g.checkpoint.name]}" for g in result.gated),
            *(f"  note: {n}" for n in result.series.notes), *(f"  {x}" for x in (result.plateau, result.flag) if x)]
