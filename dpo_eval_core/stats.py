"""Paired statistics of the method: pure functions over arrays, no I/O, no global state.

For feature j and pair i: d_cr = chosen - rejected, d_tb = tuned - base. Per feature, not globally,
chosen-rejected statistics (S_j, the data-signal test, avg d_cr) use the pairs where chosen and
rejected are defined, so they describe the data alone and do not move with the adapter's answers;
tuned-base statistics use the pairs where all four values are defined.
S_j = std(d_cr) on the train split normalises the scale of feature j.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import numpy as np

ROLES = ("chosen", "rejected", "tuned", "base")
ZERO_TOL = 1e-12
"""Differences with |d| <= ZERO_TOL * max(1, |values|) count as exact zeros (float noise, not signal)."""


def round_noise(d: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Set float noise to exact zero, so that Wilcoxon's zero handling sees true ties."""
    d = np.asarray(d, dtype=float).copy()
    d[np.abs(d) <= ZERO_TOL * np.maximum(1.0, np.abs(scale))] = 0.0
    return d


def wilcoxon_p(d: np.ndarray) -> float:
    """Two-sided paired Wilcoxon signed-rank p-value; zero differences dropped (scipy's default).

    Degenerate input: fewer than one non-zero difference returns 1.0 (no evidence of a difference).
    """
    from scipy.stats import wilcoxon

    d = np.asarray(d, dtype=float)
    if np.count_nonzero(d) == 0:
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on ties and small n; handled by the caller's power guard
        return float(wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


def rank_biserial(d: np.ndarray) -> float:
    """Matched-pairs rank-biserial correlation (W+ - W-) / (W+ + W-), zeros dropped; NaN when all zero."""
    from scipy.stats import rankdata

    d = np.asarray(d, dtype=float)
    d = d[d != 0]
    if d.size == 0:
        return math.nan
    ranks = rankdata(np.abs(d))
    total = ranks.sum()
    return float((ranks[d > 0].sum() - ranks[d < 0].sum()) / total)


def min_attainable_p(n_nonzero: int) -> float:
    """Smallest two-sided exact Wilcoxon p-value with n non-zero, untied differences: 2 / 2^n."""
    return 1.0 if n_nonzero <= 0 else min(1.0, 2.0 / 2.0 ** n_nonzero)


def pairs_needed(alpha: float) -> int:
    """Fewest non-zero pairs for which an exact two-sided Wilcoxon test can reach alpha."""
    n = 1
    while min_attainable_p(n) > alpha:
        n += 1
    return n


def adjust(pvalues: Sequence[float], method: str) -> np.ndarray:
    """Multiple-comparison adjusted p-values (none, bh, bonferroni); NaN entries stay NaN and are not counted."""
    from scipy.stats import false_discovery_control

    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    if not ok.any() or method == "none":
        return p.copy()
    if method == "bh":
        out[ok] = false_discovery_control(p[ok], method="bh")
    elif method == "bonferroni":
        out[ok] = np.minimum(1.0, p[ok] * ok.sum())
    else:
        raise ValueError(f"unknown correction {method!r}: expected none, bh or bonferroni")
    return out


def sign(x: float) -> int:
    return 0 if (x == 0 or math.isnan(x)) else (1 if x > 0 else -1)


@dataclass(frozen=True, slots=True)
class FeatureStat:
    """The method's numbers for one feature."""

    feature: str
    n_train: int
    """Train pairs with chosen and rejected defined (the data-signal test's n)."""
    n_valid: int
    """Valid pairs with all four values defined (the tuned-base test's n)."""
    scale: float
    """S_j = std(d_cr) on train (ddof=1); NaN when undefined, 0 when constant."""
    cr_train: float
    tb_train: float
    cr_valid: float
    tb_valid: float
    """Normalised averages avg(d)/S_j; NaN when S_j is 0 or undefined."""
    p_cr: float
    p_tb: float
    """Raw two-sided Wilcoxon p: d_cr on the train split, d_tb on the valid split."""
    r_cr: float
    r_tb: float
    """Rank-biserial effect sizes of those tests."""
    n_cr_nonzero: int
    n_tb_nonzero: int
    sign_agreement: int
    """sign(avg d_cr) * sign(avg d_tb) on the valid split: +1 agree, -1 disagree, 0 undefined."""
    n_train_answered: int = 0
    """Train pairs with all four values defined: the n of tb_train (--train-answers bounds it)."""
    p_cr_adj: float = math.nan
    p_tb_adj: float = math.nan
    cr_valid_ci: tuple[float, float] = (math.nan, math.nan)
    tb_valid_ci: tuple[float, float] = (math.nan, math.nan)
    """Percentile bootstrap intervals of the normalised valid averages (NaN without an rng)."""


def differences(values: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(d_cr, d_tb) as [n_pairs, n_features] arrays: d_cr NaN where chosen or rejected is NaN, d_tb NaN
    where any of a pair's four values is NaN."""
    a = {r: np.asarray(values[r], dtype=float) for r in ROLES}
    d_cr = round_noise(a["chosen"] - a["rejected"], np.maximum(abs(a["chosen"]), abs(a["rejected"])))
    d_tb = round_noise(a["tuned"] - a["base"], np.maximum(abs(a["tuned"]), abs(a["base"])))
    d_cr[np.isnan(a["chosen"]) | np.isnan(a["rejected"])] = np.nan
    d_tb[np.any([np.isnan(a[r]) for r in ROLES], axis=0)] = np.nan
    return d_cr, d_tb


def feature_stats(values: Mapping[str, np.ndarray], split: Sequence[str], features: Sequence[str],
                  correction: str = "bh", *, ci_level: float | None = None, n_boot: int | None = None,
                  rng: np.random.Generator | None = None) -> list[FeatureStat]:
    """Per-feature statistics. `values[role]` is an [n_pairs, n_features] array for chosen and rejected,
    and for tuned and base when answers exist (without them every tuned-base field is NaN or 0).
    With an rng (and the gate's ci_level and n_boot), the normalised valid averages get percentile
    bootstrap intervals."""
    if rng is not None and (ci_level is None or n_boot is None):
        raise TypeError("feature_stats: bootstrap intervals (rng) need ci_level and n_boot (GateConfig's)")
    is_train = np.asarray([s == "train" for s in split])
    is_valid = ~is_train
    n_pairs = len(split)
    nan = np.full((n_pairs, len(features)), np.nan)
    arrays = {r: np.asarray(values[r], dtype=float) if r in values else nan for r in ROLES}
    d_cr_all, d_tb_all = differences(arrays)
    stats = []
    for j, name in enumerate(features):
        d_cr, d_tb = d_cr_all[:, j], d_tb_all[:, j]
        ok_cr, ok = ~np.isnan(d_cr), ~np.isnan(d_tb)
        tr_cr, va_cr, tr, va = ok_cr & is_train, ok_cr & is_valid, ok & is_train, ok & is_valid
        s = float(np.std(d_cr[tr_cr], ddof=1)) if tr_cr.sum() >= 2 else math.nan

        def norm(d: np.ndarray, m: np.ndarray, scale: float = s) -> float:
            if m.sum() == 0 or not (scale > 0):
                return math.nan
            return float(np.mean(d[m]) / scale)

        mean_cr_v = float(np.mean(d_cr[va_cr])) if va_cr.any() else math.nan
        mean_tb_v = float(np.mean(d_tb[va])) if va.any() else math.nan
        cis = [(math.nan, math.nan)] * 2
        if rng is not None and ci_level is not None and n_boot is not None and s > 0:
            cis = [tuple(v / s for v in bootstrap_mean_ci(d[m], ci_level, n_boot, rng))
                   for d, m in ((d_cr, va_cr), (d_tb, va))]
        stats.append(FeatureStat(
            feature=name, n_train=int(tr_cr.sum()), n_valid=int(va.sum()), scale=s,
            cr_train=norm(d_cr, tr_cr), tb_train=norm(d_tb, tr), cr_valid=norm(d_cr, va_cr), tb_valid=norm(d_tb, va),
            p_cr=wilcoxon_p(d_cr[tr_cr]), p_tb=wilcoxon_p(d_tb[va]),
            r_cr=rank_biserial(d_cr[tr_cr]), r_tb=rank_biserial(d_tb[va]),
            n_cr_nonzero=int(np.count_nonzero(d_cr[tr_cr])), n_tb_nonzero=int(np.count_nonzero(d_tb[va])),
            sign_agreement=sign(mean_cr_v) * sign(mean_tb_v), n_train_answered=int(tr.sum()), cr_valid_ci=cis[0],
            tb_valid_ci=cis[1]))
    p_cr_adj = adjust([s.p_cr for s in stats], correction)
    p_tb_adj = adjust([s.p_tb for s in stats], correction)
    return [replace(s, p_cr_adj=float(a), p_tb_adj=float(b)) for s, a, b in zip(stats, p_cr_adj, p_tb_adj)]


def bootstrap_mean_ci(x: np.ndarray, level: float, n_boot: int, rng: np.random.Generator) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean; (nan, nan) for empty input, (x, x) for one value."""
    x = np.asarray(x, dtype=float)
    if x.size == 0:
        return (math.nan, math.nan)
    if x.size == 1:
        return (float(x[0]), float(x[0]))
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    means = x[idx].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return (float(lo), float(hi))
