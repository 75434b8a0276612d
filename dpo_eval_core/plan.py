"""The plan before the work: how likely a good adapter is to pass each gating claim with the data given, the
whole gate's chance (every gating claim must pass, so the chances multiply), and the sizes that would give
80%. Computed from the data's sizes and the claims' thresholds and margins, before any model loads, so a
run that cannot pass a good adapter says so before it spends an hour finding out.

A good adapter is a stated assumption, not a measurement (Assumptions); the chances are exact (binomial and
trinomial enumeration, operating.py) except the mean margin's, which is the normal approximation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

from . import operating as O
from .looks import Look
from .stages import Stage

POWER = 0.8
FLOOR = 0.5
"""Below this whole-gate chance the plan warns before the work starts."""
LIKELY = 0.5
"""In rounds, the plan names the first round at which a good adapter passes with at least this chance."""
Rounds = tuple[tuple[int, float], ...]
"""A stage's rounds before the work (sequential.planned_rounds): items after each round and the one-sided error
it decides at; empty where the stage takes every item at once."""


@dataclass(frozen=True, slots=True)
class Assumptions:
    """What the plan takes a good adapter to be (the figures of a modest real DPO adapter on held-out pairs)."""

    reward_accuracy: float = 0.62
    reward_accuracy_per_token: float = 0.58
    margin_effect: float = 0.25
    """Mean reward margin in SDs of the per-pair margins."""
    direction_agreement: float = 0.8
    """Chance that each independent signal direction of the data follows the preference."""
    discordance: float = 0.15
    """Share of multiple-choice answers that change between tuned and base (no true drop)."""

    def describe(self) -> str:
        return (f"reward accuracy {self.reward_accuracy}, per token {self.reward_accuracy_per_token}, mean margin "
                f"{self.margin_effect} SD, each signal direction agreeing with probability "
                f"{self.direction_agreement}, {self.discordance:.0%} of multiple-choice answers changing with no "
                f"true drop")


@dataclass(frozen=True, slots=True)
class ClaimChance:
    claim: str
    n: int
    units: str
    chance: float
    n_for_80: int | None
    """Items (of `units`) that give 80%; None when no number would."""
    note: str = ""
    passed_by: int | None = None
    """In rounds: the items of the first round at which a good adapter passes with chance LIKELY or more, so
    about where its stage stops scoring for this claim; None where the stage takes every item at once or no round
    gets there."""


@dataclass(frozen=True, slots=True)
class Plan:
    claims: tuple[ClaimChance, ...]
    assumptions: Assumptions
    look: Look | None = None
    """The look the chances are for (a later look decides at a smaller share of the error)."""

    @property
    def whole(self) -> float:
        return math.prod(c.chance for c in self.claims)

    def lines(self) -> list[str]:
        """The plan as console lines."""
        out = [f"plan: the chance that a good adapter passes each gating claim with this data (assuming "
               f"{self.assumptions.describe()}; the words: docs/glossary.md):"]
        if self.look is not None:
            out.append(f"  {self.look.line()}")
        for c in self.claims:
            need = (f"; {POWER:.0%} needs {c.n_for_80:,} {c.units}" if c.n_for_80 and c.chance < POWER else
                    "" if c.chance >= POWER else f"; no number of {c.units} gives {POWER:.0%}")
            by = f"; in rounds likely passed by {c.passed_by:,}" if c.passed_by is not None else ""
            out.append(f"  {c.claim:<36} {c.chance:6.1%} on {c.n:,} {c.units}{need}{by}{c.note}")
        out.append(f"  {'whole gate':<36} {self.whole:6.1%}")
        if self.whole < FLOOR:
            out.append(f"  below {FLOOR:.0%}: a good adapter would fail this gate more often than it passes. Two ways "
                       "out: more data (the sizes above), or a wider margin the team accepts (--gate "
                       "forgetting.max_forgetting=...); or leave a claim out of --gate gating.")
        return out

    def record(self) -> dict:
        return {"assumptions": self.assumptions.describe(), "whole_gate": self.whole, "floor": FLOOR,
                "look": None if self.look is None else self.look.number,
                "claims": [{"claim": c.claim, "n": c.n, "units": c.units, "chance": c.chance,
                            "n_for_80": c.n_for_80, "passed_by": c.passed_by, "note": c.note.strip("; ")}
                           for c in self.claims]}


PLAN: Stage[Plan] = Stage("plan")
"""The plan before the work, made once by the session that computes it."""


def plan_of(run: object, families: Sequence[object]) -> Plan:
    """The plan of a run: every gating claim the collected families can give a chance for."""
    gate = run.cfg.gate  # type: ignore[attr-defined]
    rows = [c for f in families if f.plan is not None and f.absent(run.cfg) is None  # type: ignore[attr-defined]
            for c in f.plan(run) if gate.gates(c.claim)]  # type: ignore[attr-defined]
    return Plan(tuple(rows), Assumptions(), run.look if rows else None)  # type: ignore[attr-defined]


def _margin_chance(n: int, effect: float, tail: float) -> float:
    from scipy.stats import norm

    return float(norm.cdf(effect * math.sqrt(n) - norm.isf(tail))) if n >= 6 else 0.0


def _normal_size(z_sum: float, variance: float, margin: float) -> int:
    return max(6, math.ceil(z_sum ** 2 * variance / margin ** 2))


def passed_by(rounds: Rounds, chance_at: Callable[[int, float], float]) -> int | None:
    """The items of the first round whose own test a good adapter passes with chance LIKELY or more: a claim keeps
    its first pass, so its chance to have passed by then is at least that (less the rare false fail before it)."""
    return next((n for n, tail in rounds if chance_at(n, tail) >= LIKELY), None)


def reward_chances(ids: tuple[str, str, str], valid_pairs: int, min_reward_accuracy: float, tail: float,
                   a: Assumptions, rounds: Rounds = ()) -> list[ClaimChance]:
    """The reward accuracy and its per-token twin (exact binomial) and the mean margin (normal approximation):
    `ids` names the three claims, in that order. In `rounds` the margin, a mean, passes only at the last one
    (sequential.py), so a good adapter's reward stage scores every pair."""
    from scipy.stats import norm

    z = float(norm.isf(tail)) + float(norm.ppf(POWER))
    level = 1 - 2 * tail
    rows = [ClaimChance(cid, valid_pairs, "valid pairs",
                        O.proportion_pass_rate(valid_pairs, p, min_reward_accuracy, level),
                        O.size_for(POWER, lambda m, p=p: O.proportion_pass_rate(m, p, min_reward_accuracy, level),
                                   cap=200_000),
                        passed_by=passed_by(rounds, lambda n, t, p=p: O.proportion_pass_rate(
                            n, p, min_reward_accuracy, 1 - 2 * t)))
            for cid, p in ((ids[0], a.reward_accuracy), (ids[1], a.reward_accuracy_per_token))]
    margin = _margin_chance(valid_pairs, a.margin_effect, tail)
    waits = ("; a mean passes only at the last round, so its stage scores every pair to pass it (left out of "
             "gate.gating, the rates stop the stage)") if rounds else ""
    return rows + [ClaimChance(ids[2], valid_pairs, "valid pairs", margin, _normal_size(z, 1.0, a.margin_effect),
                               waits, passed_by(rounds[-1:], lambda n, t: margin))]


