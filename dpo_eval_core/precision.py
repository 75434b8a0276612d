"""bfloat16 speed with float32 verdicts: which items a bfloat16 pass cannot settle, by a measured error band.

A bfloat16 forward pass moves a sum of n token log-probabilities away from float32's by up to a `Band` of
sqrt(n) (fitted to the largest differences measured on UltraFeedback, the demo's pairs, ARC-Easy and MMLU,
times a safety factor; docs/performance.md). What the reward and forgetting claims read from log-probs are signs of differences: a
pair is right when its chosen log-ratio beats its rejected one (summed, and per token), a question is answered
with the choice of the largest log-likelihood (acc) or log-likelihood per character (acc_norm). Where such a
difference is larger than the two bands together, float32 cannot reverse it; where it is not, the item is
scored again in float32 on the same weights (HFBackend.exact), so every pair's correctness and every
question's answer are float32's, and so are the rate verdicts built on them.

A mean of per-pair values (reward-margin) moves with every pair's error, not only the near ties': its
verdict is kept only when it is the same with every margin moved to the edges of its band (all down, all up,
spread out, pulled in: the moves that shift the mean and the spread its interval is made of). Until it is,
pairs are scored in float32 widest band first, as few as would settle it (`to_settle`): a float32 value has
no band, so each one narrows what the mean can move.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Hashable, Sequence, TypeVar

import numpy as np

from .errors import DpoEvalError


T = TypeVar("T")

PILOT = 16
"""Items a stage scores in bfloat16 first, to see what share of them float32 would have to score again."""
BREAK_EVEN = 0.4
"""Past this share of the pilot unsettled, the rest of the stage is scored in float32 directly. A bfloat16 pass
costs about 0.55 of a float32 one here (UltraFeedback pairs 127.8 s against 242.7 s, the demo's 31.5 s against
56.2 s), so with a share s of the items scored again it costs (0.55 + s) of float32 alone, and more where the
items scored again are the long ones (their bands are wider): it pays below s = 0.45, less a margin. Out of a
pilot of 16, a stage with a true share of 0.2 switches with chance 0.03 (7 or more unsettled), one of 0.6 stays
with chance 0.06: a cost decision; the values are float32's either way."""


def two_passes(n: int, fast: Callable[[list[int]], list[T]], exact: Callable[[list[int]], list[T]],
               unsettled: Callable[[list[int], list[T]], list[int]],
               first: Sequence[int] | None = None) -> tuple[list[T], list[int]]:
    """The n items' values, float32's (`exact`) wherever the bfloat16 pass (`fast`) cannot settle one
    (`unsettled(items, their values)` names them), and the items float32 scored, in order. The first PILOT items
    of `first` (an order of the n items; default 0, 1, ...) go through bfloat16 first; where more than BREAK_EVEN
    of them are unsettled, the rest go to float32 directly (a bfloat16 pass that float32 mostly repeats costs more
    than float32 alone). A stage measured in rounds passes its seeded order, so every round pilots the same items
    (cached) and makes the same choice; a pilot of each round's lowest-indexed items changed from round to round,
    and a round that chose bfloat16 after one that chose float32 paid for both passes."""
    ranked = list(range(n)) if first is None else list(first)
    if sorted(ranked) != list(range(n)):
        raise DpoEvalError(f"two_passes: `first` must order the {n} items 0..{n - 1} once each, got "
                           f"{len(ranked)} indices; pass sequential.order of the items' ids")
    pilot, rest = sorted(ranked[:PILOT]), sorted(ranked[PILOT:])
    values: list[T | None] = [None] * n
    for i, v in zip(pilot, fast(pilot) if pilot else ()):
        values[i] = v
    again = unsettled(pilot, [values[i] for i in pilot])  # type: ignore[misc]
    if rest and len(again) > BREAK_EVEN * len(pilot):
        again = again + rest
    elif rest:
        for i, v in zip(rest, fast(rest)):
            values[i] = v
        again = again + unsettled(rest, [values[i] for i in rest])  # type: ignore[misc]
    again = sorted(again)
    for i, v in zip(again, exact(again) if again else ()):
        values[i] = v
    return values, again  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class Band:
    """factor x scale x sqrt(n): how far a bfloat16 pass may move a sum of about n token log-probabilities (a
    sum of n rounding errors grows as sqrt(n)). `scale` is the largest |bfloat16 - float32| / sqrt(n) measured,
    `factor` the safety factor for data and models unlike the measured ones."""

    scale: float
    factor: float

    def __call__(self, n: float) -> float:
        return self.factor * self.scale * math.sqrt(max(float(n), 0.0))


