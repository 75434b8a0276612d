"""The adapter did not forget what the base knew: multiple-choice accuracy, tuned vs base, on the same
questions (--mcq; the demo brings an ARC-Easy sample)."""

from __future__ import annotations

import dataclasses
import html
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, get_args

from .. import decide as D
from .. import report as H
from ..claims import Claim, decided, not_worse, one_sided, percent, rate_floor
from ..compare import PairedComparison, compare_correct, match
from ..data import parse_columns
from ..errors import ConfigError, check_choice
from ..family import Family, Kind, Option
from ..forgetting import Accuracy, ForgettingSummary, measure
from ..mcq import MCQ_COLUMNS, McqFormat, McqMetric, McqPrompt, McqSettings, QuestionSet, load_question_sets, set_names
from ..scoring import exact_scorer, scorer
from ..sequential import Staged, order, paired_may_pass, planned_rounds, planned_tail, staged
from ..stages import Stage

if TYPE_CHECKING:
    from ..run import GateRun

QUESTION_SETS: Stage[dict[str, QuestionSet]] = Stage("question sets")
SUMMARY: Stage[ForgettingSummary] = Stage("forgetting")

ACCURACY = Kind("mcq-accuracy", "the tuned model answers this multiple-choice set above chance (tuned and base "
                                "accuracy, with intervals)", over="SET", gates=False)
KEPT = Kind("no-forgetting", "non-inferiority: the one-sided upper bound of tuned's accuracy drop against base is "
                             "below max_forgetting", over="SET")
SET_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True, slots=True)
class Settings:
    sets: tuple[str, ...] = ()
    """Multiple-choice sets (files or hub ids) to check forgetting on; none: the family is skipped."""
    columns: tuple[tuple[str, str], ...] = ()
    """Renames from a set's column names to question/choices/answer/subject/... (mcq.py lists layouts)."""
    format: McqFormat = "auto"
    """letters: MMLU style, 'A. ..' options and letter continuations; cloze: the choice texts; auto: cloze for
    ARC and PubMedQA layouts, letters for the others (as lm-evaluation-harness's tasks)."""
    metric: McqMetric = "auto"
    """What no-forgetting gates on: acc, acc_norm, or auto (acc_norm for cloze, acc for letters)."""
    prompt: McqPrompt = "chat"
    """chat: the question is the user turn of the chat template; raw: plain text, as lm-evaluation-harness."""
    shots: int = 0
    """Answered examples from the set's dev split before each question (zero-shot by default)."""
    max_questions: int | None = None
    """At most this many questions per set (the first by seeded hash)."""
    max_forgetting: float = 0.04
    """Non-inferiority margin of no-forgetting[SET], in accuracy: the tuned model may answer at most this share
    of questions fewer right than the base. Four points, so that a good adapter can show it with the data a
    team has: with 15% of answers changing and no true drop, 1,000 questions show it 88 times in 100 on a first
    look (two points needed about 3,000 for 80%; docs/decisions.md has the power table). It passes when the one-sided
    (1 - tail) upper bound of the drop is below it; a team that wants a tighter margin sets it and brings the
    questions the table names."""

    def __post_init__(self) -> None:
        check_choice("--mcq-format", self.format, get_args(McqFormat))
        check_choice("--mcq-prompt", self.prompt, get_args(McqPrompt))
        check_choice("--mcq-metric", self.metric, get_args(McqMetric))
        if self.shots < 0:
            raise ConfigError("--mcq-shots", self.shots, "an integer >= 0")
        if self.max_questions is not None and self.max_questions < 1:
            raise ConfigError("--mcq-max-questions", self.max_questions, "a positive integer",
                              "Leave it out to ask every question.")
        if len(set(self.sets)) != len(self.sets):
            raise ConfigError("--mcq", list(self.sets), "each set given once")
        if not 0.0 <= self.max_forgetting <= 1.0:
            raise ConfigError("forgetting.max_forgetting", self.max_forgetting, "a number in [0, 1]")

    @property
    def mcq(self) -> McqSettings:
        """How questions become prompts."""
        return McqSettings(self.format, self.prompt, self.shots, self.max_questions, self.metric)


