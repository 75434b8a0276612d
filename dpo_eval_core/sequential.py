"""Sequential decisions: take a stage's items in a seeded order, in rounds that double up to every item, decide
its claims after each round, and stop scoring once every gating claim is decided (pass or fail) or cannot pass
with all the items there are.

Most decisions are clear long before the data runs out: an adapter whose reward accuracy is 0.75 against a
threshold of 0.5 shows it on 100 pairs as surely as on 1,000. Looking after every round and stopping at the
first decision would be optional stopping, which passes a bad adapter more often than the stated error, so
each round decides at its own share of the look's one-sided error (looks.py), spent along a power function
of the share of items used (Kim & DeMets 1987, rho = 3): the first rounds spend almost nothing and stop only
on overwhelming evidence, and the last round keeps most of the error (7/8 of it: the round before it used
half the items). The shares sum to the look's error, so by the union bound the chance that any round
passes an adapter that should not ship is at most the look's error, whatever the rounds share and whichever
rule each round runs: every rule of decide.py holds its error at a fixed number of items, and a round's
number of items and error are fixed before any item is scored (they depend on how many items there are, not
on what they show). The union bound gives away the rounds' correlation, a few percent of power at the last
round; tests/test_sequential.py simulates the false pass, the power and the items to a decision.

Every rule must hold its share at the round's size for this to hold. The exact and score intervals do; the
skew-guarded t of a mean of unbounded values does not at an early round's tiny share on a long left tail
(simulated: 0.0015 against 0.00031 at 75 lognormal values), so a mean claim can fail at any round but pass
only at the last (`last_round_pass`). A claim keeps the first decision it reaches: a pass at round two is not taken back by round three (both
are covered by the same bound). Futility only stops the scoring, never passes anything, so it adds no false
pass: a claim stops being waited for when even every remaining item going its way could not make it pass at
the last round, or (a rate, from half the items on) when it would pass only with a chance below FUTILITY were
the remaining items like the ones scored.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Generic, Literal, Mapping, Sequence, TypeVar

import numpy as np

from .claims import Claim
from .errors import ConfigError
from .stages import Stage

if TYPE_CHECKING:
    from .config import GateConfig
    from .run import GateRun

T = TypeVar("T")
RHO = 3.0
"""Exponent of the power spending function: round k spends tail * ((n_k / N)^rho - (n_(k-1) / N)^rho)."""
Stop = Literal["decided", "futile", "all items", "cap"]


@dataclass(frozen=True, slots=True)
class Schedule:
    """The rounds a stage takes its `n_items` in and the one-sided error each round decides at."""

    n_items: int
    tail: float
    """The look's one-sided error, spent across the rounds."""
    first: int = 64
    rho: float = RHO

    def __post_init__(self) -> None:
        if self.n_items < 1 or self.first < 1:
            raise ConfigError("sequential schedule", (self.n_items, self.first), "at least one item per round")
        if not 0 < self.tail < 0.5 or self.rho <= 0:
            raise ConfigError("sequential schedule", (self.tail, self.rho), "a tail in (0, 0.5) and rho > 0")

    @property
    def rounds(self) -> tuple[int, ...]:
        """Items used after each round, halving back from every item while a round keeps at least `first`:
        ..., N/4, N/2, N. The last round then always keeps 1 - (1/2)^rho of the error (7/8 at rho 3), where
        doubling up from `first` could end on a round of nearly N that spent most of it."""
        out, n = [self.n_items], self.n_items
        while n > 1 and (n + 1) // 2 >= self.first:
            n = (n + 1) // 2
            out.append(n)
        return tuple(reversed(out))

    def spent(self, n: int) -> float:
        """The error spent once n items have been looked at."""
        return self.tail * min(1.0, n / self.n_items) ** self.rho

    def tail_at(self, k: int) -> float:
        """The one-sided error the k-th round (from 0) decides at."""
        rounds = self.rounds
        return self.spent(rounds[k]) - (self.spent(rounds[k - 1]) if k else 0.0)


