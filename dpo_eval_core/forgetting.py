"""Did the adapter forget? Multiple-choice accuracy of tuned and base, paired question by question.

Scoring follows lm-evaluation-harness's multiple choice: each choice's continuation is scored by its
summed log-likelihood given the prompt; `acc` takes the argmax, `acc_norm` the argmax of each sum
divided by the length in characters of the choice string. One prompt pass per question and adapter
state, the choices as continuations of its KV cache (`Backend.group_logprobs`), batched by tokens.

The comparison is paired: both models answer the same questions, so a question that the base got
right and the tuned model got wrong ("lost") is set against one that went the other way ("gained").
The no-forgetting claim is a non-inferiority decision on the paired difference (claims.py, decide.py).
The metric it gates on is acc for letters and acc_norm for cloze sets (lm-evaluation-harness's
convention: choices of different lengths), selectable with --mcq-metric.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
from tqdm.auto import tqdm

from .backend import Backend
from .cache import Cache, memoized
from .decide import clopper_pearson, tango_interval
from .identity import ModelIdentity, mcq_key
from .mcq import McqItem, McqSettings, QuestionSet, items
from .precision import Rescored, two_passes, unsettled_choice

if TYPE_CHECKING:
    from .config import EvalConfig


@dataclass(frozen=True, slots=True)
class Accuracy:
    """A share of questions answered right, with its exact (Clopper-Pearson) interval."""

    value: float
    ci_low: float
    ci_high: float
    correct: int
    n: int

    @staticmethod
    def of(right: np.ndarray, level: float) -> "Accuracy":
        k, n = int(right.sum()), int(right.size)
        lo, hi = clopper_pearson(k, n, level)
        return Accuracy(k / n if n else math.nan, lo, hi, k, n)


@dataclass(frozen=True, slots=True)
class SubjectAccuracy:
    subject: str
    tuned: Accuracy
    base: Accuracy


@dataclass(frozen=True, slots=True)
class ForgettingSummary:
    """One question set: tuned and base accuracy, their paired difference and the McNemar test."""

    name: str
    source: str
    layout: str
    settings: McqSettings
    n: int
    """Questions scored for both models (after drops and unscorable ones)."""
    n_unscorable: int
    """Questions left out because a choice had no token left under --max-length."""
    dropped: dict[str, int]
    truncated_by_max_questions: int
    choice_counts: dict[int, int]
    chance: float
    tuned: Accuracy
    base: Accuracy
    tuned_norm: Accuracy
    base_norm: Accuracy
    difference: tuple[float, float, float]
    """tuned - base on the gated metric: estimate and Tango's paired score interval at ci_level."""
    lost: int
    """Questions the base answered right and the tuned model wrong (on the gated metric)."""
    gained: int
    subjects: tuple[SubjectAccuracy, ...]
    question_ids: tuple[str, ...]
    tuned_right: tuple[bool, ...]
    base_right: tuple[bool, ...]
    """Per question, right under the gated metric."""
    rescored: Rescored | None = None
    """Under a bfloat16 pass with float32 verdicts: how many questions were scored again in float32."""

    @property
    def metric(self) -> str:
        """acc or acc_norm: what no-forgetting gates on."""
        return self.settings.metric

    @property
    def gated(self) -> tuple[Accuracy, Accuracy]:
        """(tuned, base) accuracy on the gated metric."""
        return (self.tuned_norm, self.base_norm) if self.metric == "acc_norm" else (self.tuned, self.base)

    @property
    def discordance(self) -> float:
        return (self.lost + self.gained) / self.n if self.n else math.nan


def score_questions(backend: Backend, qitems: Sequence[McqItem], settings: McqSettings, *, model: ModelIdentity,
                    cache: Cache, batch_size: int, max_tokens: int | None, max_length: int | None
                    ) -> tuple[list[dict[bool, list[float]]], int]:
    """Each question's choice log-likelihoods with the adapter (True) and without (False); cached per
    question and adapter state, so a new adapter reuses the base's side and a warm run scores nothing.
    With the chat template, the prompt is the user turn and each choice (without its leading space)
    starts the assistant's reply."""
    chat = settings.prompt == "chat"
    conts = continuation_texts(qitems, settings)
    jobs = [(i, adapter) for adapter in (True, False) for i in range(len(qitems))]
    identity = {True: model, False: model.without_adapter()}
    keys = [mcq_key(identity[a], qitems[i].prompt, conts[i], chat, max_length) for i, a in jobs]

    def compute(missing: list[int]) -> Iterator[tuple[int, Any]]:
        needed = sorted({jobs[k][0] for k in missing})  # each question tokenized once, for both adapter states
        rows = dict(zip(needed, question_rows(backend, [qitems[i] for i in needed], settings, max_length)))
        with tqdm(total=len(missing), desc="multiple choice", unit="question", leave=False) as bar:
            for adapter in (True, False):  # one adapter state per batch
                todo = [k for k in missing if jobs[k][1] == adapter]
                groups = [rows[jobs[k][0]] for k in todo]
                for g, out in backend.group_logprobs(groups, adapter=adapter, batch_size=batch_size,
                                                     max_tokens=max_tokens, max_length=max_length):
                    yield todo[g], {"logps": [None if math.isnan(v) else v for v in out]}
                    bar.update(1)

    entries, computed = memoized(cache, "mcq", keys, compute)
    out: list[dict[bool, list[float]]] = [{} for _ in qitems]
    for (i, adapter), e in zip(jobs, entries):
        out[i][adapter] = [math.nan if v is None else float(v) for v in e["logps"]]
    return out, computed