def _columns(text: str) -> tuple[tuple[str, str], ...]:
    return parse_columns(text, "--mcq-columns", MCQ_COLUMNS)


OPTIONS = (
    Option("--mcq", "sets", "multiple-choice set to check forgetting on: a .jsonl/.json/.csv/.parquet file or hub "
           "dataset id in MMLU, ARC, MedQA or PubMedQA layout (repeatable; the demo brings an ARC-Easy sample)",
           repeat=True),
    Option("--mcq-columns", "columns", "rename multiple-choice columns, e.g. stem=question,label=answer", _columns),
    Option("--mcq-format", "format", "letters (MMLU style: 'A. ...' options, letter answers), cloze (the choice "
           "texts) or auto: cloze for ARC and PubMedQA layouts, letters for the others (auto)"),
    Option("--mcq-metric", "metric", "what no-forgetting gates on: acc, acc_norm (each choice's log-likelihood "
           "divided by its length in characters) or auto: acc_norm for cloze, acc for letters (auto)"),
    Option("--mcq-prompt", "prompt", "chat (the question as the chat template's user turn) or raw (plain text, as "
           "lm-evaluation-harness) (chat)"),
    Option("--mcq-shots", "shots", "answered examples from the set's dev split before each question (0)", int),
    Option("--mcq-max-questions", "max_questions", "at most this many questions per multiple-choice set (default: "
           "all)", int),
)


def question_sets(run: GateRun) -> dict[str, QuestionSet]:
    """The --mcq sets by claim name, read (and refused with the reason) before any model loads."""
    s = run.settings(FAMILY)
    return run.stages.once(QUESTION_SETS, lambda: load_question_sets(s.sets, s.columns, s.max_questions, run.cfg.seed))


def _measure(run: GateRun, qset: QuestionSet) -> ForgettingSummary:
    with run.ledger.phase("multiple choice"):
        backend, identity = scorer(run)
        out, n = measure(backend, qset, run.settings(FAMILY).mcq, run.cfg, model=identity, cache=run.cache,
                         exact=exact_scorer(run), first=order([q.question_id for q in qset.questions], run.cfg.seed))
    run.ledger.count("mcq_questions", n)
    return out


def _set(run: GateRun, name: str) -> QuestionSet:
    sets = question_sets(run)
    if name not in sets:
        raise ConfigError("claim id", name, "a set given with --mcq: " + (", ".join(sets) or "none"))
    return sets[name]


def in_rounds(run: GateRun, name: str) -> Staged[ForgettingSummary]:
    """One set's questions in rounds, stopping once no-forgetting[SET] is decided (sequential.py)."""
    qset, m = _set(run, name), run.settings(FAMILY).max_forgetting
    qs = qset.questions
    return staged(run, f"{FAMILY.name}[{name}]", [q.question_id for q in qs],
                  lambda idx: _measure(run, dataclasses.replace(qset, questions=tuple(qs[i] for i in idx))),
                  lambda s, g: forgetting(s, m, g), lambda s, g: can_pass(s, m, g, len(qs)))


def summary(run: GateRun, name: str) -> ForgettingSummary:
    """Tuned and base accuracy on one --mcq set, from the one loaded model (adapter toggled), cached: every
    question, or those the last sequential round used."""
    def compute() -> ForgettingSummary:
        rounds = in_rounds(run, name).run
        return rounds.measured if rounds else _measure(run, _set(run, name))
    return run.stages.once(SUMMARY.of(name), compute)


