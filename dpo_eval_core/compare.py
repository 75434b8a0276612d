"""Which adapter ships? Paired comparisons of a candidate adapter with another on the same pairs.

Both adapters are scored on the same valid pairs and asked the same questions, so every comparison is
paired, item by item, matched by id: reward margins by a Wilcoxon signed-rank test on the per-pair
differences; reward correctness and multiple-choice correctness by an exact McNemar test on the items
where exactly one adapter is right; answer features (candidate minus other) by Wilcoxon with a
multiple-comparison correction, then an exact sign test of how many shifted data-signal features move
the data's way (chosen minus rejected) against how many move the other way. A paired test uses what two
summaries throw away (a comparison of lm-evaluation-harness runs found p = 0.08 unpaired where McNemar
gave 0.008). The same tests compare a run with a baseline's per-pair values (`regression.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .stats import adjust, bootstrap_mean_ci, mcnemar_p, rank_biserial, round_noise, sign, wilcoxon_p

COMPARE_ADAPTER = "compare"
"""The PEFT adapter name of --compare on the shared model (the gated adapter is PEFT's 'default')."""


@dataclass(frozen=True, slots=True)
class PairedComparison:
    """Candidate vs other on the items both have, one paired test."""

    what: str
    test: str
    n: int
    """Items compared (pairs, questions, or data-signal features)."""
    candidate: float
    other: float
    """The two means (accuracy, margin, or share of shifted features moving the data's way)."""
    difference: tuple[float, float, float]
    """Candidate minus other: estimate and paired bootstrap interval."""
    better: int
    """Items where the candidate is better (right where the other is wrong, a larger margin, a feature
    shifted the data's way)."""
    worse: int
    p_value: float
    effect: float
    """(better - worse) / (better + worse) for counts; the matched-pairs rank-biserial for Wilcoxon."""

    def prefers(self, alpha: float) -> str:
        """'candidate', 'other', or 'neither' (not significant at alpha)."""
        if not self.p_value < alpha or self.better == self.worse:
            return "neither"
        return "candidate" if self.effect > 0 else "other"


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


def match(ids_a: Sequence[str], a: Sequence[float], ids_b: Sequence[str], b: Sequence[float]
          ) -> tuple[np.ndarray, np.ndarray]:
    """The values of the ids both sides have, in a's order."""
    where = {k: i for i, k in enumerate(ids_b)}
    shared = [(i, where[k]) for i, k in enumerate(ids_a) if k in where]
    return (np.array([a[i] for i, _ in shared], dtype=float), np.array([b[j] for _, j in shared], dtype=float))


def _difference(d: np.ndarray, level: float, n_boot: int, rng: np.random.Generator) -> tuple[float, float, float]:
    lo, hi = bootstrap_mean_ci(d, level, n_boot, rng)
    return (float(d.mean()) if d.size else math.nan, lo, hi)


def compare_values(what: str, a: np.ndarray, b: np.ndarray, level: float, n_boot: int,
                   rng: np.random.Generator) -> PairedComparison:
    """Per-item values (reward margins): Wilcoxon signed-rank on a - b, float noise counted as ties."""
    d = round_noise(a - b, np.maximum(np.abs(a), np.abs(b)))
    return PairedComparison(what, "Wilcoxon signed-rank", int(d.size), float(a.mean()) if a.size else math.nan,
                            float(b.mean()) if b.size else math.nan, _difference(d, level, n_boot, rng),
                            int((d > 0).sum()), int((d < 0).sum()), wilcoxon_p(d),
                            rank_biserial(d) if np.any(d) else 0.0)


def compare_correct(what: str, a: np.ndarray, b: np.ndarray, level: float, n_boot: int,
                    rng: np.random.Generator) -> PairedComparison:
    """Per-item right/wrong (reward correctness, multiple-choice answers): exact McNemar."""
    a, b = a.astype(bool), b.astype(bool)
    better, worse = int((a & ~b).sum()), int((~a & b).sum())
    return PairedComparison(what, "exact McNemar", int(a.size), float(a.mean()) if a.size else math.nan,
                            float(b.mean()) if b.size else math.nan,
                            _difference(a.astype(float) - b.astype(float), level, n_boot, rng), better, worse,
                            mcnemar_p(worse, better), _share(better, worse))


def _share(better: int, worse: int) -> float:
    return (better - worse) / (better + worse) if better + worse else 0.0


def compare_features(candidate: np.ndarray, other: np.ndarray, names: Sequence[str], scale: Sequence[float],
                     data_sign: Sequence[int], correction: str, alpha: float) -> tuple[PairedComparison,
                                                                                      tuple[FeatureShift, ...]]:
    """Candidate minus other answers per data-signal feature ([pairs, features] arrays, the features whose
    data_sign is non-zero): Wilcoxon per feature, corrected; then an exact sign test of the shifted features
    (adjusted p < alpha) moving the data's way against those moving the other way."""
    keep = [j for j, s in enumerate(data_sign) if s]
    shifts, pvals = [], []
    for j in keep:
        ok = ~(np.isnan(candidate[:, j]) | np.isnan(other[:, j]))
        d = round_noise(candidate[ok, j] - other[ok, j], np.maximum(np.abs(candidate[ok, j]), np.abs(other[ok, j])))
        pvals.append(wilcoxon_p(d))
        s = scale[j]
        shifts.append((int(ok.sum()), float(d.mean()) / s if d.size and s and not math.isnan(s) else math.nan))
    adjusted = adjust(pvals, correction) if pvals else np.array([])
    out = tuple(FeatureShift(names[j], n, shift, p, float(q), int(data_sign[j]))
                for j, (n, shift), p, q in zip(keep, shifts, pvals, adjusted))
    moved = [f for f in out if f.p_adj < alpha and sign(f.shift)]
    better = sum(sign(f.shift) == f.data_sign for f in moved)
    worse = len(moved) - better
    n = len(out)
    test = PairedComparison("sign-agreement", "exact sign test over shifted data-signal features", n,
                            better / n if n else math.nan, worse / n if n else math.nan,
                            ((better - worse) / n if n else math.nan,) * 3, better, worse,
                            mcnemar_p(worse, better), _share(better, worse))
    return test, out
