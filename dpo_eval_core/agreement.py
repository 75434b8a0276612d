"""Sign agreement on independent evidence, and on the preference.

The method asks whether tuned - base moves the way chosen - rejected points, feature by feature. Counted
over features, that count is not evidence: the 69 TextDescriptives features move together (eight
readability scores, six duplicate n-gram fractions, a length complex that touches dozens), so an adapter
that moves answers in a random direction agrees on many features at once. The exact interval over features
then passes it 0.11-0.12 of the time on the demo's real feature table against a nominal 0.025; grouping
correlated features into clusters is not enough either (0.03 at |rho| >= 0.5), because the strongest
factors span clusters. And a shift that any training on these texts produces (toward the data's answers in
general) agrees with the preference wherever the two directions coincide.

Both are fixed here:

1. **Independent directions.** The data-signal features' chosen - rejected differences on the train split,
   standardised by S_j, have principal components (eigenvectors of their covariance): orthogonal
   directions along which a random shift, whether it follows the data's own covariance or none, moves
   independently. The components whose projections differ chosen vs rejected (Wilcoxon, corrected within
   the components) are the votes: data only, fixed before any answer is seen.
2. **On the preference.** Per component, three directions on the valid pairs: the preference p (chosen -
   rejected, train split), the general pull g (the data's answers, (chosen + rejected) / 2, minus the base's)
   and the adapter's shift t (tuned - base). The component along g is projected out of t and of p; a
   component agrees when what remains of t has the sign of what remains of p. An adapter that only moves
   toward the data's texts leaves noise after the projection; one trained on swapped preferences leaves a
   residual against p.

The rate of agreeing components is decided on its exact (Clopper-Pearson) interval over components: a random
direction makes every vote a fair coin, independent of the others, so the rule's error is the exact
interval's (simulated on real tables: tests/test_agreement.py).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from .stats import adjust, wilcoxon_p


@dataclass(frozen=True, slots=True)
class Components:
    """The independent directions of the data's chosen - rejected differences that carry data signal."""

    features: tuple[str, ...]
    """The data-signal features they are made of, in column order."""
    scale: tuple[float, ...]
    """S_j of each feature (the train split's std of chosen - rejected)."""
    loadings: tuple[tuple[float, ...], ...]
    """One unit vector over `features` per component, strongest first."""
    variance_share: tuple[float, ...]
    """Each component's share of the standardised differences' variance."""
    p_adj: tuple[float, ...]
    """Corrected Wilcoxon p of each component's chosen - rejected projection (all below alpha)."""
    n_features: int = 0
    """How many features were decomposed (components without data signal are left out)."""

    @property
    def k(self) -> int:
        return len(self.loadings)

    def names(self, top: int = 3) -> list[str]:
        """A name per component: PC number and its largest loadings, e.g. 'PC1 (n_tokens+, entropy+, ...)'."""
        out = []
        for i, w in enumerate(self.loadings):
            big = sorted(range(len(w)), key=lambda j: -abs(w[j]))[:top]
            out.append(f"PC{i + 1} (" + ", ".join(f"{self.features[j]}{'+' if w[j] > 0 else '-'}" for j in big)
                       + ")")
        return out

    def project(self, d: np.ndarray) -> np.ndarray:
        """[pairs, K]: differences over `features` ([pairs, features], NaN counted as no difference) in
        component coordinates."""
        z = np.nan_to_num(np.asarray(d, dtype=float) / np.asarray(self.scale), nan=0.0)
        return z @ np.asarray(self.loadings).T if self.k else np.zeros((z.shape[0], 0))


def standardised(d: np.ndarray, scale: Sequence[float]) -> np.ndarray:
    return np.nan_to_num(np.asarray(d, dtype=float) / np.asarray(scale, dtype=float), nan=0.0)


def components(d_cr_train: np.ndarray, names: Sequence[str], scale: Sequence[float], alpha: float,
               correction: str) -> Components:
    """The principal components of the standardised chosen - rejected differences ([train pairs, features])
    whose projections differ chosen vs rejected (two-sided Wilcoxon, `correction` within the components,
    below `alpha`). A component's sign is set so that the data's mean projection is positive."""
    z = standardised(d_cr_train, scale)
    k = z.shape[1]
    if k == 0 or z.shape[0] < 2:
        return Components(tuple(names), tuple(scale), (), (), (), k)
    cov = np.atleast_2d(np.cov(z, rowvar=False))
    ev, vec = np.linalg.eigh(cov)
    order = np.argsort(ev)[::-1]
    ev, vec = np.clip(ev[order], 0.0, None), vec[:, order]
    proj = z @ vec
    vec = vec * np.where(proj.mean(axis=0) < 0, -1.0, 1.0)  # the data points the + way along each
    p_adj = adjust([wilcoxon_p(proj[:, c]) for c in range(k)], correction)
    keep = [c for c in range(k) if p_adj[c] < alpha and ev[c] > 1e-12 * max(ev[0], 1e-300)]
    total = float(ev.sum()) or 1.0
    return Components(tuple(names), tuple(float(s) for s in scale),
                      tuple(tuple(float(x) for x in vec[:, c]) for c in keep),
                      tuple(float(ev[c] / total) for c in keep), tuple(float(p_adj[c]) for c in keep), k)