def can_pass(s: ForgettingSummary, max_forgetting: float, gate: Any, n_items: int) -> dict[str, bool]:
    """Whether no-forgetting may still pass at `gate` with the questions not yet scored
    (sequential.paired_may_pass; mcq-accuracy does not gate: not waited for)."""
    return {KEPT.id(s.name): paired_may_pass(s.gained, s.lost, s.n, n_items - s.n_unscorable, max_forgetting, gate)}


def _acc(a: Accuracy) -> str:
    return f"{a.value:.3f} [{a.ci_low:.3f}, {a.ci_high:.3f}]"


def forgetting(s: ForgettingSummary, max_forgetting: float, gate: Any) -> list[Claim]:
    """mcq-accuracy[SET] (the tuned model answers above chance) and no-forgetting[SET]: non-inferiority of
    tuned vs base on the gated metric (acc or acc_norm) with margin max_forgetting, on Tango's paired score
    interval: passes when the one-sided upper bound of the drop is below the margin, fails when its lower
    bound is above it, else inconclusive."""
    setting = f"{s.settings.format}, {s.settings.shots}-shot, {s.settings.prompt} prompt"
    notes = "".join(f"; {v} {k.replace('_', ' ')} dropped" for k, v in s.dropped.items() if v)
    if s.n_unscorable:
        notes += f"; {s.n_unscorable} left out (a choice had no token left under --max-length)"
    if s.n == 0:
        why = f"no question of {s.source} could be scored{notes}"
        return [Claim(k.id(s.name), False, None, "", "", 0, why) for k in (ACCURACY, KEPT)]
    lvl = percent(gate.ci_level)
    tuned, base = s.gated
    at_chance = tuned.ci_low <= s.chance and base.ci_low <= s.chance
    chance_note = (f"; both models answer at chance level ({s.chance:.3f}) on this set, so it cannot show "
                   f"forgetting: use a set the base model knows") if at_chance else ""
    above_chance = D.above(tuned.value, tuned.ci_low, tuned.ci_high, s.chance, s.n, rate_floor(gate), lambda m: (
        D.clopper_pearson(tuned.correct * m / s.n, m, D.power_level(gate.sized_at))))
    accuracy = decided(
        ACCURACY.id(s.name), above_chance, f"CI low > chance {s.chance:.3f}",
        f"{lvl} Clopper-Pearson CI [{tuned.ci_low:.3f}, {tuned.ci_high:.3f}]",
        f"acc tuned {_acc(s.tuned)}, base {_acc(s.base)}; acc_norm tuned {_acc(s.tuned_norm)}, base "
        f"{_acc(s.base_norm)} ({lvl} Clopper-Pearson); {s.metric} gates; chance {s.chance:.3f}; n={s.n} "
        f"({setting}){notes}", units="questions")
    d = PairedComparison(s.metric, "paired proportions", s.n, tuned.value, base.value, s.gained,
                         s.lost).decide(gate.tail, max_forgetting, gate.sized_at)
    verdict = {"pass": f"the drop is shown to be below max_forgetting {max_forgetting}",
               "fail": f"the drop is shown to exceed max_forgetting {max_forgetting}: the adapter forgot",
               "inconclusive": f"the data cannot tell whether the drop is below max_forgetting "
                               f"{max_forgetting}"}[d.outcome]
    bounds = f"{one_sided(gate)} bounds of tuned - base [{d.low:+.3f}, {d.high:+.3f}] (Tango, paired)"
    claim = decided(
        KEPT.id(s.name), d, f"drop upper bound < {max_forgetting}", bounds,
        f"{s.metric} tuned {tuned.value:.3f} vs base {base.value:.3f}: difference {d.estimate:+.3f}, {bounds}; "
        f"{s.lost} questions lost, {s.gained} gained ({s.discordance:.1%} changed); {verdict}{chance_note}",
        units="questions")
    return [accuracy, claim]


def claims(run: GateRun, name: str | None) -> list[Claim]:
    measured, rounds = summary(run, name or ""), in_rounds(run, name or "").run  # the report's section
    return list(rounds.claims) if rounds else forgetting(measured, run.settings(FAMILY).max_forgetting, run.gate)


