"""Multiple-choice sets: every layout users have, drops that are counted and never scored, prompts as
lm-evaluation-harness writes them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpo_eval_core.errors import DataError
from dpo_eval_core.mcq import (
    LETTERS,
    McqSettings,
    Question,
    items,
    load_questions,
    prompt_text,
    set_names,
)


def write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def as_layout(q: dict, layout: str, answer_as: str) -> dict:
    """One question {question, choices, answer} written in a user's layout."""
    choices, i = q["choices"], q["answer"]
    if layout == "mmlu":
        answer = {"index": i, "letter": LETTERS[i], "text": choices[i]}[answer_as]
        return {"question": q["question"], "choices": choices, "answer": answer, "subject": "anatomy"}
    if layout == "arc":
        labels = [str(k + 1) for k in range(len(choices))] if answer_as == "index" else list(LETTERS[:len(choices)])
        return {"question": q["question"], "choices": {"text": choices, "label": labels}, "answerKey": labels[i]}
    if layout == "medqa":
        return {"question": q["question"], "options": {LETTERS[k]: c for k, c in enumerate(choices)},
                "answer_idx": LETTERS[i]}
    raise AssertionError(layout)


question_sets = st.lists(
    st.builds(lambda text, choices, data: {"question": text, "choices": choices,
                                           "answer": data.draw(st.integers(0, len(choices) - 1))},
              st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1).filter(str.strip),
              st.lists(st.text(min_size=1).filter(str.strip), min_size=2, max_size=6,
                       unique_by=str.strip), st.data()),
    min_size=1, max_size=8, unique_by=lambda q: (q["question"], tuple(q["choices"])))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(qs=question_sets, layout=st.sampled_from(["mmlu", "arc", "medqa"]),
       answer_as=st.sampled_from(["index", "letter", "text"]))
def test_every_layout_reads_back_the_same_questions(qs, layout, answer_as, tmp_path):
    if answer_as == "text" and layout != "mmlu":
        answer_as = "letter"
    if answer_as == "text" and any(c.strip() != c or c.strip() in LETTERS or c.strip().isdigit() for q in qs
                                   for c in q["choices"]):
        answer_as = "index"  # an answer given as text must match a choice exactly and read as neither a letter nor
        # an index (a digit string is an index: CSV files hold every answer as text)
    got = load_questions(write(tmp_path / "q.jsonl", [as_layout(q, layout, answer_as) for q in qs]), "q")
    want = [(q["question"], tuple(q["choices"]), q["answer"]) for q in qs]
    assert [(q.question, q.choices, q.answer) for q in got.questions] == want
    assert sum(got.dropped.values()) == 0 and got.choice_counts() == {
        n: sum(len(q["choices"]) == n for q in qs) for n in sorted({len(q["choices"]) for q in qs})}


def test_pubmedqa_rows_become_yes_no_maybe_questions_about_their_abstract(tmp_path):
    src = write(tmp_path / "p.jsonl", [{"pubid": "1", "question": "Does it work?", "contexts": ["One.", "Two."],
                                        "final_decision": "maybe"}])
    q = load_questions(src, "p").questions[0]
    assert (q.choices, q.answer, q.context) == (("yes", "no", "maybe"), 2, "One.\nTwo.")
    assert prompt_text(q, "cloze", ()) == "Abstract: One.\nTwo.\nQuestion: Does it work?\nAnswer:"


@pytest.mark.parametrize("row, reason", [
    pytest.param({"question": "Q?", "choices": [], "answer": 0}, "no_choices", id="no-choices"),
    pytest.param({"question": "Q?", "choices": ["only"], "answer": 0}, "no_choices", id="one-choice"),
    pytest.param({"question": "Q?", "choices": ["a", "b"], "answer": 2}, "answer_not_in_choices", id="index-outside"),
    pytest.param({"question": "Q?", "choices": ["a", "b"], "answer": "C"}, "answer_not_in_choices", id="letter-outside"),
    pytest.param({"question": "Q?", "choices": ["a", "b"], "answer": "z"}, "answer_not_in_choices", id="text-outside"),
    pytest.param({"question": "Q?", "choices": ["a", "b"], "answer": True}, "answer_not_in_choices", id="bool"),
    pytest.param({"question": "Q?", "choices": ["a", "a "], "answer": 0}, "identical_choices", id="same-choice"),
    pytest.param({"question": "", "choices": ["a", "b"], "answer": 0}, "empty", id="empty-question"),
    pytest.param({"question": "Q?", "choices": ["a", 3], "answer": 0}, "not_text", id="number-choice"),
])
def test_a_bad_row_is_a_counted_drop_never_a_score(row, reason, tmp_path):
    good = {"question": "Fine?", "choices": ["yes", "no"], "answer": 0}
    qs = load_questions(write(tmp_path / "q.jsonl", [good, row]), "q")
    assert [q.question for q in qs.questions] == ["Fine?"]
    assert qs.dropped[reason] == 1 and sum(qs.dropped.values()) == 1