def residual(v: np.ndarray, g: np.ndarray) -> np.ndarray:
    """v with its component along g removed (v itself when g is zero)."""
    gg = float(g @ g)
    return v if gg <= 0 else v - (float(v @ g) / gg) * g


def _mean(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=0) if x.shape[0] else np.zeros(x.shape[1])


@dataclass(frozen=True, slots=True)
class Votes:
    """Per component: the preference, the general pull, the adapter's shift, and whether it agrees."""

    names: tuple[str, ...]
    preference: tuple[float, ...]
    """p: mean chosen - rejected projection, train split (positive by construction)."""
    general: tuple[float, ...]
    """g: mean (chosen + rejected) / 2 - base projection on the valid split: where any training on these
    texts would move the answers."""
    shift: tuple[float, ...]
    """t: mean tuned - base projection on the valid split."""
    agrees: tuple[bool, ...]
    """sign of t with g projected out == sign of p with g projected out (a zero residual does not agree)."""

    @property
    def k(self) -> int:
        return len(self.agrees)

    @property
    def agreeing(self) -> int:
        return int(sum(self.agrees))


def vote(p: np.ndarray, g: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per component: does the shift t follow the preference p once the general pull g is projected out?"""
    return residual(t, g) * residual(p, g) > 0


def votes(values: Mapping[str, np.ndarray], is_train: np.ndarray, comps: Components) -> Votes:
    """The components' votes from [pairs, features] tables of chosen, rejected, tuned and base (the columns
    of `comps.features`), split by `is_train`."""
    a = {r: np.asarray(values[r], dtype=float) for r in ("chosen", "rejected", "tuned", "base")}
    tr = np.asarray(is_train, dtype=bool)
    va = ~tr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p = _mean(comps.project(a["chosen"][tr] - a["rejected"][tr]))
        g = _mean(comps.project((a["chosen"][va] + a["rejected"][va]) / 2 - a["base"][va]))
        t = _mean(comps.project(a["tuned"][va] - a["base"][va]))
    return Votes(tuple(comps.names()), tuple(map(float, p)), tuple(map(float, g)), tuple(map(float, t)),
                 tuple(bool(x) for x in vote(p, g, t)))


def random_direction_pass_rate(d_cr_train: np.ndarray, comps: Components, decide: Callable[[int, int], bool],
                               runs: int, n_valid: int, rng: np.random.Generator, isotropic: bool = False,
                               shift_sd: float = 0.3) -> float:
    """Share of simulated adapters moving the answers in a random direction that `decide(k, K)` passes.

    Random adapters on a real feature table: the shift and the general pull are Gaussian vectors over the
    features, with the covariance of the data's own standardised chosen - rejected differences (correlated
    features move together, as they do) or, with `isotropic`, none; each valid pair adds a real pair's
    centred chosen - rejected row with a random sign (real per-pair noise, real correlation, no preference in
    it). Nothing follows the preference, so every pass is a false pass."""
    z = standardised(d_cr_train, comps.scale)
    noise = z - z.mean(axis=0)
    chol = np.linalg.cholesky(np.atleast_2d(np.cov(z, rowvar=False)) + 1e-9 * np.eye(z.shape[1]))
    w = np.asarray(comps.loadings).T
    p = z.mean(axis=0) @ w
    hits = 0
    for _ in range(runs):
        shift, pull = (rng.standard_normal(z.shape[1]) if isotropic else chol @ rng.standard_normal(z.shape[1])
                       for _ in range(2))
        rows = noise[rng.integers(0, z.shape[0], n_valid)] * rng.choice([-1.0, 1.0], (n_valid, 1))
        t = (shift_sd * (shift + pull) + rows.mean(axis=0)) @ w
        hits += bool(decide(int(vote(p, shift_sd * pull @ w, t).sum()), comps.k))
    return hits / runs


def signal_columns(names: Sequence[str], signal: set[str], scale: Sequence[float]) -> list[int]:
    """The columns of the data-signal features that can be standardised (S_j finite and above 0)."""
    return [j for j, n in enumerate(names) if n in signal and math.isfinite(scale[j]) and scale[j] > 0]