@dataclass(frozen=True, slots=True)
class Round:
    """One round of a sequence, as results.json records it."""

    n: int
    tail: float
    outcomes: Mapping[str, str]
    """Each claim's outcome at this round (a claim decided earlier keeps its earlier decision)."""


@dataclass(frozen=True, slots=True)
class Run(Generic[T]):
    """A stage measured in rounds: what the last round measured, each claim as first decided (or as the last
    round left it), and every round."""

    measured: T
    claims: tuple[Claim, ...]
    rounds: tuple[Round, ...]
    planned: tuple[int, ...]
    """Items after each round of the schedule (the run may stop before the last)."""
    stopped: Stop

    def record(self) -> dict[str, object]:
        """The sequence for results.json: every look, and why it stopped."""
        return {"n_items": self.planned[-1], "n_used": self.rounds[-1].n, "planned": list(self.planned),
                "stopped": self.stopped, "rounds": [dataclasses.asdict(r) for r in self.rounds]}


def order(ids: Sequence[str], seed: int) -> list[int]:
    """A seeded order of items by the hash of their ids: the same items come first whatever else the data holds,
    so a run on more data finds its first rounds' items already scored in the cache."""
    return sorted(range(len(ids)), key=lambda i: hashlib.sha256(f"{seed}\0{ids[i]}".encode()).digest())


def schedule(gate: GateConfig, n_items: int, *, comparing: bool) -> tuple[Schedule | None, str]:
    """This stage's schedule (None: every item at once) and why, from gate.sequential: auto runs in rounds where
    there are at least two (2 x gate.first_round items) and no claim compares against another adapter or a baseline
    (those pair their items with the other side's, which is decided on every item)."""
    mode = gate.sequential
    if mode == "off":
        return None, "gate.sequential is off"
    if comparing:
        if mode == "on":
            raise ConfigError("gate.sequential", mode, "auto or off with --compare or --baseline",
                              "Their claims pair every item with the other side's; set gate.sequential=auto.")
        return None, "every item: --compare or --baseline pair their claims with every item"
    if n_items == 0:
        return None, "no items"
    s = Schedule(n_items, gate.tail, gate.first_round)
    if mode == "auto" and len(s.rounds) < 2:
        return None, f"every item: {n_items} are one round (gate.first_round is {gate.first_round})"
    return s, f"in rounds of {', '.join(map(str, s.rounds))} items"


def comparing(run: GateRun) -> bool:
    """Whether claims of this run pair its items with another adapter's or a baseline's (the --compare adapter's
    own run included): those are decided on every item."""
    return run.host is not None or any(f.reference and f.per_item and f.absent(run.cfg) is None
                                       for f in run.families)


@dataclass(frozen=True, slots=True)
class Staged(Generic[T]):
    """How a stage took its items: in rounds (`run`), or all at once (None), and why."""

    run: Run[T] | None
    why: str

    def record(self) -> dict[str, object]:
        return {"why": self.why, **(self.run.record() if self.run else {})}


ROUNDS: Stage[Staged] = Stage("sequence")
"""How each stage took its items, by the stage's name (results.json's "sequential")."""


def staged(run: GateRun, name: str, ids: Sequence[str], measure: Callable[[list[int]], T],
           decide: Callable[[T, GateConfig], Sequence[Claim]],
           can_pass: Callable[[T, GateConfig], Mapping[str, bool]] | None = None,
           last_round_pass: frozenset[str] = frozenset()) -> Staged[T]:
    """The stage `name` of `run` over the items `ids`, in rounds where gate.sequential and the run allow
    (`measure(indices)` measures those items, in their order in `ids`); once per run, recorded in results.json
    under "sequential"."""
    def compute() -> Staged[T]:
        s, why = schedule(run.gate, len(ids), comparing=comparing(run))
        if s is None:
            return Staged(None, why)
        first = order(ids, run.cfg.seed)
        return Staged(decide_in_rounds(s, run.gate, lambda n: measure(sorted(first[:n])), decide, can_pass,
                                       last_round_pass), why)
    return run.stages.once(ROUNDS.of(name), compute)


