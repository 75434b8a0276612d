"""Claims as data: an id that reads as the claim, the measured value, the threshold, the uncertainty and the
verdict (pass, fail or inconclusive), and the constructors every family shares: a rate or a mean above a
threshold, a per-feature paired Wilcoxon test, a non-inferiority comparison. The decision rules are in
decide.py; which claims exist is for the families (dpo_eval_core/families/) to say."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from . import decide as D
from .compare import PairedComparison
from .stats import min_attainable_p, pairs_needed

if TYPE_CHECKING:
    from .config import GateConfig


@dataclass(frozen=True, slots=True)
class Claim:
    id: str
    """Names the claim, not its threshold, so baselines still match after a threshold changes."""
    passed: bool
    value: float | None
    threshold: str
    uncertainty: str
    n: int | None
    message: str
    """One line a reviewer reads: estimate, interval, threshold and n; for a failure, why."""
    applicable: bool = True
    """False when the claim's precondition does not hold (reported as skipped, with the reason)."""
    ci: tuple[float, float] | None = None
    """Confidence interval of `value`, where it has one: baselines are compared through it."""
    inconclusive: bool = False
    """The data could not decide it (neither shown to hold nor shown not to): never a pass."""
    n_needed: int | None = None
    """For an inconclusive claim: the items that would decide it at the estimate and spread this run saw."""

    def family(self) -> str:
        return self.id.split("[")[0]

    @property
    def outcome(self) -> str:
        """'pass', 'fail', 'inconclusive', or 'not applicable'."""
        if not self.applicable:
            return "not applicable"
        return "pass" if self.passed else "inconclusive" if self.inconclusive else "fail"


def decided(cid: str, d: D.Decision, threshold: str, uncertainty: str, message: str, *, value: float | None = None,
            ci: tuple[float, float] | None = None, units: str = "items") -> Claim:
    """A claim from a decision: its outcome, n, interval and, when inconclusive, what would decide it."""
    why = D.describe(d, units)
    return Claim(cid, d.passed, d.estimate if value is None else value, threshold, uncertainty, d.n,
                 message + (f"; {why}" if why else ""), ci=(d.low, d.high) if ci is None else ci,
                 inconclusive=d.outcome == "inconclusive", n_needed=d.n_needed)



def fmt(x: float) -> str:
    return "nan" if x is None or math.isnan(x) else f"{x:.4g}"


def percent(level: float) -> str:
    """A confidence level as a percentage with the digits it has: 95%, 96%, 99.75%."""
    return f"{100 * level:.6g}%"



def _underpowered(cid: str, n_nonzero: int, p_adj: float, gate: GateConfig) -> Claim | None:
    """A failing claim that says how many pairs are needed, when n can never reach alpha; else None."""
    if min_attainable_p(n_nonzero) <= gate.alpha:
        return None
    if n_nonzero == 0:
        return Claim(cid, False, p_adj, f"p_adj < {gate.alpha}", "", 0,
                     "no pair differs in this feature (every difference is zero): nothing to test")
    return Claim(cid, False, p_adj, f"p_adj < {gate.alpha}", "", n_nonzero,
                 f"inconclusive: only {n_nonzero} non-zero differences: the smallest attainable p is "
                 f"{min_attainable_p(n_nonzero):.3g} > alpha {gate.alpha}; at least {pairs_needed(gate.alpha)} "
                 f"pairs with a difference are needed", inconclusive=True, n_needed=pairs_needed(gate.alpha))



LOW_N = 20
"""Fewer valid pairs than this after the NaN drop make a per-feature estimate fragile; claims say so."""


def low_n(n: int) -> str:
    return f"; only {n} pairs after dropping NaN (fewer than {LOW_N}): fragile" if n < LOW_N else ""



def paired_test(cid: str, p: float, p_adj: float, r: float, n: int, n_nonzero: int, estimate: str,
            gate: GateConfig) -> Claim:
    """One per-feature paired Wilcoxon claim: holds when the adjusted p is below alpha."""
    if (short := _underpowered(cid, n_nonzero, p_adj, gate)) is not None:
        return short
    return Claim(cid, bool(p_adj < gate.alpha), p_adj, f"p_adj < {gate.alpha}",
                 f"p={fmt(p)}, p_adj={fmt(p_adj)} ({gate.correction}), r={fmt(r)}", n,
                 f"{estimate}, n={n}, p_adj={fmt(p_adj)}, rank-biserial r={fmt(r)}" + low_n(n))



def rate_floor(gate: GateConfig) -> int:
    """Fewest items with which a claim decided on a two-sided ci_level interval can pass."""
    return D.min_items((1 - gate.ci_level) / 2)



def rate_above(cid: str, k: int, n: int, threshold: float, gate: GateConfig, what: str, units: str = "pairs"
               ) -> Claim:
    """A proportion k/n whose exact (Clopper-Pearson) interval must lie above `threshold`."""
    p, lo, hi, bounds = D.proportion_bounds(k, n, gate.ci_level, gate.sized_at)
    d = D.above(p, lo, hi, threshold, n, rate_floor(gate), bounds)
    ci = f"{percent(gate.ci_level)} Clopper-Pearson CI [{lo:.3f}, {hi:.3f}]"
    return decided(cid, d, f"CI low > {threshold:g}", ci, f"{what} {fmt(p)} ({k} of {n}), {ci}", units=units)