def agreement_chance(cid: str, directions: int, min_agreement: float, tail: float, a: Assumptions) -> ClaimChance:
    """The sign-agreement rate over the data's signal directions (exact binomial)."""
    level = 1 - 2 * tail
    k80 = O.size_for(POWER, lambda k: O.agreement_pass_rate(k, a.direction_agreement, min_agreement, level), cap=4096)
    return ClaimChance(cid, directions, "signal directions", O.agreement_pass_rate(
        directions, a.direction_agreement, min_agreement, level), k80, "; directions come from the data (more train pairs "
        "whose chosen and rejected differ show more of them)")


def forgetting_chance(cid: str, questions: int, max_forgetting: float, tail: float, a: Assumptions,
                      units: str = "questions", rounds: Rounds = ()) -> ClaimChance:
    """A paired non-inferiority of two proportions with no true drop, `a.discordance` of the items changing: no
    forgetting on one set, no more harmful answers (exact trinomial; the 80% size by the normal approximation)."""
    from scipy.stats import norm

    z = float(norm.isf(tail)) + float(norm.ppf(POWER))
    half = a.discordance / 2
    return ClaimChance(cid, questions, units, O.paired_pass_rate(questions, half, half, max_forgetting, tail),
                       _normal_size(z, a.discordance, max_forgetting), passed_by=passed_by(
                           rounds, lambda n, t: O.paired_pass_rate(n, half, half, max_forgetting, t)))


def not_lower_chance(cid: str, n: int, units: str, baseline_rate: float, discordance: float, margin: float,
                     tail: float) -> ClaimChance:
    """not-lower[RATE] against --baseline, paired item by item (exact trinomial): a good adapter is taken to be as
    good as the baseline (its rate, `baseline_rate`, read from the baseline's per-item values) with `discordance`
    of the items changing, no more than that rate allows (2 min(p, 1 - p))."""
    from scipy.stats import norm

    d = min(discordance, 2 * min(baseline_rate, 1 - baseline_rate))
    z = float(norm.isf(tail)) + float(norm.ppf(POWER))
    return ClaimChance(cid, n, units, O.paired_pass_rate(n, d / 2, d / 2, margin, tail) if d > 0 else
                       float(n >= 6), _normal_size(z, max(d, 1e-6), margin),
                       f"; the baseline's rate {baseline_rate:.3f}, {d:.0%} of {units} taken to change")
