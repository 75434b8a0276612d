"""Which adapter ships? Paired comparisons of a candidate adapter with another on the same items.

Both adapters are scored on the same valid pairs and asked the same questions, so every comparison is
paired, item by item, matched by id, and each is a non-inferiority decision with a margin in the metric's
own units (decide.py): the candidate passes when the one-sided (1 - tail) lower bound of
candidate - other lies above -margin, fails when the upper bound lies below it, and is inconclusive
otherwise. Right/wrong per item (reward correctness, multiple-choice answers, sign agreement per
data-signal cluster) uses Tango's score interval for paired proportions; per-item values (reward
margins) the skew-guarded t interval on the per-item differences, the mean that the message reports (never
a test of the median). The same comparisons decide a run against a baseline's per-item values (`regression.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from . import decide as D
from .stats import adjust, round_noise, wilcoxon_p

Kind = Literal["paired proportions", "paired values"]


@dataclass(frozen=True, slots=True)
class PairedComparison:
    """Candidate vs other on the items both have: the counts and spread a non-inferiority decision needs."""

    what: str
    kind: Kind
    n: int
    """Items compared (pairs, questions, or data-signal features)."""
    candidate: float
    other: float
    """The two means (accuracy, margin, or share of data-signal features moving the data's way)."""
    better: int
    """Items where the candidate is better (right where the other is wrong, a larger margin)."""
    worse: int
    sd: float = math.nan
    """Paired values: the standard deviation of the per-item differences (their interval's spread)."""
    skew: float = 0.0
    """Paired values: the skewness of the per-item differences (their interval guards against it)."""

    @property
    def estimate(self) -> float:
        return self.candidate - self.other

    def bounds(self, tail: float, sized_at: float | None = None) -> tuple[float, float, float, D.Bounds]:
        """(candidate - other, one-sided 1 - tail lower and upper bounds, the bounds at another n at the 80%-power
        level of `sized_at`, a two-sided level: the next look's)."""
        level = 1 - 2 * tail
        if self.kind == "paired proportions":
            d, lo, hi, at = D.paired_bounds(self.better, self.worse, self.n, level, sized_at)
        else:
            d, sd, g = self.estimate, self.sd, self.skew
            power = D.power_level(level if sized_at is None else sized_at)
            lo, hi = D.skew_interval(d, sd, g, self.n, level)
            at = lambda m: D.skew_interval(d, sd, g, m, power)  # noqa: E731
        return d, lo, hi, at

    def decide(self, tail: float, margin: float, sized_at: float | None = None) -> D.Decision:
        """Not worse than the other by more than `margin` (in the metric's units), at one-sided error `tail`?"""
        d, lo, hi, at = self.bounds(tail, sized_at)
        return D.not_worse(d, lo, hi, margin, self.n, D.min_items(tail), at)


def match(ids_a: Sequence[str], a: Sequence[float], ids_b: Sequence[str], b: Sequence[float]
          ) -> tuple[np.ndarray, np.ndarray]:
    """The values of the ids both sides have, in a's order."""
    where = {k: i for i, k in enumerate(ids_b)}
    shared = [(i, where[k]) for i, k in enumerate(ids_a) if k in where]
    return (np.array([a[i] for i, _ in shared], dtype=float), np.array([b[j] for _, j in shared], dtype=float))


def compare_values(what: str, a: np.ndarray, b: np.ndarray) -> PairedComparison:
    """Per-item values (reward margins): the mean of a - b, float noise counted as ties."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d = round_noise(a - b, np.maximum(np.abs(a), np.abs(b)))
    return PairedComparison(what, "paired values", int(d.size), float(a.mean()) if a.size else math.nan,
                            float(b.mean()) if b.size else math.nan, int((d > 0).sum()), int((d < 0).sum()),
                            float(d.std(ddof=1)) if d.size >= 2 else math.nan, D.skewness(d))


def compare_correct(what: str, a: np.ndarray, b: np.ndarray) -> PairedComparison:
    """Per-item right/wrong (reward correctness, multiple-choice answers, agreement per signal direction)."""
    a, b = np.asarray(a).astype(bool), np.asarray(b).astype(bool)
    return PairedComparison(what, "paired proportions", int(a.size), float(a.mean()) if a.size else math.nan,
                            float(b.mean()) if b.size else math.nan, int((a & ~b).sum()), int((~a & b).sum()))


@dataclass(frozen=True, slots=True)
class FeatureShift:
    """One data-signal feature: candidate minus other answers on the valid pairs."""

    feature: str
    n: int
    shift: float
    """Mean difference divided by the data's scale S_j (as the report's tuned - base effects)."""
    p_value: float
    p_adj: float
    data_sign: int
    """Sign of chosen - rejected on the train split: the way the data points."""


def feature_shifts(candidate: np.ndarray, other: np.ndarray, names: Sequence[str], scale: Sequence[float],
                   data_sign: Sequence[int], correction: str) -> tuple[FeatureShift, ...]:
    """Candidate minus other answers per data-signal feature ([pairs, features] arrays, the features whose
    data_sign is non-zero), with a corrected Wilcoxon p each: what the report shows beside the decision."""
    keep = [j for j, s in enumerate(data_sign) if s]
    shifts, pvals = [], []
    for j in keep:
        ok = ~(np.isnan(candidate[:, j]) | np.isnan(other[:, j]))
        d = round_noise(candidate[ok, j] - other[ok, j], np.maximum(np.abs(candidate[ok, j]), np.abs(other[ok, j])))
        pvals.append(wilcoxon_p(d))
        s = scale[j]
        shifts.append((int(ok.sum()), float(d.mean()) / s if d.size and s and not math.isnan(s) else math.nan))
    adjusted = adjust(pvals, correction) if pvals else np.array([])
    return tuple(FeatureShift(names[j], n, shift, p, float(q), int(data_sign[j]))
                 for j, (n, shift), p, q in zip(keep, shifts, pvals, adjusted))