SUMMED = Band(scale=0.22, factor=2.0)
"""A pair's margin in nats, (chosen log-ratio) - (rejected log-ratio), n = chosen + rejected tokens: the two
continue one prompt, and their errors partly cancel. Measured largest |error| / sqrt(n): 0.146 on 40
UltraFeedback pairs (263 tokens a completion at the median), 0.217 on 40 of the demo's pairs."""
PER_TOKEN = Band(scale=0.27, factor=2.0)
"""A pair's per-token margin, chosen log-ratio / its tokens - rejected log-ratio / its tokens, n = 1/chosen
tokens + 1/rejected tokens (each side's error / its tokens shrinks as 1/sqrt(tokens)). Measured largest: 0.269
on the UltraFeedback pairs, 0.242 on the demo's."""
CHOICE = Band(scale=0.315, factor=2.0)
"""One multiple-choice continuation's log-likelihood, n = its tokens (acc_norm divides each by its own length,
so each side's error counts). Measured largest: 0.315 on 150 ARC-Easy questions (cloze), 0.223 on 150 MMLU
medical ones (letters), both models."""
CHOICES = Band(scale=0.28, factor=2.0)
"""The difference of two choices' log-likelihoods (acc), n = their tokens together: they continue one prompt.
Measured largest: 0.280 on the ARC-Easy questions, 0.224 on the MMLU ones."""


def unsettled_pairs(ratios: Sequence[tuple[float, float]], n_tokens: Sequence[tuple[int, int]]) -> list[int]:
    """The pairs whose correctness a float32 pass could reverse: the (chosen, rejected) log-ratios' difference
    within SUMMED's band, or their per-token difference within PER_TOKEN's. NaN pairs (unscorable) are not."""
    out = []
    for i, ((c, r), (nc, nr)) in enumerate(zip(ratios, n_tokens)):
        if math.isnan(c) or math.isnan(r):
            continue
        nc, nr = max(nc, 1), max(nr, 1)
        if abs(c - r) <= SUMMED(nc + nr) or abs(c / nc - r / nr) <= PER_TOKEN(1 / nc + 1 / nr):
            out.append(i)
    return out


def margin_reach(n_tokens: Sequence[tuple[int, int]], beta: float) -> np.ndarray:
    """How far each pair's reward margin (beta x nats) may lie from float32's: beta x SUMMED's band."""
    return np.array([beta * SUMMED(max(nc, 1) + max(nr, 1)) for nc, nr in n_tokens])


def unsettled_choice(logps: Sequence[float], n_tokens: Sequence[int], norm_lengths: Sequence[int], metric: str
                     ) -> bool:
    """Whether a float32 pass could pick another choice than the best one here on `metric`: by log-likelihood
    (acc: another choice within CHOICES' band of the difference), or by log-likelihood per character (acc_norm:
    within the two choices' CHOICE bands, each divided by its length)."""
    lp = np.asarray(logps, dtype=float)
    if np.isnan(lp).any() or lp.size < 2:
        return False
    n = np.asarray(n_tokens, dtype=float)
    if metric == "acc_norm":
        chars = np.asarray(norm_lengths, dtype=float)
        values, reach = lp / chars, np.array([CHOICE(k) for k in n]) / chars
        top = int(np.argmax(values))
        return any(values[top] - values[j] <= reach[top] + reach[j] for j in range(lp.size) if j != top)
    top = int(np.argmax(lp))
    return any(lp[top] - lp[j] <= CHOICES(n[top] + n[j]) for j in range(lp.size) if j != top)


def mean_settled(values: np.ndarray, reach: np.ndarray, outcomes: Callable[[np.ndarray], Hashable]) -> bool:
    """Whether `outcomes` (a mean claim's decisions, at every level it is decided at) is the same for `values`
    and for the values moved by up to `reach` each: all down, all up, away from the mean, toward it."""
    x, b = np.asarray(values, dtype=float), np.asarray(reach, dtype=float)
    if not x.size or not b.any():
        return True
    away = np.sign(x - x.mean())
    seen = outcomes(x)
    return all(outcomes(y) == seen for y in (x - b, x + b, x + away * b, x - away * np.minimum(b, np.abs(x - x.mean()))))


def to_settle(values: np.ndarray, reach: np.ndarray, outcomes: Callable[[np.ndarray], Hashable],
              at_least: int = 0) -> np.ndarray:
    """The fewest items (and `at_least` as many), widest reach first, whose float32 values would settle the
    mean's verdict (mean_settled) if they were these values: the next ones to score in float32. Empty when it
    is settled. A float32 value may differ from the bfloat16 one it replaces, so settle again after scoring
    them (asking at_least as many as were scored so far keeps the passes few: each doubles them)."""
    x, b = np.asarray(values, dtype=float), np.asarray(reach, dtype=float)
    order = np.argsort(-b, kind="stable")
    order = order[b[order] > 0]

    def settled(k: int) -> bool:
        left = b.copy()
        left[order[:k]] = 0.0
        return mean_settled(x, left, outcomes)

    if settled(0):
        return order[:0]
    lo, hi = 0, order.size  # settled(hi): no item keeps a reach
    while hi - lo > 1:  # a binary search: each test decides the claim 4 times a level, so 60,000 pairs cost 16
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if settled(mid) else (mid, hi)
    return order[:max(hi, at_least)]


@dataclass(frozen=True, slots=True)
class Rescored:
    """How many items of a stage the bfloat16 pass left to float32, and why, for results.json."""

    items: int
    rescored: int
    for_mean: int = 0
    """Of `rescored`, how many were scored because the mean's verdict could move within their bands (to_settle),
    not because their own correctness could."""
