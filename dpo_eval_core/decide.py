"""Decisions from evidence: pass, fail or inconclusive, never "pass for lack of evidence".

Two shapes of claim, one rule each:

- *above a threshold* (reward accuracy above 0.5, a margin above 0, a win rate above 0.5): passes when
  the interval's lower bound is above the threshold, fails when its upper bound is at or below it, and is
  inconclusive otherwise;
- *not worse* (no forgetting, not worse than another adapter, not lower than the last release):
  non-inferiority with a margin in the metric's own units. The difference d = candidate - reference has
  a one-sided (1 - alpha) lower bound L and upper bound U (the two sides of a 1 - 2 alpha interval); the
  claim passes when L > -margin (the drop is shown to be smaller than the margin), fails when
  U <= -margin (the drop is shown to reach it), and is inconclusive otherwise.

Every "shown to hold" decision runs at one one-sided error, (1 - ci_level) / 2 = 0.025 by default: the
two-sided 95% interval the report prints, and the non-inferiority convention of ICH E9.

Intervals stay honest at small n: Clopper-Pearson for a proportion, Tango's score interval for a
difference of paired proportions (each item right or wrong under both models), Newcombe's hybrid score
interval for two independent proportions, and for per-item values a skew-guarded t (Hall's transform,
skew_interval), since a regression concentrated in a few items is a long left tail. A
rule that no test could pass with so few items (fewer than `min_items`) is inconclusive whatever the
interval says. An inconclusive decision carries the number of items with which a fresh sample would decide
it with 80% power, if the true value and spread are what this run measured.

Every claim of a release must pass, so there is no multiplicity correction across claims: the gate is
an intersection-union test, whose error is at most the largest single claim's.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Literal

import numpy as np

Outcome = Literal["pass", "fail", "inconclusive"]
Bounds = Callable[[float], tuple[float, float]]
"""n -> (low, high): the interval this rule would give on n items at the estimate and spread this run saw, at
the level that makes a fresh sample of n items decide with 80% power (power_level)."""

MAX_ITEMS = 10_000_000
"""Past this many items an inconclusive claim reports no n: the estimate sits (almost) on the line."""


@dataclass(frozen=True, slots=True)
class Decision:
    """One claim's decision: its estimate, the interval it was decided on, and what would decide it."""

    outcome: Outcome
    estimate: float
    low: float
    high: float
    n: int
    n_needed: int | None = None
    """For an inconclusive decision: the items with which a fresh sample decides it with 80% power if the true
    value and spread are what this run measured (None when no number would, e.g. an estimate on the line)."""

    @property
    def passed(self) -> bool:
        return self.outcome == "pass"


def min_items(tail: float) -> int:
    """Fewest items with which any test at this one-sided error can pass: an exact sign test needs
    n >= log2(1 / tail) (5 items at 0.05, 6 at 0.025). Fewer items never pass."""
    return max(1, math.ceil(math.log2(1.0 / tail) - 1e-12))


def clopper_pearson(k: float, n: float, level: float) -> tuple[float, float]:
    """Exact (Clopper-Pearson) two-sided interval of a proportion k/n; (nan, nan) when n is 0. Accepts
    fractional k (used to project an interval to another n)."""
    from scipy.stats import beta

    if n <= 0:
        return (math.nan, math.nan)
    tail = (1 - level) / 2
    lo = 0.0 if k <= 0 else float(beta.ppf(tail, k, n - k + 1))
    hi = 1.0 if k >= n else float(beta.ppf(1 - tail, k + 1, n - k))
    return (lo, hi)


def _z(level: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(1 - (1 - level) / 2))


