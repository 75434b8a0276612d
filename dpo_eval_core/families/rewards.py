"""The implicit DPO reward prefers chosen over rejected on held-out pairs: accuracy summed and per token,
and a positive mean margin."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from .. import report as H
from ..claims import Claim, mean_above, not_lower_unpaired, not_worse, rate_above
from ..compare import compare_correct, compare_values, match
from ..data import PreferencePair
from ..errors import ConfigError
from ..family import Family, Kind
from ..precision import Rescored, to_settle, two_passes
from ..rewards import PairLogps, RewardSummary, margin_error, scorable, score_logps, summarize, unsettled
from ..scoring import exact_scorer, scorer
from ..sequential import Staged, at_tail, order, planned_rounds, planned_tail, rate_may_pass, staged, tails
from ..stages import Stage

if TYPE_CHECKING:
    from ..run import GateRun

REWARDS: Stage[RewardSummary] = Stage("rewards")

ACCURACY = Kind("reward-accuracy", "implicit DPO reward accuracy on the valid split: CI lower bound above the "
                                   "threshold", rate=True, validity=True)
PER_TOKEN = Kind("reward-accuracy-per-token", "the same accuracy with each reward divided by its completion's token "
                                              "count", rate=True, validity=True)
MARGIN = Kind("reward-margin", "mean reward margin on the valid split: CI above 0", validity=True)
FIELDS = {ACCURACY.name: "correct", PER_TOKEN.name: "correct_per_token", MARGIN.name: "margins"}
"""The per-pair values (RewardSummary fields) behind each claim: --compare and --baseline pair them by id."""


@dataclass(frozen=True, slots=True)
class Settings:
    min_reward_accuracy: float = 0.5
    """Lower CI bound of implicit-reward accuracy (summed and per token) on the valid split must exceed this."""
    beta: float = 0.1
    """DPO beta used to turn log-ratios into rewards (TRL's default)."""
    reward_tie_tolerance: float = 1e-6
    """Log-ratios within this share of |reference log-prob| (at least 1 nat) are ties, not preferences:
    batches of different shapes give log-probs equal only to float precision (~1e-7 relative in fp32)."""
    max_reward_accuracy_drop: float = 0.02
    """Margin of not-worse[reward-accuracy*] and not-lower[reward-accuracy*], in accuracy: two points of
    held-out preference pairs (with 15% of pairs changing between two adapters, about 3,000 pairs show it 4
    times in 5: docs/decisions.md)."""
    max_margin_drop: float = 0.1
    """Margin of not-worse[reward-margin], as a share of the other adapter's |mean margin|: rewards are in
    beta-scaled nats whose size depends on beta and the data, so the margin is relative; a tenth of the
    margin is a change no reviewer reads as a different adapter."""

    def __post_init__(self) -> None:
        for name in ("min_reward_accuracy", "max_reward_accuracy_drop", "max_margin_drop"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"rewards.{name}", getattr(self, name), "a number in [0, 1]")
        if not self.beta > 0:
            raise ConfigError("rewards.beta", self.beta, "a number > 0")
        if not 0 <= self.reward_tie_tolerance < 1e-2:
            raise ConfigError("rewards.reward_tie_tolerance", self.reward_tie_tolerance, "a number in [0, 0.01)")


def _score(run: GateRun, pairs: list[PreferencePair]) -> RewardSummary:
    """Implicit rewards of these pairs, from the policy's and the reference's log-probs (cached per pair). Under a
    bfloat16 pass with float32 verdicts, the pairs it cannot settle are scored again in float32 (all of them after
    a pilot that shows bfloat16 will not pay: precision.two_passes; the pilot is the first pairs of the seeded
    order, the same in every round), and so are the pairs, widest band first, that the margin's verdict needs to
    be float32's (precision.py)."""
    s, g = run.settings(FAMILY), run.gate
    exact = exact_scorer(run)
    with run.ledger.phase("rewards"):
        if exact is None:
            return _summary(run, _logps(run, scorer(run), pairs), pairs)
        logps, idx = two_passes(len(pairs), lambda idx: _logps(run, scorer(run), [pairs[i] for i in idx]),
                                lambda idx: _logps(run, exact, [pairs[i] for i in idx]),
                                lambda idx, values: [idx[j] for j in unsettled(values)],
                                order([p.pair_id for p in pairs], run.cfg.seed))
    summary = _summary(run, logps, pairs)
    levels = [at_tail(g, t) for t in tails(run, len(run.valid_index))]
    outcome = lambda x: tuple(mean_above(MARGIN.id(), x, 0.0, lv, "").outcome for lv in levels)  # noqa: E731
    done, for_mean = set(idx), 0
    while (more := to_settle(np.array(summary.margins), margin_error(logps, done, s.beta), outcome,
                             at_least=for_mean)).size:
        keep = scorable(logps)  # summary.margins are these pairs'
        pick = [keep[j] for j in more]
        with run.ledger.phase("rewards"):
            for i, x in zip(pick, _logps(run, exact, [pairs[i] for i in pick])):
                logps[i] = x
        done, for_mean = done | set(pick), for_mean + len(pick)
        summary = _summary(run, logps, pairs)
    return dataclasses.replace(summary, rescored=Rescored(len(pairs), len(done), for_mean))


def _logps(run: GateRun, scoring: tuple[Any, Any], pairs: list[PreferencePair]) -> list[PairLogps]:
    backend, identity = scoring
    logps, n = score_logps(backend, pairs, model=identity, cache=run.cache, batch_size=run.cfg.batch_size,
                           max_tokens=run.cfg.resolved_batch_tokens, max_length=run.cfg.max_length)
    run.ledger.count("logps", n)
    return logps


def _summary(run: GateRun, logps: list[PairLogps], pairs: list[PreferencePair]) -> RewardSummary:
    s = run.settings(FAMILY)
    return summarize(logps, s.beta, run.gate.ci_level, run.gate.n_bootstrap, np.random.default_rng(run.cfg.seed),
                     tie_tolerance=s.reward_tie_tolerance, pair_ids=[p.pair_id for p in pairs])


def _valid(run: GateRun) -> list[PreferencePair]:
    return [run.pairs.pairs[i] for i in run.valid_index]


def in_rounds(run: GateRun) -> Staged[RewardSummary]:
    """The valid pairs in rounds, stopping once the gating reward claims are decided (sequential.py)."""
    s, valid = run.settings(FAMILY), _valid(run)
    return staged(run, FAMILY.name, [p.pair_id for p in valid], lambda idx: _score(run, [valid[i] for i in idx]),
                  lambda m, g: rewards(m, s, g), lambda m, g: can_pass(m, s, g, len(valid)),
                  last_round_pass=frozenset({MARGIN.id()}))


def reward_summary(run: GateRun) -> RewardSummary:
    """Implicit rewards on the valid split: every pair, or those the last sequential round used."""
    def compute() -> RewardSummary:
        rounds = in_rounds(run).run
        return rounds.measured if rounds else _score(run, _valid(run))
    return run.stages.once(REWARDS, compute)


def can_pass(summary: RewardSummary, s: Settings, gate: Any, n_items: int) -> dict[str, bool]:
    """Whether each accuracy claim may still pass at `gate` with the pairs not yet scored
    (sequential.rate_may_pass; the margin's best case is unbounded: it is always waited for)."""
    total = n_items - summary.n_unscorable
    return {k.id(): rate_may_pass(sum(getattr(summary, FIELDS[k.name])), summary.n, total, s.min_reward_accuracy,
                                  gate) for k in (ACCURACY, PER_TOKEN)}


def rewards(summary: RewardSummary, s: Settings, gate: Any) -> list[Claim]:
    """reward-accuracy and reward-accuracy-per-token (exact interval above min_reward_accuracy) and
    reward-margin (t interval above 0); inconclusive where the interval straddles the line or the pairs are
    too few for any test (at least 6 at the default 95%)."""
    notes = (["every reward is exactly 0: policy and reference give identical log-probs (zero adapter, or the "
              "adapter is not active)"] if summary.all_zero else [])
    if summary.n_unscorable:
        notes.append(f"{summary.n_unscorable} pairs left out: the prompt alone fills --max-length (TRL drops them "
                     f"too)")
    why = "".join(f"; {n}" for n in notes)
    if summary.n == 0:
        return [Claim(k.id(), False, None, "", "", 0, "no valid pairs to score" + why) for k in FAMILY.kinds]
    t = s.min_reward_accuracy
    acc = rate_above(ACCURACY.id(), sum(summary.correct), summary.n, t, gate, "accuracy")
    per_token = rate_above(PER_TOKEN.id(), sum(summary.correct_per_token), summary.n, t, gate,
                           "accuracy of rewards per completion token")
    margin = mean_above(MARGIN.id(), summary.margins, 0.0, gate, "mean margin")
    return [dataclasses.replace(acc, message=acc.message + f", beta={summary.beta}" + why),
            dataclasses.replace(per_token, message=per_token.message +
                                f" (summed: {summary.accuracy.value:.3f}; length alone cannot move this one)" + why),
            dataclasses.replace(margin, message=margin.message + why)]


def claims(run: GateRun, _: str | None) -> list[Claim]:
    summary, rounds = reward_summary(run), in_rounds(run).run  # the summary is the report's section
    return list(rounds.claims) if rounds else rewards(summary, run.settings(FAMILY), run.gate)


def margin(what: str, other: float, s: Settings) -> tuple[float, str]:
    """The non-inferiority margin of a rate claim against `other`, in accuracy."""
    return s.max_reward_accuracy_drop, f"max_reward_accuracy_drop {s.max_reward_accuracy_drop}"


def relative(x: np.ndarray, y: np.ndarray, s: Settings) -> tuple[np.ndarray, float, str]:
    """not-worse[reward-margin] with its relative margin: mean(x) - mean(y) > -r |mean(y)| is
    mean(x - k y) > 0 with k = 1 - r sign(mean(y)), so the decision runs on the per-pair values x_i - k y_i
    against a margin of 0. The margin's own noise (it is estimated from y) is then in the interval: a margin
    computed from the data and treated as known passes 0.25 of the time at per-pair correlation 0.999."""
    k = 1.0 - s.max_margin_drop * float(np.sign(y.mean())) if y.size else 1.0
    return k * y, k, f"max_margin_drop {s.max_margin_drop}: this - {k:.4g} x the other's margin, pair by pair"


def compare(run: GateRun, other: GateRun, what: str, cid: str) -> tuple[Claim, dict[str, Any]]:
    """This adapter's per-pair values against the --compare adapter's, on the pairs both scored."""
    a, b = reward_summary(run), reward_summary(other)
    x, y = match(a.pair_ids, getattr(a, FIELDS[what]), b.pair_ids, getattr(b, FIELDS[what]))
    s = run.settings(FAMILY)
    if what == MARGIN.name:  # recorded as measured; decided on x_i - k y_i against 0
        scaled, _, text = relative(x, y, s)
        c, decided_on, m = compare_values(what, x, y), compare_values(what, x, scaled), 0.0
    else:
        c = decided_on = compare_correct(what, x, y)
        m, text = margin(what, c.other, s)
    claim = not_worse(cid, decided_on, m, text, run.gate, "this adapter", other.label)
    return claim, {"items": {what: c}}


def regressed(kind: Kind, summary: RewardSummary, baseline: Mapping[str, Any], s: Settings, gate: Any, cid: str
              ) -> Claim:
    """A rate of this run against the baseline's: paired on the pairs both scored when the baseline recorded
    per-pair values, else unpaired (Newcombe) with the reason."""
    field = FIELDS[kind.name]
    old = baseline.get(FAMILY.name) or {}
    if old.get("pair_ids") and old.get(field):
        c = compare_correct(kind.name, *match(summary.pair_ids, getattr(summary, field), old["pair_ids"], old[field]))
        if c.n == 0:
            return Claim(cid, False, None, "", "", 0, "no item was scored by both runs", applicable=False)
        m, text = margin(kind.name, c.other, s)
        return not_worse(cid, c, m, text, gate, f"{kind.name} now", "the baseline's", worse="REGRESSED",
                         units="pairs")
    current = rewards(summary, s, gate)[FAMILY.kinds.index(kind)]
    before = next((c for c in baseline.get("claims", []) if c["id"] == kind.id()), {})
    m, text = margin(kind.name, float(before.get("value") or 0.0), s)
    return not_lower_unpaired(cid, kind.name, before.get("value"), before.get("n"), current, m, text, gate,
                              "the baseline records no per-pair values (it was made by an older dpo-eval)")


def not_lower(run: GateRun, baseline: Mapping[str, Any], kind: Kind, cid: str) -> Claim:
    return regressed(kind, reward_summary(run), baseline, run.settings(FAMILY), run.gate, cid)


def report(results: Mapping[str, Any]) -> str:
    """Histogram of per-pair implicit reward margins on the valid split."""
    r = results.get(FAMILY.name)
    return H.section("Reward margin distribution", H.reward_margin_plot(r) if r else None)


def plan(run: GateRun) -> list[Any]:
    """The three rate claims; with --baseline, not-lower[...] of both accuracies too (the baseline's per-pair
    values give its rate)."""
    from ..plan import Assumptions, not_lower_chance, reward_chances
    from .regression import LOWER, active_baseline

    s, a, n = run.settings(FAMILY), Assumptions(), len(run.valid_index)
    rows = reward_chances((ACCURACY.id(), PER_TOKEN.id(), MARGIN.id()), n, s.min_reward_accuracy,
                          planned_tail(run, n), a, planned_rounds(run, n))
    old = (active_baseline(run) or {}).get(FAMILY.name) or {}
    for kind in (ACCURACY, PER_TOKEN):
        if values := old.get(FIELDS[kind.name]):
            rows.append(not_lower_chance(LOWER.id(kind.id()), n, "valid pairs", float(np.mean(values)),
                                         a.discordance, s.max_reward_accuracy_drop, run.look.tail))
    return rows


FAMILY = Family(
    "rewards", (ACCURACY, PER_TOKEN, MARGIN), claims, settings=Settings, rank=30, plan=plan,
    section=lambda run: {"rewards": run.stages.computed(REWARDS)} if REWARDS in run.stages else {}, report=report,
    compared=lambda run: tuple(FIELDS), compare=compare, not_lower=not_lower,
    doc="The adapter's implicit DPO reward prefers chosen over rejected on held-out pairs.")
