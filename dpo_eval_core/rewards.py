"""The DPO implicit reward, computed as TRL computes it, with intervals that stay honest at small n.

reward = beta * (log p_policy(completion | prompt) - log p_reference(completion | prompt)),
policy = base + adapter, reference = the same weights with the adapter disabled.
accuracy = mean(reward_chosen > reward_rejected) (ties count as not preferred),
margin = mean(reward_chosen - reward_rejected).

The summed reward grows with the length of the completion, so an adapter that only shifts every
token's log-probability (a random, degrading one) "prefers" the shorter or the longer answer of
each pair, and its accuracy follows the data's length bias. The per-token accuracy compares
rewards divided by the number of completion tokens (length-normalised, as SimPO and length-
controlled evaluations do): it stays at chance for such an adapter and holds for a real one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
from tqdm.auto import tqdm

from .backend import Backend
from .cache import Cache, memoized
from .data import PreferencePair
from .decide import clopper_pearson, mean_bounds
from .identity import ModelIdentity, logp_key
from .precision import Rescored, margin_reach, unsettled_pairs


@dataclass(frozen=True, slots=True)
class PairLogps:
    policy_chosen: float
    policy_rejected: float
    reference_chosen: float
    reference_rejected: float
    n_chosen: int
    n_rejected: int
    """Completion tokens scored (after the max_length cut); 0 where the log-probs are NaN."""


@dataclass(frozen=True, slots=True)
class Estimate:
    value: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True, slots=True)
class RewardSummary:
    n: int
    beta: float
    accuracy: Estimate
    accuracy_per_token: Estimate
    """Accuracy of rewards divided by completion length: not moved by length alone."""
    margin: Estimate
    chosen: Estimate
    rejected: Estimate
    margins: tuple[float, ...]
    """Per-pair reward margins, for the report's distribution plot."""
    all_zero: bool
    """Every reward is exactly 0: policy equals reference (a zero adapter, or no adapter active)."""
    n_unscorable: int = 0
    """Pairs left out because the prompt alone fills max_length (as TRL drops them)."""
    pair_ids: tuple[str, ...] = ()
    """The scored pairs' ids, in the order of `margins`, `correct` and `correct_per_token`: paired comparisons
    with another adapter or a baseline match pairs by id."""
    correct: tuple[bool, ...] = ()
    correct_per_token: tuple[bool, ...] = ()
    rescored: Rescored | None = None
    """Under a bfloat16 pass with float32 verdicts: how many pairs were scored again in float32."""


def score_logps(backend: Backend, pairs: Sequence[PreferencePair], *, model: ModelIdentity, cache: Cache,
                batch_size: int, max_tokens: int | None, max_length: int | None = None) -> tuple[list[PairLogps], int]:
    """Policy and reference log-probs of chosen and rejected for each pair; cached per (model, pair).

    What is missing is tokenized once, then scored pair by pair from one prompt pass (chosen and
    rejected continue the same prompt KV cache), in batches of at most `batch_size` rows and
    `max_tokens` padded tokens, grouped by length: long rows are not padded to each other, and a
    batch of long rows does not outgrow the caches. Reference log-probs are keyed without
    the adapter, so a new adapter reuses them. Each entry also holds the number of completion tokens
    scored, so a warm run tokenizes nothing.
    """
    items = [(i, which, adapter) for adapter in (True, False) for i in range(len(pairs))
             for which in ("chosen", "rejected")]
    identity = {True: model, False: model.without_adapter()}
    keys = [logp_key(identity[a], pairs[i].messages, getattr(pairs[i], w), max_length) for i, w, a in items]

    def compute(missing: list[int]) -> Iterator[tuple[int, Any]]:
        rows = dict(zip(missing, backend.scored_rows([pairs[items[k][0]].messages for k in missing],
                                                     [getattr(pairs[items[k][0]], items[k][1]) for k in missing],
                                                     max_length)))
        with tqdm(total=len(missing), desc="log-probs", unit="seq", leave=False) as bar:
            for adapter in (True, False):  # one adapter state per batch
                groups: dict[int, list[int]] = {}  # chosen and rejected of a pair share one prompt pass
                for k in missing:
                    if items[k][2] == adapter:
                        groups.setdefault(items[k][0], []).append(k)
                keys_of = list(groups.values())
                for g, out in backend.group_logprobs([[rows[k] for k in ks] for ks in keys_of], adapter=adapter,
                                                     batch_size=batch_size, max_tokens=max_tokens,
                                                     max_length=max_length):
                    yield from ((k, {"logp": None if math.isnan(lp) else lp, "n_tokens": len(rows[k][1])})
                                for k, lp in zip(keys_of[g], out))
                    bar.update(len(keys_of[g]))

    entries, computed = memoized(cache, "logp", keys, compute)
    values = {item: math.nan if e["logp"] is None else float(e["logp"]) for item, e in zip(items, entries)}
    n_tokens = {(i, w): int(e["n_tokens"]) for (i, w, _), e in zip(items, entries) if "n_tokens" in e}
    missing = [(i, w) for i in range(len(pairs)) for w in ("chosen", "rejected") if (i, w) not in n_tokens]
    if missing:  # entries written before counts were cached
        counts = backend.completion_lengths([pairs[i].messages for i, _ in missing],
                                            [getattr(pairs[i], w) for i, w in missing], max_length=max_length)
        n_tokens.update(zip(missing, counts))
    return [PairLogps(values[(i, "chosen", True)], values[(i, "rejected", True)], values[(i, "chosen", False)],
                      values[(i, "rejected", False)], n_tokens[(i, "chosen")], n_tokens[(i, "rejected")])
            for i in range(len(pairs))], computed