def tango_statistic(better: Any, worse: Any, n: Any, d0: float) -> Any:
    """Tango's (1998) score statistic for H0: p_candidate - p_reference = d0 on paired binary items;
    `better` items right only for the candidate, `worse` right only for the reference. Works on scalars and,
    elementwise, on numpy arrays of counts (the simulations enumerate every outcome with it)."""
    better, worse, n = (np.asarray(x, dtype=float) for x in (better, worse, n))
    a = 2.0 * n
    b = -better - worse + (2.0 * n - better + worse) * d0
    c = -worse * d0 * (1.0 - d0)
    q21 = (np.sqrt(np.maximum(b * b - 4.0 * a * c, 0.0)) - b) / (2.0 * a)
    var = n * (2.0 * q21 + d0 * (1.0 - d0))
    num = better - worse - n * d0
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(var > 0, num / np.sqrt(np.where(var > 0, var, 1.0)),
                     np.where(num == 0, 0.0, np.sign(num) * np.inf))
    return float(t) if t.ndim == 0 else t


def tango_interval(better: float, worse: float, n: float, level: float) -> tuple[float, float]:
    """Tango's score interval of the difference of paired proportions, (better - worse) / n: the d0
    that the score test does not reject. Sound with no discordant item at all (then +-z^2/(n+z^2)),
    unlike a bootstrap, which collapses to a point."""
    from scipy.optimize import brentq

    if n <= 0:
        return (math.nan, math.nan)
    z, eps = _z(level), 1e-12
    d = (better - worse) / n

    def root(target: float, lo: float, hi: float) -> float:
        f = lambda d0: tango_statistic(better, worse, n, d0) - target  # noqa: E731
        if f(lo) * f(hi) > 0:
            return lo if abs(f(lo)) < abs(f(hi)) else hi
        return float(brentq(f, lo, hi, xtol=1e-12))

    return (root(z, -1.0 + eps, d), root(-z, d, 1.0 - eps))


def wilson_cc(k: float, n: float, level: float) -> tuple[float, float]:
    """Wilson's score interval with continuity correction (Newcombe 1998, method 4): wider than plain Wilson
    by about 1/(2n), which keeps it at or below its nominal error at small n."""
    z, p = _z(level), k / n
    lo = (2 * n * p + z * z - 1 - z * math.sqrt(max(z * z - 2 - 1 / n + 4 * p * (n * (1 - p) + 1), 0.0))) / (
        2 * (n + z * z))
    hi = (2 * n * p + z * z + 1 + z * math.sqrt(max(z * z + 2 - 1 / n + 4 * p * (n * (1 - p) - 1), 0.0))) / (
        2 * (n + z * z))
    return (0.0 if k <= 0 else max(0.0, lo), 1.0 if k >= n else min(1.0, hi))


def newcombe_unpaired(k1: float, n1: float, k2: float, n2: float, level: float) -> tuple[float, float]:
    """Newcombe's (1998, method 11) hybrid score interval of p1 - p2 for independent proportions: the
    continuity-corrected Wilson intervals of each, squared and added (method 10, without the correction, passes
    up to 12% more often than its nominal error at 20 items)."""
    p1, p2 = k1 / n1, k2 / n2
    (l1, u1), (l2, u2) = wilson_cc(k1, n1, level), wilson_cc(k2, n2, level)
    return (p1 - p2 - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2),
            p1 - p2 + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))


@functools.lru_cache(maxsize=4096)
def _t_quantile(q: float, df: float) -> float:
    from scipy.stats import t

    return float(t.ppf(q, df))


def t_interval(mean: float, sd: float, n: float, level: float) -> tuple[float, float]:
    """Student's t interval of a mean from n items with standard deviation sd; (nan, nan) below 2 items."""
    if n < 2 or not math.isfinite(sd):
        return (math.nan, math.nan)
    half = _t_quantile(1 - (1 - level) / 2, n - 1) * sd / math.sqrt(n)
    return (mean - half, mean + half)


def skewness(x: np.ndarray) -> float:
    """Sample skewness m3 / s^3 (s with ddof=1); 0 below 3 items or without spread."""
    x = np.asarray(x, dtype=float)
    if x.size < 3:
        return 0.0
    s = float(x.std(ddof=1))
    return float(np.mean((x - x.mean()) ** 3) / s ** 3) if s > 0 else 0.0