def compare(run: GateRun, other: GateRun, what: str, cid: str) -> tuple[Claim, dict[str, Any]]:
    """This adapter's right and wrong answers against the --compare adapter's, question by question."""
    name = what.partition("[")[2][:-1]
    a, b = summary(run, name), summary(other, name)
    c = compare_correct(what, *match(a.question_ids, a.tuned_right, b.question_ids, b.tuned_right))
    m = run.settings(FAMILY).max_forgetting
    return not_worse(cid, c, m, f"max_forgetting {m}", run.gate, "this adapter",
                     other.label), {"items": {what: c}}


def _rows(s: Mapping[str, Any]) -> list[tuple[str, int, str, str, str]]:
    """(subject, questions, tuned acc [CI], base acc [CI], tuned - base) per subject, then 'all'."""
    rows = [(x["subject"], x["tuned"]["n"], H.accuracy(x["tuned"]), H.accuracy(x["base"]),
             f"{H.num(x['tuned']['value']) - H.num(x['base']['value']):+.3f}") for x in s["subjects"]]
    d = s["difference"]
    return rows + [("all", s["n"], H.accuracy(s["tuned"]), H.accuracy(s["base"]),
                    f"{H.num(d[0]):+.3f} [{H.num(d[1]):+.3f}, {H.num(d[2]):+.3f}]")]


def report(results: Mapping[str, Any]) -> str:
    """Per multiple-choice set: accuracy per subject, tuned vs base, with exact intervals, and the paired counts."""
    parts = []
    for name, s in (results.get(FAMILY.name) or {}).items():
        st = s["settings"]
        parts.append(f"<h3>{html.escape(name)}</h3><p>{html.escape(s['source'])} ({html.escape(s['layout'])}; "
                     f"{html.escape(st['format'])}, {st['shots']}-shot, {html.escape(st['prompt'])} prompt); chance "
                     f"{H.num(s['chance']):.3f}; no-forgetting gates on {html.escape(st.get('metric', 'acc'))}: "
                     f"{s['lost']} questions lost and {s['gained']} gained</p><table class='dpo-eval-forgetting'>"
                     + H.cells(("subject", "questions", "tuned acc", "base acc", "tuned - base"), "th"))
        parts += [H.cells(row) for row in _rows(s)]
        parts.append("</table>")
    return "<h2>Forgetting: multiple-choice accuracy</h2>" + "".join(parts) if parts else ""


def _sections(run: GateRun) -> dict[str, Any]:
    done = run.stages.each(SUMMARY)
    return {FAMILY.name: done} if done else {}


def plan(run: GateRun) -> list[Any]:
    from ..plan import Assumptions, forgetting_chance

    m = run.settings(FAMILY).max_forgetting
    return [forgetting_chance(KEPT.id(name), n, m, planned_tail(run, n), Assumptions(), rounds=planned_rounds(run, n))
            for name, n in ((name, len(qs.questions)) for name, qs in question_sets(run).items())]


FAMILY = Family(
    "forgetting", (ACCURACY, KEPT), claims, settings=Settings, options=OPTIONS, per_item=True, rank=60,
    arguments=lambda run, kind: set_names(run.settings(FAMILY).sets),
    accepts=lambda kind, arg: bool(SET_NAME.fullmatch(arg)),
    absent=lambda cfg: None if cfg.settings_of(FAMILY).sets else (
        "no --mcq given: pass a multiple-choice set (MMLU, ARC, MedQA or PubMedQA layout) to check that the adapter "
        "did not forget what the base knew"),
    check=question_sets, section=_sections, report=report, plan=plan,
    compared=lambda run: tuple(ACCURACY.id(s) for s in set_names(run.settings(FAMILY).sets)), compare=compare,
    doc="The adapter did not forget what the base knew: multiple-choice accuracy, tuned vs base.")