def unsettled(logps: Sequence[PairLogps]) -> list[int]:
    """The positions of the pairs of a bfloat16 pass whose correctness (summed or per token) a float32 pass could
    reverse (precision.unsettled_pairs): float32 scores them again (precision.two_passes)."""
    return unsettled_pairs([(x.policy_chosen - x.reference_chosen, x.policy_rejected - x.reference_rejected)
                            for x in logps], [(x.n_chosen, x.n_rejected) for x in logps])


def scorable(logps: Sequence[PairLogps]) -> list[int]:
    """The pairs with four log-probs (the others are unscorable: NaN), in order: summarize's values are theirs."""
    return [i for i, x in enumerate(logps) if not any(math.isnan(v) for v in (
        x.policy_chosen, x.policy_rejected, x.reference_chosen, x.reference_rejected))]


def margin_error(logps: Sequence[PairLogps], exact: set[int], beta: float) -> np.ndarray:
    """How far each scorable pair's reward margin (summarize's order) may lie from float32's: 0 for the pairs
    scored in float32, precision.margin_reach for the others."""
    keep = scorable(logps)
    reach = margin_reach([(logps[i].n_chosen, logps[i].n_rejected) for i in keep], beta)
    return np.where([i in exact for i in keep], 0.0, reach) if keep else reach


def log_ratio(policy: float, reference: float, tie_tolerance: float) -> float:
    """policy - reference, with float noise set to 0: log-probs computed in batches of different shapes (a
    reference reused from the cache, say) agree only to float precision (~1e-7 relative in fp32), so
    log-ratios within tie_tolerance * max(1, |reference|) are exact ties (GateConfig.reward_tie_tolerance)."""
    d = policy - reference
    return 0.0 if abs(d) <= tie_tolerance * max(1.0, abs(reference)) else d


def summarize(logps: Sequence[PairLogps], beta: float, ci_level: float, n_bootstrap: int,
              rng: np.random.Generator, *, tie_tolerance: float, pair_ids: Sequence[str] = ()) -> RewardSummary:
    """Accuracy (Clopper-Pearson interval), margin and mean rewards (Student's t interval on the per-pair
    values), and the per-pair values under `pair_ids` (one per entry of logps). Exact and t intervals do
    not collapse to a point at small n, as a percentile bootstrap does ([1, 1] from one right pair).
    `rng` and `n_bootstrap` are kept for callers; nothing here resamples."""
    keep = scorable(logps)
    unscorable = len(logps) - len(keep)
    ids = tuple(pair_ids[i] for i in keep) if pair_ids else ()
    logps = [logps[i] for i in keep]
    ratio_c = np.array([log_ratio(x.policy_chosen, x.reference_chosen, tie_tolerance) for x in logps])
    ratio_r = np.array([log_ratio(x.policy_rejected, x.reference_rejected, tie_tolerance) for x in logps])
    chosen, rejected = beta * ratio_c, beta * ratio_r
    margins = chosen - rejected
    correct = (chosen > rejected).astype(float)
    n_c = np.array([x.n_chosen for x in logps], dtype=float)
    n_r = np.array([x.n_rejected for x in logps], dtype=float)
    correct_per_token = (ratio_c / np.maximum(n_c, 1) > ratio_r / np.maximum(n_r, 1)).astype(float)

    def est(x: np.ndarray) -> Estimate:
        mean, lo, hi, _ = mean_bounds(x, ci_level)
        return Estimate(mean, lo, hi)

    def share(x: np.ndarray) -> Estimate:
        lo, hi = clopper_pearson(int(x.sum()), int(x.size), ci_level)
        return Estimate(float(x.mean()) if x.size else float("nan"), lo, hi)

    return RewardSummary(n=len(logps), beta=beta, accuracy=share(correct),
                         accuracy_per_token=share(correct_per_token), margin=est(margins),
                         chosen=est(chosen), rejected=est(rejected), margins=tuple(float(m) for m in margins),
                         all_zero=bool(len(logps)) and bool(np.all(chosen == 0) and np.all(rejected == 0)),
                         n_unscorable=unscorable, pair_ids=ids, correct=tuple(map(bool, correct)),
                         correct_per_token=tuple(map(bool, correct_per_token)))