def _hall_quantile(y: float, skew: float, n: float) -> float:
    """The t-scale quantile whose Hall (1992) transform g(T) = T + a T^2/3 + a^2 T^3/27 + a/6, a = skew/sqrt(n),
    equals y: g is a monotone cubic, (u^3 - 1)/a + a/6 with u = 1 + a T/3, so the inverse is closed form."""
    a = skew / math.sqrt(n)
    if abs(a) < 1e-12:
        return y
    return 3.0 / a * (float(np.cbrt(1.0 + a * (y - a / 6.0))) - 1.0)


def skew_interval(mean: float, sd: float, skew: float, n: float, level: float) -> tuple[float, float]:
    """Interval of a mean that keeps its error under skewed items (a regression concentrated in a few items is a
    long left tail, where Student's t passes 0.11 at n = 6 against a nominal 0.025).

    Hall's (1992) skewness-corrected t, with the skewness taken one standard error (sqrt(6 / n)) toward the side
    that would let each bound pass: the lower bound as if the items were more left-skewed than measured, the
    upper bound as if more right-skewed. Simulated one-sided error at a nominal 0.025 (skewness -2, normal, +2;
    n = 6 to 5,000; 20,000 runs a cell): at most 0.0269 (docs/decisions.md, from operating.py). Without spread (every item equal) no lower bound can be claimed: (-inf, mean), so a
    rule may fail on such items but never pass. (nan, nan) below 2 items."""
    if n < 2 or not math.isfinite(sd):
        return (math.nan, math.nan)
    if sd <= 0:
        return (-math.inf, mean)
    y, guard, se = _t_quantile(1 - (1 - level) / 2, n - 1), math.sqrt(6.0 / n), sd / math.sqrt(n)
    return (mean - _hall_quantile(y, skew - guard, n) * se, mean + _hall_quantile(y, -skew - guard, n) * se)


def power_level(level: float, power: float = 0.8) -> float:
    """The two-sided level whose interval, projected at the measured estimate, decides a claim with this power:
    z_level' = z_level + z_power (a fresh sample of that size decides about `power` of the time, not half)."""
    from scipy.stats import norm

    return float(1 - 2 * norm.sf(_z(level) + norm.ppf(power)))


def mean_bounds(x: np.ndarray, level: float, sized_at: float | None = None) -> tuple[float, float, float, Bounds]:
    """(mean, low, high) of per-item values by the skew-guarded interval, and the bounds at another n at the
    level that gives 80% power (what `n_needed` reports) when decided at `sized_at` (the next look's level;
    default: this one's)."""
    x = np.asarray(x, dtype=float)
    n = int(x.size)
    mean = float(x.mean()) if n else math.nan
    sd = float(x.std(ddof=1)) if n >= 2 else math.nan
    g, at = skewness(x), power_level(level if sized_at is None else sized_at)
    lo, hi = skew_interval(mean, sd, g, n, level)
    return mean, lo, hi, lambda m: skew_interval(mean, sd, g, m, at)


def tango_level(level: float, n: float) -> float:
    """The level at which Tango's lower bound keeps its error at n items: z x (1 + 1/n). The plain score test
    passes up to 0.032 against 0.025 at 6 to 20 items with many discordant ones (margin 0.1, 60% changing);
    with the correction every cell of the error table is at most 0.0251 (dpo_eval_core/operating.py)."""
    from scipy.stats import norm

    return float(1 - 2 * norm.sf(_z(level) * (1 + 1 / max(n, 1.0))))