def test_a_duplicate_question_is_asked_once_and_counted(tmp_path):
    row = {"question": "Q?", "choices": ["a", "b"], "answer": 1}
    qs = load_questions(write(tmp_path / "q.jsonl", [row, row, {**row, "choices": ["b", "a"]}]), "q")
    assert len(qs.questions) == 2 and qs.dropped["duplicate"] == 1


def test_choice_lists_of_different_lengths_are_scored_each_with_its_own_chance(tmp_path):
    rows = [{"question": "Two?", "choices": ["a", "b"], "answer": 0},
            {"question": "Five?", "choices": list("abcde"), "answer": 4}]
    qs = load_questions(write(tmp_path / "q.jsonl", rows), "q")
    assert qs.choice_counts() == {2: 1, 5: 1} and qs.chance == pytest.approx((1 / 2 + 1 / 5) / 2)
    its = items(qs, McqSettings())
    assert [it.continuations for it in its] == [(" A", " B"), (" A", " B", " C", " D", " E")]
    assert its[1].prompt.endswith("\nE. e\nAnswer:")


@pytest.mark.parametrize("rows, match", [
    pytest.param([{"stem": "Q?", "options": ["a", "b"]}], "no multiple-choice columns.*--mcq-columns", id="columns"),
    pytest.param([{"question": "Q?", "choices": [], "answer": 0}], "none of 1 questions.*no_choices: 1", id="none"),
    pytest.param([], "empty", id="empty"),
])
def test_an_unusable_set_is_refused_with_the_fix(rows, match, tmp_path):
    with pytest.raises(DataError, match=match):
        load_questions(write(tmp_path / "q.jsonl", rows), "q")


def test_columns_are_renamed_before_the_layout_is_read(tmp_path):
    src = write(tmp_path / "q.jsonl", [{"stem": "Q?", "opts": ["a", "b"], "key": "B"}])
    qs = load_questions(src, "q", columns=(("stem", "question"), ("opts", "choices"), ("key", "answer")))
    assert qs.questions[0].answer == 1 and qs.layout == "question/choices/answer"


def test_shots_come_from_the_dev_split_of_the_same_subject_and_are_never_asked(tmp_path):
    rows = [{"question": f"dev {s} {i}?", "choices": ["a", "b"], "answer": i % 2, "subject": s, "split": "dev"}
            for s in ("x", "y") for i in range(3)]
    rows += [{"question": "test x?", "choices": ["a", "b"], "answer": 0, "subject": "x", "split": "test"}]
    qs = load_questions(write(tmp_path / "q.jsonl", rows), "q")
    assert [q.question for q in qs.questions] == ["test x?"]
    prompt = items(qs, McqSettings(shots=2))[0].prompt
    assert prompt == ("The following are multiple choice questions (with answers) about x.\n\n"
                      "dev x 0?\nA. a\nB. b\nAnswer: A\n\ndev x 1?\nA. a\nB. b\nAnswer: B\n\n"
                      "test x?\nA. a\nB. b\nAnswer:")
    with pytest.raises(DataError, match="--mcq-shots 4: .* has 3 few-shot examples for subject 'x'"):
        items(qs, McqSettings(shots=4))


def test_max_questions_keeps_a_seeded_subset(tmp_path):
    rows = [{"question": f"Q{i}?", "choices": ["a", "b"], "answer": 0} for i in range(20)]
    src = write(tmp_path / "q.jsonl", rows)
    a, b = (load_questions(src, "q", max_questions=5, seed=s) for s in (0, 1))
    assert len(a.questions) == 5 and a.truncated_by_max_questions == 15
    assert a == load_questions(src, "q", max_questions=5, seed=0) and a.questions != b.questions


def test_set_names_are_claim_id_safe_and_distinct():
    assert set_names(["data/mmlu.jsonl", "other/mmlu.jsonl", "cais/mmlu", "a b/ärc (x).csv"]) == (
        "mmlu", "mmlu-2", "mmlu-3", "rc-x")


def test_question_ids_name_the_question_not_the_answer():
    q = Question("Q?", ("a", "b"), 0)
    assert q.question_id == Question("Q?", ("a", "b"), 1).question_id != Question("Q?", ("b", "a"), 0).question_id