def planned_rounds(run: GateRun, n_items: int) -> tuple[tuple[int, float], ...]:
    """A stage of `n_items` as the plan before the work sees it: (items after the round, one-sided error it decides
    at) for each round, at this look's error; empty where the stage takes every item at once."""
    gate = dataclasses.replace(run.cfg.gate, ci_level=1 - 2 * run.look.tail)
    s, _ = schedule(gate, n_items, comparing=comparing(run))
    return tuple((n, s.tail_at(k)) for k, n in enumerate(s.rounds)) if s else ()


def planned_tail(run: GateRun, n_items: int) -> float:
    """The one-sided error the plan before the work sizes a stage of `n_items` at: its last round's (7/8 of the
    look's) where it runs in rounds, the look's otherwise; a pass at an earlier round only adds to the chance."""
    rounds = planned_rounds(run, n_items)
    return rounds[-1][1] if rounds else run.look.tail


def tails(run: GateRun, n_items: int) -> tuple[float, ...]:
    """Every one-sided error a stage of `n_items` may be decided at: the look's, and each round's where it runs in
    rounds (a check that must hold at whichever level decides, as precision.mean_settled, checks them all)."""
    s, _ = schedule(run.gate, n_items, comparing=comparing(run))
    return (run.gate.tail, *((s.tail_at(k) for k in range(len(s.rounds))) if s else ()))


FUTILITY = 0.01
"""From the round that holds half the items on, a claim whose chance to pass by the last round is below this, were
the items not yet scored like those scored so far, is no longer waited for (stochastic curtailment). Stopping
without a pass never adds a false pass; it costs a good adapter at most 0.006 of power (tests/test_sequential.py)."""


def rate_may_pass(k: int, n: int, n_items: int, threshold: float, gate: GateConfig) -> bool:
    """Whether a rate of k right of n could still pass at `gate` (the last round's) once all n_items are in: not
    when every item left being right would not do it, nor, from half the items on, when the items left would have
    to beat the rate seen so far with a chance below FUTILITY."""
    from scipy.stats import binom

    from .decide import clopper_pearson

    lo_n, hi_n = 0, n_items + 1  # the fewest right of n_items that pass: binary search on the exact bound
    while lo_n < hi_n:
        mid = (lo_n + hi_n) // 2
        lo_n, hi_n = (lo_n, mid) if clopper_pearson(mid, n_items, gate.ci_level)[0] > threshold else (mid + 1, hi_n)
    rest = n_items - n
    if k + rest < lo_n:
        return False
    return 2 * n < n_items or n == 0 or float(binom.sf(lo_n - k - 1, rest, k / n)) >= FUTILITY


def paired_may_pass(better: int, worse: int, n: int, n_items: int, margin: float, gate: GateConfig) -> bool:
    """Whether a paired non-inferiority claim (Tango, better and worse of n items) could still pass at `gate` (the
    last round's) once all n_items are in: not when the items left all going its way would not do it, nor, from
    half the items on, when it passes in under FUTILITY of 4,000 seeded draws of the items left at the rates seen
    so far."""
    from scipy.stats import norm

    from .decide import min_items, tango_statistic

    rest = n_items - n
    z = float(norm.isf(gate.tail)) * (1 + 1 / n_items)  # Tango's lower bound at its small-sample level

    def passes(b: np.ndarray, w: np.ndarray) -> np.ndarray:
        return (n_items >= min_items(gate.tail)) & (tango_statistic(b, w, n_items, -margin) > z)

    if not passes(np.array(better + rest), np.array(worse)):
        return False
    if 2 * n < n_items or n == 0:
        return True
    p_better, p_worse = better / n, worse / n
    draws = np.random.default_rng(0).multinomial(rest, [p_better, p_worse, max(0.0, 1 - p_better - p_worse)], 4000)
    return float(passes(better + draws[:, 0], worse + draws[:, 1]).mean()) >= FUTILITY