def paired_bounds(better: int, worse: int, n: int, level: float, sized_at: float | None = None
                  ) -> tuple[float, float, float, Bounds]:
    """(difference, low, high) of paired proportions by Tango's interval, and the bounds at another n (at the
    80%-power level of `sized_at`)."""
    d = (better - worse) / n if n else math.nan
    at = power_level(level if sized_at is None else sized_at)

    def bounds(b: float, w: float, m: float, lvl: float) -> tuple[float, float]:
        # the lower bound (the side that passes) at the small-sample z; the upper one (the side that fails) plain
        return tango_interval(b, w, m, tango_level(lvl, m))[0], tango_interval(b, w, m, lvl)[1]

    lo, hi = bounds(better, worse, n, level)
    return d, lo, hi, lambda m: bounds(better * m / n, worse * m / n, m, at)


def proportion_bounds(k: int, n: int, level: float, sized_at: float | None = None
                      ) -> tuple[float, float, float, Bounds]:
    """(k/n, low, high) by Clopper-Pearson, and the bounds at another n (at the 80%-power level of `sized_at`)."""
    p = k / n if n else math.nan
    lo, hi = clopper_pearson(k, n, level)
    at = power_level(level if sized_at is None else sized_at)
    return p, lo, hi, lambda m: clopper_pearson(k * m / n, m, at)


def items_to_decide(decided: Callable[[float, float], bool], bounds: Bounds, n: int, floor: int) -> int | None:
    """The fewest items (at least `floor` and more than n) whose projected bounds decide; None if even
    MAX_ITEMS would not."""
    def ok(m: int) -> bool:
        lo, hi = bounds(float(m))
        return m >= floor and not (math.isnan(lo) or math.isnan(hi)) and decided(lo, hi)

    lo_n, hi_n = max(n + 1, floor, 2), max(n + 1, floor, 2)
    while not ok(hi_n):
        if hi_n >= MAX_ITEMS:
            return None
        lo_n, hi_n = hi_n, min(MAX_ITEMS, hi_n * 2)
    while lo_n < hi_n:
        mid = (lo_n + hi_n) // 2
        if ok(mid):
            hi_n = mid
        else:
            lo_n = mid + 1
    return hi_n


def above(estimate: float, lo: float, hi: float, threshold: float, n: int, floor: int,
          bounds: Bounds | None = None) -> Decision:
    """Passes when lo > threshold (with at least `floor` items), fails when hi <= threshold (shown not above
    it: a margin of exactly 0 with no spread is not above 0), else inconclusive with the items that would
    decide it."""
    if n == 0 or math.isnan(lo) or math.isnan(hi):
        return Decision("inconclusive", estimate, lo, hi, n, None if bounds is None else
                        items_to_decide(lambda a, b: a > threshold or b <= threshold, bounds, n, floor))
    if hi <= threshold:
        return Decision("fail", estimate, lo, hi, n)
    if lo > threshold and n >= floor:
        return Decision("pass", estimate, lo, hi, n)
    need = None if bounds is None else items_to_decide(lambda a, b: a > threshold or b <= threshold, bounds, n, floor)
    return Decision("inconclusive", estimate, lo, hi, n, need)


def not_worse(estimate: float, lo: float, hi: float, margin: float, n: int, floor: int,
              bounds: Bounds | None = None) -> Decision:
    """Non-inferiority of a difference (candidate - reference) with a margin: passes when lo > -margin
    (with at least `floor` items), fails when hi <= -margin, else inconclusive."""
    return above(estimate, lo, hi, -margin, n, floor, bounds)


def describe(d: Decision, units: str = "items") -> str:
    """A few words for a message: what an inconclusive decision would need."""
    if d.outcome != "inconclusive":
        return ""
    if d.n_needed is None:
        return f"inconclusive: no number of {units} would decide it at this estimate"
    used = f"{d.n} was used" if d.n == 1 else f"{d.n} were used"
    return (f"inconclusive: about {d.n_needed} {units} would decide it with 80% power at the estimate and spread "
            f"this run saw ({used}), sized for the next look on this adapter, which decides at a smaller share of "
            f"the error (docs/decisions.md, looks)")