def continuation_texts(qitems: Sequence[McqItem], settings: McqSettings) -> list[tuple[str, ...]]:
    """Each question's choices as scored: after the chat template's reply start without their leading space."""
    chat = settings.prompt == "chat"
    return [tuple(c.lstrip(" ") for c in it.continuations) if chat else it.continuations for it in qitems]


def question_rows(backend: Backend, qitems: Sequence[McqItem], settings: McqSettings, max_length: int | None
                  ) -> list[list[tuple[list[int], list[int]]]]:
    """Each question's (context ids, continuation ids) per choice, as score_questions scores them."""
    chat = settings.prompt == "chat"
    return [backend.text_rows([(("user", q.prompt),) if chat else q.prompt] * len(c), c, max_length)
            for q, c in zip(qitems, continuation_texts(qitems, settings))]


def unsettled_questions(backend: Backend, qitems: Sequence[McqItem], scores: Sequence[dict[bool, list[float]]],
                        settings: McqSettings, max_length: int | None) -> list[int]:
    """The positions of the questions of a bfloat16 pass where a float32 pass could pick another choice on the
    gated metric, for either model (precision.unsettled_choice): float32 scores them again, so the answers the
    claims are decided on are float32's (the other metric's accuracy, reported beside, may not be)."""
    rows = question_rows(backend, qitems, settings, max_length)
    return [i for i, s in enumerate(scores) if any(
        unsettled_choice(s[a], [len(k) for _, k in rows[i]], qitems[i].norm_lengths, settings.metric)
        for a in (True, False))]


def predictions(logps: Sequence[float], norm_lengths: Sequence[int]) -> tuple[int, int]:
    """(acc's choice, acc_norm's choice): the argmax of the log-likelihoods, and of each divided by its
    choice string's length in characters (the first on ties, as numpy's argmax)."""
    lp = np.asarray(logps, dtype=float)
    return int(np.argmax(lp)), int(np.argmax(lp / np.asarray(norm_lengths, dtype=float)))


def summarize(qset: QuestionSet, qitems: Sequence[McqItem], scores: Sequence[dict[bool, list[float]]],
              settings: McqSettings, ci_level: float) -> ForgettingSummary:
    """Accuracies (acc and acc_norm) with intervals, per subject too, and the paired difference on the gated
    metric (`settings` resolved for this set)."""
    keep = [i for i, s in enumerate(scores) if not any(math.isnan(v) for a in (True, False) for v in s[a])]
    right = {a: np.array([[p == qitems[i].question.answer for p in predictions(scores[i][a], qitems[i].norm_lengths)]
                          for i in keep], dtype=bool).reshape(-1, 2) for a in (True, False)}
    col = 1 if settings.metric == "acc_norm" else 0
    tuned, base = right[True][:, col], right[False][:, col]
    lost, gained = int((base & ~tuned).sum()), int((tuned & ~base).sum())
    n = len(keep)
    lo, hi = tango_interval(gained, lost, n, ci_level)
    subjects = sorted({s for i in keep if (s := qitems[i].question.subject)})
    by_subject = tuple(SubjectAccuracy(s, Accuracy.of(tuned[m], ci_level), Accuracy.of(base[m], ci_level))
                       for s in subjects
                       if (m := np.array([qitems[i].question.subject == s for i in keep], dtype=bool)).any())
    return ForgettingSummary(
        qset.name, qset.source, qset.layout, settings, n, len(scores) - len(keep), dict(qset.dropped),
        qset.truncated_by_max_questions, qset.choice_counts(), qset.chance, Accuracy.of(right[True][:, 0], ci_level),
        Accuracy.of(right[False][:, 0], ci_level), Accuracy.of(right[True][:, 1], ci_level),
        Accuracy.of(right[False][:, 1], ci_level), ((gained - lost) / n if n else math.nan, lo, hi), lost, gained,
        by_subject, tuple(qitems[i].question.question_id for i in keep), tuple(map(bool, tuned)),
        tuple(map(bool, base)))


def measure(backend: Backend, qset: QuestionSet, mcq: McqSettings, cfg: EvalConfig, *, model: ModelIdentity,
            cache: Cache, exact: tuple[Backend, ModelIdentity] | None = None, first: Sequence[int] | None = None
            ) -> tuple[ForgettingSummary, int]:
    """Score one set for tuned and base (cached) with these prompt settings and the run's batching, and summarize
    it; returns (summary, question-and-state scores computed). With `exact` (a float32 pass and its identity),
    the questions the bfloat16 pass cannot settle are scored again by it, so every answer is float32's; `first`
    orders the questions for the bfloat16 pilot (precision.two_passes)."""
    settings = mcq.resolved(qset.layout)
    qitems = items(qset, settings)

    def score(how: tuple[Backend, ModelIdentity], these: Sequence[McqItem]) -> tuple[list[dict[bool, list[float]]], int]:
        return score_questions(how[0], these, settings, model=how[1], cache=cache, batch_size=cfg.batch_size,
                               max_tokens=cfg.resolved_batch_tokens, max_length=cfg.max_length)

    if exact is None:
        scores, computed = score((backend, model), qitems)
        return summarize(qset, qitems, scores, settings, cfg.gate.ci_level), computed
    counted = [0]

    def scored(how: tuple[Backend, ModelIdentity], idx: list[int]) -> list[dict[bool, list[float]]]:
        out, n = score(how, [qitems[i] for i in idx])
        counted[0] += n
        return out

    scores, idx = two_passes(len(qitems), lambda idx: scored((backend, model), idx), lambda idx: scored(exact, idx),
                             lambda idx, values: [idx[j] for j in unsettled_questions(
                                 backend, [qitems[i] for i in idx], values, settings, cfg.max_length)], first)
    return dataclasses.replace(summarize(qset, qitems, scores, settings, cfg.gate.ci_level),
                               rescored=Rescored(len(qitems), len(idx))), counted[0]