def at_tail(gate: GateConfig, tail: float) -> GateConfig:
    """The gate deciding at one-sided `tail` (a round's share), sizing still for the next look."""
    return dataclasses.replace(gate, ci_level=1 - 2 * tail, sizing_level=gate.sized_at)


def decide_in_rounds(s: Schedule, gate: GateConfig, measure: Callable[[int], T],
                     decide: Callable[[T, GateConfig], Sequence[Claim]],
                     can_pass: Callable[[T, GateConfig], Mapping[str, bool]] | None = None,
                     last_round_pass: frozenset[str] = frozenset()) -> Run[T]:
    """Measure the first n items of each round, decide the claims at the round's share of the error, and stop
    once every gating claim is decided or cannot pass, or before a round past gate.max_items (the first round
    always runs). `can_pass(measured, gate_of_last_round)` says, per claim, whether it may still pass with the
    items not yet measured (rate_may_pass, paired_may_pass; claims it leaves out are waited for). A claim in `last_round_pass` can
    fail at any round but pass only at the last: a mean of unbounded per-item values, whose skew guard does not
    hold an early round's tiny share on a long tail (an early pass there is inconclusive and waits)."""
    first: dict[str, Claim] = {}
    rounds: list[Round] = []
    last_gate = at_tail(gate, s.tail_at(len(s.rounds) - 1))
    allowed = [n for k, n in enumerate(s.rounds) if k == 0 or gate.max_items is None or n <= gate.max_items]
    for k, n in enumerate(allowed):
        measured = measure(n)
        g = at_tail(gate, s.tail_at(k))
        now = {c.id: _waits(c, k, s) if c.passed and c.id in last_round_pass and n < s.n_items else _noted(c, k, s)
               for c in decide(measured, g)}
        for cid, c in now.items():
            if cid not in first and c.applicable and c.outcome in ("pass", "fail"):
                first[cid] = c
        claims = {cid: first.get(cid, c) for cid, c in now.items()}
        rounds.append(Round(n, s.tail_at(k), {cid: c.outcome for cid, c in claims.items()}))
        open_ = [cid for cid, c in claims.items() if gate.gates(cid) and c.applicable and cid not in first]
        if not open_:
            return Run(measured, tuple(claims.values()), tuple(rounds), s.rounds, "decided")
        may_pass = can_pass(measured, last_gate) if can_pass and n < s.n_items else {}
        if all(may_pass.get(cid) is False for cid in open_):
            claims = {cid: _futile(c, s) if cid in open_ else c for cid, c in claims.items()}
            return Run(measured, tuple(claims.values()), tuple(rounds), s.rounds, "futile")
    if len(allowed) < len(s.rounds):
        claims = {cid: _capped(c, gate.max_items) if cid in open_ else c for cid, c in claims.items()}
        return Run(measured, tuple(claims.values()), tuple(rounds), s.rounds, "cap")
    return Run(measured, tuple(claims.values()), tuple(rounds), s.rounds, "all items")


def _noted(c: Claim, k: int, s: Schedule) -> Claim:
    return dataclasses.replace(c, message=c.message + (
        f"; sequential round {k + 1} of {len(s.rounds)} ({s.rounds[k]} of {s.n_items} items, one-sided "
        f"{s.tail_at(k):.3g} of the look's {s.tail:.3g})"))


def _waits(c: Claim, k: int, s: Schedule) -> Claim:
    return dataclasses.replace(c, passed=False, inconclusive=True, message=_noted(c, k, s).message + (
        "; a mean passes only at the last round (sequential.py): inconclusive until then"))


def _capped(c: Claim, cap: int | None) -> Claim:
    return dataclasses.replace(c, message=c.message + (
        f"; stopped at gate.max_items {cap}: a run with a larger cap continues these rounds"))


def _futile(c: Claim, s: Schedule) -> Claim:
    return dataclasses.replace(c, message=c.message + (
        f"; stopped waiting: with all {s.n_items} items it could not pass, or would with a chance under "
        f"{FUTILITY:.0%} were the items left like these (futility: no pass, no false pass)"))
