"""Multiple-choice question sets, in the layouts users have, and the prompts they are scored with.

Layouts (after --mcq-columns renames):
  question/choices/answer          MMLU (cais/mmlu) and plain sets: choices a list of strings, answer an
                                   index, a letter, or the text of a choice; optional subject
  question/choices{text,label}/answerKey   ARC (allenai/ai2_arc)
  question/options/answer_idx      MedQA style: options a {letter: text} dict, answer_idx a letter
  question/contexts/final_decision PubMedQA: the choices are yes, no, maybe; the abstract is the context

A set's `dev` split (or `train` without one) holds the few-shot examples; the questions asked are the
`test` split (else `validation`, else every row of a set without splits).

Prompt formats, as lm-evaluation-harness writes them:
  letters  "The following are multiple choice questions (with answers) about SUBJECT.\\n\\nQ\\nA. ..\\nB. ..
           \\nAnswer:" with the continuations " A", " B", ...   (its mmlu task)
  cloze    "Question: Q\\nAnswer:" with each choice's text as the continuation   (its arc/pubmedqa tasks)
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from .data import read_rows
from .errors import DataError

McqFormat = Literal["auto", "letters", "cloze"]
McqPrompt = Literal["chat", "raw"]
McqMetric = Literal["auto", "acc", "acc_norm"]
MCQ_COLUMNS = ("question", "choices", "answer", "subject", "answerKey", "options", "answer_idx", "contexts",
               "final_decision")
"""What --mcq-columns may rename a column to."""
CLOZE_LAYOUTS = ("arc", "pubmedqa")
"""Layouts whose lm-evaluation-harness tasks score the choice texts (cloze); MMLU-style sets score letters."""
LETTERS = string.ascii_uppercase
DROP_REASONS = ("empty", "not_text", "no_choices", "identical_choices", "answer_not_in_choices", "duplicate")
"""Why a row is left out; each is counted and reported, never scored."""
EVAL_SPLITS = ("test", "validation", "valid", "eval")
SHOT_SPLITS = ("dev", "train")
PUBMEDQA_CHOICES = ("yes", "no", "maybe")


@dataclass(frozen=True, slots=True)
class Question:
    """One question with its choices and the index of the right one."""

    question: str
    choices: tuple[str, ...]
    answer: int
    subject: str | None = None
    context: str | None = None
    """Text the question is about (PubMedQA's abstract), shown before it."""

    @property
    def question_id(self) -> str:
        """sha256 of context, question and choices: identifies the question in caches and reports."""
        return _hash(json.dumps([self.context, self.question, list(self.choices)], ensure_ascii=False))


@dataclass(frozen=True, slots=True)
class QuestionSet:
    """The questions of one --mcq source, its few-shot pool, and an account of what was dropped."""

    name: str
    """The bracket of its claim ids: no-forgetting[NAME]."""
    source: str
    layout: str
    questions: tuple[Question, ...]
    shots: tuple[Question, ...]
    """Few-shot examples (the dev split); never asked."""
    n_rows: int
    dropped: Mapping[str, int]
    truncated_by_max_questions: int = 0

    @property
    def chance(self) -> float:
        """Expected accuracy of guessing uniformly: mean of 1 / number of choices."""
        return sum(1 / len(q.choices) for q in self.questions) / len(self.questions)

    def choice_counts(self) -> dict[int, int]:
        """How many questions have each number of choices (sets may mix them: ARC has 3 to 5)."""
        return dict(sorted(Counter(len(q.choices) for q in self.questions).items()))


@dataclass(frozen=True, slots=True)
class McqSettings:
    """How questions become prompts; every field changes the scores, so all are part of the cache key."""

    format: McqFormat = "auto"
    """letters, cloze, or auto: cloze for ARC and PubMedQA layouts, letters otherwise (as lm-evaluation-harness's
    arc_easy, pubmedqa and mmlu tasks)."""
    prompt: McqPrompt = "chat"
    """chat: the prompt is the user turn of the model's chat template and the continuation its answer;
    raw: plain text as lm-evaluation-harness feeds a base model (no template, no special tokens)."""
    shots: int = 0
    max_questions: int | None = None
    """At most this many questions per set (the first by seeded hash), for quick runs."""
    metric: McqMetric = "auto"
    """What the forgetting claim gates on: acc, acc_norm, or auto: acc_norm for cloze (lm-evaluation-harness's
    convention for ARC-style sets, where choices differ in length), acc for letters (equal there)."""

    def resolved(self, layout: str) -> "McqSettings":
        """These settings for a set of this layout, with `auto` format and metric made concrete."""
        fmt = self.format if self.format != "auto" else "cloze" if layout in CLOZE_LAYOUTS else "letters"
        metric = self.metric if self.metric != "auto" else "acc_norm" if fmt == "cloze" else "acc"
        return McqSettings(fmt, self.prompt, self.shots, self.max_questions, metric)


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def set_names(sources: Sequence[str]) -> tuple[str, ...]:
    """A claim-id-safe name per source: the file stem or the dataset id's last part; repeats get -2, -3."""
    names: list[str] = []
    for src in sources:
        stem = Path(src).stem if Path(src).suffix else src.rstrip("/").split("/")[-1]
        base = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-") or "mcq"
        name, k = base, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return tuple(names)


# --------------------------------------------------------------------------- layouts


def _layout(columns: set[str]) -> str:
    if {"question", "final_decision"} <= columns:
        return "pubmedqa"
    if {"question", "options", "answer_idx"} <= columns:
        return "medqa"
    if {"question", "choices", "answerKey"} <= columns:
        return "arc"
    if {"question", "choices", "answer"} <= columns:
        return "question/choices/answer"
    return ""


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _answer_index(answer: Any, choices: Sequence[str], labels: Sequence[str]) -> int | None:
    """An index, a label (A, B, ... or the set's own), or a choice's text -> its index; None if none fits."""
    if isinstance(answer, bool):
        return None
    if isinstance(answer, int) or (isinstance(answer, float) and answer.is_integer()):
        i = int(answer)
        return i if 0 <= i < len(choices) else None
    if isinstance(answer, str):
        a = answer.strip()
        if a in labels:
            return list(labels).index(a)
        if a.isdigit() and not any(lbl.isdigit() for lbl in labels):
            return _answer_index(int(a), choices, labels)
        if a in choices and list(choices).count(a) == 1:
            return list(choices).index(a)
    return None


def _row_to_question(row: Mapping[str, Any], layout: str) -> Question | str:
    """A Question, or the reason the row is dropped."""
    question = row.get("question")
    if question is None or (isinstance(question, str) and not question.strip()):
        return "empty"
    if not isinstance(question, str):
        return "not_text"
    subject, context = _text(row.get("subject")), None
    if layout == "pubmedqa":
        ctx = row.get("contexts")
        context = "\n".join(ctx) if isinstance(ctx, list) and all(isinstance(c, str) for c in ctx) else _text(ctx)
        choices: list[Any] = list(PUBMEDQA_CHOICES)
        labels: Sequence[str] = PUBMEDQA_CHOICES
        answer = row.get("final_decision")
        answer = answer.strip().lower() if isinstance(answer, str) else answer
    elif layout == "medqa":
        options = row.get("options")
        if not isinstance(options, dict) or not options:
            return "no_choices"
        labels = sorted(str(k) for k in options)
        choices = [options[k] for k in sorted(options, key=str)]
        answer = row.get("answer_idx")
    elif layout == "arc":
        raw = row.get("choices")
        if isinstance(raw, dict) and isinstance(raw.get("text"), list) and isinstance(raw.get("label"), list) \
                and len(raw["text"]) == len(raw["label"]):
            choices, labels = list(raw["text"]), [str(x) for x in raw["label"]]
        elif isinstance(raw, list) and all(isinstance(c, dict) and "text" in c and "label" in c for c in raw):
            choices, labels = [c["text"] for c in raw], [str(c["label"]) for c in raw]
        else:
            return "no_choices"
        answer = row.get("answerKey")
    else:
        choices = row.get("choices")  # type: ignore[assignment]
        if not isinstance(choices, list):
            return "no_choices" if choices is None or choices == "" else "not_text"
        labels = LETTERS[:len(choices)]
        answer = row.get("answer")
    if len(choices) < 2:
        return "no_choices"
    if len(choices) > len(LETTERS) or not all(isinstance(c, str) for c in choices):
        return "not_text"
    if any(not c.strip() for c in choices):
        return "empty"
    if len({c.strip() for c in choices}) < len(choices):
        return "identical_choices"
    index = _answer_index(answer, choices, labels)
    if index is None:
        return "answer_not_in_choices"
    return Question(question, tuple(choices), index, subject, context if context and context.strip() else None)


def load_questions(source: str, name: str, *, columns: Sequence[tuple[str, str]] = (),
                   max_questions: int | None = None, seed: int = 0) -> QuestionSet:
    """Read one --mcq source; raise DataError with a fix when unusable. Duplicate questions (same context,
    question and choices) are asked once: a repeat would count twice in the paired test."""
    raw = read_rows(source, option="--mcq")
    renames = dict(columns)
    named = {split: [{renames.get(k, k): v for k, v in row.items()} for row in rows] for split, rows in raw.items()}
    n_rows = sum(len(rows) for rows in named.values())
    if n_rows == 0:
        raise DataError(f"--mcq {source}: the set is empty (0 rows).")
    found = {k for rows in named.values() for row in rows for k in row}
    layout = _layout(found)
    if not layout:
        raise DataError(f"--mcq {source}: no multiple-choice columns. Found columns: {', '.join(sorted(found))}. "
                        f"Expected question/choices/answer (MMLU), question/choices/answerKey (ARC), "
                        f"question/options/answer_idx (MedQA) or question/contexts/final_decision (PubMedQA). "
                        f"Map yours with --mcq-columns, e.g. --mcq-columns stem=question,options=choices,label=answer")
    lower = {s.lower(): s for s in named}
    asked = next((lower[s] for s in EVAL_SPLITS if s in lower), None)
    pool = next((lower[s] for s in SHOT_SPLITS if s in lower), None)
    if asked is None:
        if len(named) > 1 and pool is not None:
            raise DataError(f"--mcq {source}: splits {', '.join(repr(s) for s in named)} but none to ask "
                            f"({', '.join(EVAL_SPLITS)}). Name the evaluation split 'test'.")
        asked = next(iter(named))
    dropped: Counter[str] = Counter({r: 0 for r in DROP_REASONS})

    def parse(rows: list[dict[str, Any]], count: bool) -> list[Question]:
        out, seen = [], set()
        for row in rows:
            q = _row_to_question(row, layout)
            if isinstance(q, str) or q.question_id in seen:
                if count:
                    dropped["duplicate" if not isinstance(q, str) else q] += 1
                continue
            seen.add(q.question_id)
            out.append(q)
        return out

    questions = parse(named[asked], True)
    shots = parse(named[pool], False) if pool is not None and pool != asked else []
    if not questions:
        detail = ", ".join(f"{k}: {v}" for k, v in dropped.items() if v)
        raise DataError(f"--mcq {source}: none of {len(named[asked])} questions in split {asked!r} is usable "
                        f"(dropped {detail}).")
    truncated = 0
    if max_questions is not None and len(questions) > max_questions:
        keep = set(sorted(range(len(questions)),
                          key=lambda i: _hash(f"{seed}:{questions[i].question_id}"))[:max_questions])
        truncated = len(questions) - max_questions
        questions = [q for i, q in enumerate(questions) if i in keep]
    return QuestionSet(name, source, layout, tuple(questions), tuple(shots), n_rows, dict(dropped), truncated)


def load_question_sets(sources: Sequence[str], columns: Sequence[tuple[str, str]] = (),
                       max_questions: int | None = None, seed: int = 0) -> dict[str, QuestionSet]:
    """Every --mcq source, by the name its claims carry."""
    return {name: load_questions(src, name, columns=columns, max_questions=max_questions, seed=seed)
            for src, name in zip(sources, set_names(sources))}


# --------------------------------------------------------------------------- prompts


def _block(q: Question, fmt: McqFormat) -> str:
    """A question as the prompt shows it, up to and including 'Answer:'."""
    head = f"Abstract: {q.context}\n" if q.context else ""
    if fmt == "letters":
        options = "".join(f"\n{LETTERS[i]}. {c}" for i, c in enumerate(q.choices))
        return f"{head}{q.question.strip()}{options}\nAnswer:"
    return f"{head}Question: {q.question.strip()}\nAnswer:"


def continuations(q: Question, fmt: McqFormat) -> tuple[str, ...]:
    """What is scored after the prompt, one per choice: ' A', ' B', ... or ' ' + the choice's text."""
    return tuple(f" {LETTERS[i]}" if fmt == "letters" else f" {c}" for i, c in enumerate(q.choices))


def choice_strings(q: Question, fmt: McqFormat) -> tuple[str, ...]:
    """The strings acc_norm divides by (lm-evaluation-harness: the choice without the target delimiter)."""
    return tuple(LETTERS[i] if fmt == "letters" else c for i, c in enumerate(q.choices))


def prompt_text(q: Question, fmt: McqFormat, shots: Sequence[Question]) -> str:
    """The prompt: the MMLU description line (letters, with a subject), K answered examples, then q."""
    desc = ""
    if fmt == "letters" and q.subject:
        desc = f"The following are multiple choice questions (with answers) about {q.subject.replace('_', ' ')}.\n\n"
    solved = "".join(f"{_block(s, fmt)}{continuations(s, fmt)[s.answer]}\n\n" for s in shots)
    return desc + solved + _block(q, fmt)


def pick_shots(q: Question, pool: Sequence[Question], k: int) -> tuple[Question, ...]:
    """The first k examples of the pool from q's subject (all of the pool when q has none), as
    lm-evaluation-harness's MMLU takes the first k of the subject's dev split."""
    same = [s for s in pool if s.subject == q.subject and s.question_id != q.question_id]
    return tuple(same[:k])


@dataclass(frozen=True, slots=True)
class McqItem:
    """A question ready to score: its prompt, one continuation per choice, and acc_norm's lengths."""

    question: Question
    prompt: str
    continuations: tuple[str, ...]
    norm_lengths: tuple[int, ...] = field(default=())


def items(qset: QuestionSet, settings: McqSettings) -> list[McqItem]:
    """Every question of the set as a prompt with its continuations; DataError when the set has fewer
    few-shot examples than asked for."""
    settings = settings.resolved(qset.layout)
    out = []
    for q in qset.questions:
        shots = pick_shots(q, qset.shots, settings.shots)
        if len(shots) < settings.shots:
            where = f"subject {q.subject!r}" if q.subject else "the set"
            raise DataError(f"--mcq-shots {settings.shots}: {qset.source} has {len(shots)} few-shot examples for "
                            f"{where} (its dev split). Lower --mcq-shots, or add a 'dev' split.")
        out.append(McqItem(q, prompt_text(q, settings.format, shots), continuations(q, settings.format),
                           tuple(len(s) for s in choice_strings(q, settings.format))))
    return out
