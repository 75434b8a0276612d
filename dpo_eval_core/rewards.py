"""The DPO implicit reward, computed as TRL computes it, with bootstrap intervals.

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
from typing import Any, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from .backend import Backend, batches
from .cache import Cache, make_key
from .data import PreferencePair
from .stats import bootstrap_mean_ci


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


def score_logps(backend: Backend, pairs: Sequence[PreferencePair], *, cache: Cache, model_key: Mapping[str, Any],
                batch_size: int, lengths: Sequence[int], max_length: int | None = None) -> tuple[list[PairLogps], int]:
    """Policy and reference log-probs of chosen and rejected for each pair; cached per (model, pair).

    Reference log-probs are keyed without the adapter, so a new adapter reuses them. Each entry also
    holds the number of completion tokens scored, so a warm run tokenizes nothing.
    """
    ref_key = {**model_key, "adapter": None}
    values: dict[tuple[str, bool, int], float] = {}
    n_tokens: dict[tuple[str, int], int] = {}
    todo: dict[bool, list[tuple[int, str]]] = {True: [], False: []}
    keys = {}
    for i, p in enumerate(pairs):
        for adapter, mk in ((True, model_key), (False, ref_key)):
            for which, text in (("chosen", p.chosen), ("rejected", p.rejected)):
                key = make_key("logp", {"model": dict(mk), "messages": [list(m) for m in p.messages],
                                        "completion": text, "max_length": max_length})
                keys[(which, adapter, i)] = key
                hit = cache.get("logp", key)
                if hit is None:
                    todo[adapter].append((i, which))
                else:
                    values[(which, adapter, i)] = math.nan if hit["logp"] is None else float(hit["logp"])
                    if "n_tokens" in hit:
                        n_tokens[(which, i)] = int(hit["n_tokens"])
    computed = sum(len(v) for v in todo.values())
    if computed:
        with tqdm(total=computed, desc="log-probs", unit="seq", leave=False) as bar:
            for adapter, items in todo.items():
                lens = [lengths[i] + len(getattr(pairs[i], w)) // 4 for i, w in items]
                for batch in batches(len(items), batch_size, lens):
                    chunk = [items[b] for b in batch]
                    messages = [pairs[i].messages for i, _ in chunk]
                    texts = [getattr(pairs[i], w) for i, w in chunk]
                    out = backend.logprobs(messages, texts, adapter=adapter, max_length=max_length)
                    counts = backend.completion_lengths(messages, texts, max_length=max_length)
                    for (i, w), lp, n in zip(chunk, out, counts):
                        values[(w, adapter, i)], n_tokens[(w, i)] = lp, n
                        cache.put("logp", keys[(w, adapter, i)],
                                  {"logp": None if math.isnan(lp) else lp, "n_tokens": n})
                    bar.update(len(chunk))
    missing = [(i, w) for i in range(len(pairs)) for w in ("chosen", "rejected") if (w, i) not in n_tokens]
    if missing:  # entries written before counts were cached
        counts = backend.completion_lengths([pairs[i].messages for i, _ in missing],
                                            [getattr(pairs[i], w) for i, w in missing], max_length=max_length)
        n_tokens.update({(w, i): n for (i, w), n in zip(missing, counts)})
    return [PairLogps(values[("chosen", True, i)], values[("rejected", True, i)],
                      values[("chosen", False, i)], values[("rejected", False, i)],
                      n_tokens[("chosen", i)], n_tokens[("rejected", i)]) for i in range(len(pairs))], computed


LOGP_TOL = 1e-6
"""Log-probs computed in batches of different shapes (e.g. a reference reused from the cache) agree only to
float precision (~1e-7 relative in fp32); log-ratios within LOGP_TOL * max(1, |reference|) are exact ties."""


def log_ratio(policy: float, reference: float) -> float:
    """policy - reference, with float noise below LOGP_TOL set to 0."""
    d = policy - reference
    return 0.0 if abs(d) <= LOGP_TOL * max(1.0, abs(reference)) else d


def summarize(logps: Sequence[PairLogps], beta: float, ci_level: float, n_bootstrap: int,
              rng: np.random.Generator) -> RewardSummary:
    """Accuracy, margin and mean rewards, each with a percentile bootstrap interval."""
    rows = [x for x in logps if not any(math.isnan(v) for v in (x.policy_chosen, x.policy_rejected,
                                                                   x.reference_chosen, x.reference_rejected))]
    unscorable = len(logps) - len(rows)
    logps = rows
    ratio_c = np.array([log_ratio(x.policy_chosen, x.reference_chosen) for x in logps])
    ratio_r = np.array([log_ratio(x.policy_rejected, x.reference_rejected) for x in logps])
    chosen, rejected = beta * ratio_c, beta * ratio_r
    margins = chosen - rejected
    correct = (chosen > rejected).astype(float)
    n_c = np.array([x.n_chosen for x in logps], dtype=float)
    n_r = np.array([x.n_rejected for x in logps], dtype=float)
    correct_per_token = (ratio_c / np.maximum(n_c, 1) > ratio_r / np.maximum(n_r, 1)).astype(float)

    def est(x: np.ndarray) -> Estimate:
        lo, hi = bootstrap_mean_ci(x, ci_level, n_bootstrap, rng)
        return Estimate(float(x.mean()) if x.size else float("nan"), lo, hi)

    return RewardSummary(n=len(logps), beta=beta, accuracy=est(correct),
                         accuracy_per_token=est(correct_per_token), margin=est(margins),
                         chosen=est(chosen), rejected=est(rejected), margins=tuple(float(m) for m in margins),
                         all_zero=bool(len(logps)) and bool(np.all(chosen == 0) and np.all(rejected == 0)),
                         n_unscorable=unscorable)