def mean_above(cid: str, x: Sequence[float], threshold: float, gate: GateConfig, what: str) -> Claim:
    """A mean of per-item values whose skew-guarded t interval must lie above `threshold`."""
    m, lo, hi, bounds = D.mean_bounds(np.asarray(x, dtype=float), gate.ci_level, gate.sized_at)
    d = D.above(m, lo, hi, threshold, len(x), rate_floor(gate), bounds)
    ci = f"{percent(gate.ci_level)} skew-guarded t CI [{lo:.4g}, {hi:.4g}]"
    return decided(cid, d, f"CI low > {threshold:g}", ci, f"{what} {fmt(m)}, {ci}, n={len(x)}", units="pairs")



def one_sided(gate: GateConfig) -> str:
    return f"one-sided {percent(1 - gate.tail)}"



def not_worse_message(c: PairedComparison, d: D.Decision, gate: GateConfig, margin_text: str, this: str,
                      other: str, worse: str = "WORSE", unit: str = "shared items") -> str:
    """What a non-inferiority comparison found, in one line; `worse` names a failure (REGRESSED against a
    baseline), `unit` what was compared."""
    bounds = f"{one_sided(gate)} bounds [{d.low:+.4g}, {d.high:+.4g}]"
    how = ("Tango's paired score interval" if c.kind == "paired proportions" else
           "skew-guarded t interval of the mean per-item difference")
    verdict = {"pass": f"not worse: the drop is shown to be within the margin ({margin_text})",
               "fail": f"{worse}: the drop is shown to exceed the margin ({margin_text})",
               "inconclusive": f"the data cannot tell whether the drop is within the margin ({margin_text})"}[d.outcome]
    return (f"{this} {fmt(c.candidate)} vs {other} {fmt(c.other)} on {c.n} {unit}: difference "
            f"{d.estimate:+.4g}, {bounds} ({how}); better on {c.better}, worse on {c.worse}; {verdict}")




def not_worse(cid: str, c: PairedComparison, margin: float, margin_text: str, gate: GateConfig, this: str,
              other: str, worse: str = "WORSE", units: str = "items", unit: str = "shared items") -> Claim:
    """Non-inferiority of `this` against `other` on a paired comparison, with the family's margin: passes when
    the one-sided (1 - tail) lower bound of this - other lies above -margin."""
    if c.n == 0:
        return Claim(cid, False, None, "", "", 0, f"no item was measured for both: nothing to compare with {other}",
                     applicable=False)
    d = c.decide(gate.tail, margin, gate.sized_at)
    return decided(cid, d, f"lower bound > -{margin:.4g}", f"{one_sided(gate)} [{d.low:+.4g}, {d.high:+.4g}]",
                   not_worse_message(c, d, gate, margin_text, this, other, worse, unit), units=units)


def not_lower_unpaired(cid: str, what: str, old_value: float | None, old_n: int | None, current: Claim,
                       margin: float, margin_text: str, gate: GateConfig, why_unpaired: str) -> Claim:
    """Where no per-item values exist: non-inferiority on Newcombe's interval for two independent proportions
    (this run's k of n against the baseline's), with the reason it is unpaired in the message."""
    threshold = "lower bound > -margin"
    if old_value is None or not old_n:
        return Claim(cid, False, None, threshold, "", None,
                     f"the baseline has no value for {what}, so a drop cannot be measured", applicable=False)
    if current.value is None or not current.n or math.isnan(current.value):
        return Claim(cid, False, current.value, threshold, "", current.n,
                     f"{what} has no value in this run ({current.message})", inconclusive=True)
    n1, n2 = int(current.n), int(old_n)
    k1, k2 = round(current.value * n1), round(float(old_value) * n2)
    level = 1 - 2 * gate.tail
    lo, hi = D.newcombe_unpaired(k1, n1, k2, n2, level)
    power = D.power_level(gate.sized_at)
    at = lambda m: D.newcombe_unpaired(k1 * m / n1, m, k2 * m / n2, m, power)  # noqa: E731
    d = D.not_worse(k1 / n1 - k2 / n2, lo, hi, margin, min(n1, n2), D.min_items(gate.tail), at)
    verdict = {"pass": "not lower beyond the margin", "fail": "REGRESSED: the drop is shown to exceed the margin",
               "inconclusive": "the data cannot tell whether the drop is within the margin"}[d.outcome]
    return decided(cid, d, f"lower bound > -{margin:.4g}", f"unpaired [{lo:+.4g}, {hi:+.4g}]",
                   f"{what} {k1 / n1:.4g} ({k1} of {n1}) now against the baseline's {k2 / n2:.4g} ({k2} of {n2}): "
                   f"difference {d.estimate:+.4g}, {one_sided(gate)} bounds [{lo:+.4g}, {hi:+.4g}] "
                   f"(Newcombe, unpaired: {why_unpaired}); margin {margin_text}; {verdict}")
