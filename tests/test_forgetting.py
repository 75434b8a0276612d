"""Forgetting: multiple-choice scoring checked against lm-evaluation-harness itself, one prompt pass per
question equal to scoring each choice alone, the paired test, the claims, and the cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from tiny import make_adapter

from dpo_eval_core.backend import HFBackend
from dpo_eval_core.cache import Cache
from dpo_eval_core.chat import accepts_system
from dpo_eval_core.config import EvalConfig, GateConfig
from dpo_eval_core.decide import clopper_pearson
from dpo_eval_core.families.forgetting import forgetting
from dpo_eval_core.forgetting import measure, predictions, score_questions
from dpo_eval_core.identity import ModelIdentity
from dpo_eval_core.mcq import McqSettings, Question, items, load_questions, prompt_text
from dpo_eval_core.models import attach_adapter, load_base, load_tokenizer, resolve

ROWS = [{"question": f"What is {i} plus {i}?", "subject": "arithmetic", "answer": i % 4,
         "choices": [str(2 * i), f"{2 * i + 1} or so", "many", "x" * (i % 5 + 1)]} for i in range(10)]


def write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def load(adapter: Path) -> HFBackend:
    spec = resolve(EvalConfig(adapter=adapter))
    tok = load_tokenizer(spec.base)
    model, _ = attach_adapter(load_base(spec.base, "none", "float32", "cpu"), spec)
    return HFBackend(model, tok, system_ok=accepts_system(tok), device="cpu")


@pytest.fixture(scope="module")
def backend(tiny_adapter: Path) -> HFBackend:
    return load(tiny_adapter)


def model_id(name: str, adapter: str = "adapter") -> ModelIdentity:
    return ModelIdentity(f"base-{name}", adapter, "none", "float32", "cpu", "template")


def cfg(**kw) -> EvalConfig:
    return EvalConfig(batch_tokens=kw.pop("batch_tokens", 96), batch_size=kw.pop("batch_size", 8), **kw)


def forgetting_claims(s, gate: GateConfig, max_forgetting: float = 0.02):
    return forgetting(s, max_forgetting, gate)


# --------------------------------------------------------------------------- lm-evaluation-harness


def lm_eval_samples(model, tokenizer, source: str, doc_to_text: str, doc_to_choice, description: str = ""):
    """lm-evaluation-harness's own multiple-choice evaluation of a local set: per question, its acc,
    acc_norm and the log-likelihood of each choice."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    task = {"task": "dpo_eval_reference", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": source}},
            "test_split": "test", "output_type": "multiple_choice", "doc_to_text": doc_to_text,
            "doc_to_choice": doc_to_choice, "doc_to_target": "{{answer}}", "description": description,
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}]}
    out = simple_evaluate(model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4, device="cpu"),
                          tasks=[task], log_samples=True, num_fewshot=0)
    return sorted(out["samples"]["dpo_eval_reference"], key=lambda s: s["doc_id"])


def mmlu_template() -> dict:
    """lm-evaluation-harness's MMLU task template, as installed."""
    import lm_eval

    path = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default" / "_default_template_yaml"
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("fmt", ["letters", "cloze"])
def test_acc_and_acc_norm_equal_lm_evaluation_harness_on_the_same_questions(fmt, backend, tiny_llama, tmp_path,
                                                                             monkeypatch):
    """Independent reference: lm-evaluation-harness 0.4 scores the same local set with a plain copy of the
    base model (its MMLU template for letters, ARC's cloze template); raw prompts on our side."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    rows = [dict(r, choices=r["choices"] if fmt == "cloze" else r["choices"][:4]) for r in ROWS]
    source = write(tmp_path / "q.jsonl", rows)
    if fmt == "letters":
        t = mmlu_template()
        refs = lm_eval_samples(AutoModelForCausalLM.from_pretrained(tiny_llama),
                               AutoTokenizer.from_pretrained(tiny_llama), source, t["doc_to_text"], t["doc_to_choice"],
                               "The following are multiple choice questions (with answers) about arithmetic.\n\n")
    else:
        refs = lm_eval_samples(AutoModelForCausalLM.from_pretrained(tiny_llama),
                               AutoTokenizer.from_pretrained(tiny_llama), source, "Question: {{question}}\nAnswer:",
                               "{{choices}}")
    settings = McqSettings(format=fmt, prompt="raw")
    qitems = items(load_questions(source, "q"), settings)
    scores, _ = score_questions(backend, qitems, settings, model=model_id("lm-eval-" + fmt),
                                cache=Cache(tmp_path / "c", enabled=False), batch_size=8, max_tokens=256,
                                max_length=1024)
    assert len(refs) == len(qitems)
    for it, s, ref in zip(qitems, scores, refs):
        assert ref["arguments"][0][0] == it.prompt  # the same prompt text, written by each side
        np.testing.assert_allclose(s[False], [r[0][0] for r in ref["resps"]], rtol=1e-4, atol=1e-4)
        acc, acc_norm = predictions(s[False], it.norm_lengths)
        assert (float(acc == it.question.answer), float(acc_norm == it.question.answer)) == (ref["acc"],
                                                                                            ref["acc_norm"])
    if fmt == "cloze":  # the normalisation is exercised: some question's acc and acc_norm pick differently
        assert any(predictions(s[False], it.norm_lengths)[0] != predictions(s[False], it.norm_lengths)[1]
                   for it, s in zip(qitems, scores))


def test_prompts_are_lm_evaluation_harness_templates_verbatim():
    import jinja2
    from lm_eval.tasks.pubmedqa.preprocess_pubmedqa import doc_to_text as pubmedqa_text

    t = mmlu_template()
    row = {"question": "  Which vitamin? ", "choices": ["A1", "B12", "C", "D"], "answer": 1}
    q = Question(row["question"], tuple(row["choices"]), 1, "clinical_knowledge")
    lm_eval_text = jinja2.Template(t["doc_to_text"]).render(**row)
    assert prompt_text(q, "letters", ()) == ("The following are multiple choice questions (with answers) about "
                                             "clinical knowledge.\n\n" + lm_eval_text)
    q = Question("Does it work?", ("yes", "no", "maybe"), 0, None, "First.\nSecond.")
    assert prompt_text(q, "cloze", ()) == pubmedqa_text({"CONTEXTS": ["First.", "Second."],
                                                          "QUESTION": "Does it work?"})


# --------------------------------------------------------------------------- scoring


@pytest.mark.parametrize("prompt", ["chat", "raw"])
@pytest.mark.parametrize("fmt", ["letters", "cloze"])
def test_one_prompt_pass_per_question_equals_each_choice_scored_alone(fmt, prompt, backend, tmp_path):
    settings = McqSettings(format=fmt, prompt=prompt)
    qitems = items(load_questions(write(tmp_path / "q.jsonl", ROWS), "q"), settings)
    scores, computed = score_questions(backend, qitems, settings, model=model_id(f"group-{fmt}-{prompt}"),
                                       cache=Cache(tmp_path / "c", enabled=False), batch_size=8, max_tokens=96,
                                       max_length=1024)
    assert computed == 2 * len(qitems)
    for it, s in zip(qitems, scores):
        conts = [c.lstrip(" ") for c in it.continuations] if prompt == "chat" else list(it.continuations)
        ctx = (("user", it.prompt),) if prompt == "chat" else it.prompt
        rows = backend.text_rows([ctx] * len(conts), conts, 1024)
        for adapter in (True, False):
            np.testing.assert_allclose(s[adapter], backend.row_logprobs(rows, adapter=adapter), rtol=1e-5)
        assert s[True] != s[False]  # the adapter is toggled, not ignored


def test_chat_prompts_put_the_question_in_the_user_turn_and_the_choice_in_the_reply(backend):
    (ctx, cont), = backend.text_rows([(("user", "Q?\nAnswer:"),)], ["B"], None)
    text = backend.tokenizer.decode(ctx + cont)
    assert text.endswith("<|im_start|>user\nQ?\nAnswer:<|im_end|>\n<|im_start|>assistant\nB")
    assert backend.tokenizer.decode(cont) == "B"


def test_a_context_over_max_length_loses_its_start_and_keeps_the_choice(backend):
    (ctx, cont), = backend.text_rows(["x" * 50 + " end"], [" yes"], 20)
    assert len(ctx) + len(cont) == 20 and backend.tokenizer.decode(ctx + cont).endswith(" end yes")


def test_a_warm_run_scores_nothing_and_a_new_adapter_reuses_the_base_side(backend, tmp_path):
    source = write(tmp_path / "q.jsonl", ROWS)
    cache = Cache(tmp_path / "c")
    qset = load_questions(source, "q")
    first, n1 = measure(backend, qset, McqSettings(), cfg(), model=model_id("warm"), cache=cache)
    again, n2 = measure(backend, qset, McqSettings(), cfg(), model=model_id("warm"), cache=cache)
    other, n3 = measure(backend, qset, McqSettings(), cfg(), model=model_id("warm", "another adapter"), cache=cache)
    assert (n1, n2, n3) == (2 * len(ROWS), 0, len(ROWS))
    assert again == first and other.base == first.base
    shots, n4 = measure(backend, qset, McqSettings(format="cloze"), cfg(), model=model_id("warm"), cache=cache)
    assert n4 == 2 * len(ROWS)  # another format is another prompt: nothing reused


# --------------------------------------------------------------------------- the claim on real scores


def questions_the_base_knows(backend: HFBackend, tmp_path: Path) -> str:
    """A set whose right answers are the base model's own choices: the base scores 1.0 by construction,
    so a model that moves away from it loses questions it knew."""
    source = write(tmp_path / "all.jsonl", [dict(r, question=f"{r['question']} ({k})") for k in range(3) for r in ROWS])
    qset = load_questions(source, "all")
    qitems = items(qset, McqSettings())
    scores, _ = score_questions(backend, qitems, McqSettings(), model=model_id("knows"),
                                cache=Cache(tmp_path / "k", enabled=False), batch_size=8, max_tokens=96,
                                max_length=1024)
    rows = [{"question": it.question.question, "choices": list(it.question.choices),
             "answer": predictions(s[False], it.norm_lengths)[0]} for it, s in zip(qitems, scores)]
    return write(tmp_path / "known.jsonl", rows)


def test_a_destroyed_adapter_fails_no_forgetting_and_a_zero_adapter_passes_with_exactly_zero(
        tiny_llama, zero_adapter, tmp_path):
    zero = load(zero_adapter)
    source = questions_the_base_knows(zero, tmp_path)
    qset = load_questions(source, "known")
    gate = GateConfig()
    same, _ = measure(zero, qset, McqSettings(), cfg(), model=model_id("zero"), cache=Cache(tmp_path / "z"))
    assert same.base.value == 1.0 and same.difference[0] == 0.0 and (same.lost, same.gained) == (0, 0)
    held = forgetting_claims(same, gate)[1]
    # exactly no drop never fails; it passes once the set is large enough for the bound to clear the margin
    assert held.id == "no-forgetting[known]" and held.value == 0.0 and held.outcome == (
        "pass" if same.n > 133 else "inconclusive"), held.message
    wrecked = load(make_adapter(tiny_llama, tmp_path / "wrecked", scale=40.0, target_modules=("q_proj", "v_proj",
                                                                                               "o_proj", "up_proj")))
    lost, _ = measure(wrecked, qset, McqSettings(), cfg(), model=model_id("wrecked"), cache=Cache(tmp_path / "w"))
    claim = forgetting_claims(lost, gate)[1]
    assert lost.base.value == 1.0 and lost.tuned.value < 0.7
    assert claim.outcome == "fail" and "the adapter forgot" in claim.message, claim.message


# --------------------------------------------------------------------------- the claim's rule


def summary(lost: int, gained: int, n: int, base_right: int | None = None):
    """A summary with these paired counts (the rest of the questions answered alike)."""
    from dpo_eval_core.forgetting import summarize
    from dpo_eval_core.mcq import McqItem, QuestionSet

    base_right = lost + 2 if base_right is None else base_right
    both = base_right - lost
    qs = [Question(f"q{i}", ("a", "b"), 0) for i in range(n)]
    # per question (tuned right, base right): lost, gained, both right, then both wrong
    kinds = [(False, True)] * lost + [(True, False)] * gained + [(True, True)] * both
    kinds += [(False, False)] * (n - len(kinds))
    scores = [{a: [0.0, -1.0] if right else [-1.0, 0.0] for a, right in ((True, t), (False, b))} for t, b in kinds]
    qset = QuestionSet("s", "s.jsonl", "question/choices/answer", tuple(qs), (), n, {})
    qitems = [McqItem(q, q.question, (" A", " B"), (1, 1)) for q in qs]
    return summarize(qset, qitems, scores, McqSettings().resolved(qset.layout), 0.95)


summary_with = summary


@pytest.mark.parametrize("lost, gained, n, outcome", [
    pytest.param(40, 5, 500, "fail", id="a-real-drop-of-7-points"),
    pytest.param(3, 0, 20, "inconclusive", id="15-points-on-20-questions-is-not-shown-either-way"),
    pytest.param(120, 100, 5000, "pass", id="a-drop-shown-below-max-forgetting"),
    pytest.param(0, 30, 300, "pass", id="tuned-better"),
    pytest.param(0, 0, 100, "inconclusive", id="no-change-on-100-questions-cannot-show-a-2-point-bound"),
])
def test_no_forgetting_is_non_inferiority_with_the_max_forgetting_margin(lost, gained, n, outcome):
    s = summary(lost, gained, n)
    assert (s.lost, s.gained, s.n) == (lost, gained, n)
    assert s.difference[0] == pytest.approx((gained - lost) / n)
    claim = forgetting_claims(s, GateConfig())[1]
    assert claim.outcome == outcome, claim.message
    assert f"{lost} questions lost, {gained} gained" in claim.message and "(Tango, paired)" in claim.message


def test_an_inconclusive_set_says_how_many_questions_would_decide_it():
    claim = forgetting_claims(summary(3, 0, 20), GateConfig())[1]
    assert claim.inconclusive and claim.n_needed is not None and claim.n_needed > 20
    assert f"about {claim.n_needed} questions would decide it" in claim.message
    bigger = forgetting_claims(summary(3 * claim.n_needed // 20 + 1, 0, claim.n_needed + 20), GateConfig())[1]
    assert bigger.outcome == "fail"  # at that size the same 15% drop is shown to exceed the margin


def test_accuracy_claim_reports_both_models_and_says_when_a_set_sits_at_chance():
    s = summary(0, 0, 100, base_right=50)  # two choices, half right: chance
    acc, held = forgetting_claims(s, GateConfig())
    assert not acc.passed and "chance 0.500" in acc.message and acc.ci == (s.tuned.ci_low, s.tuned.ci_high)
    assert "answer at chance level" in held.message
    known = forgetting_claims(summary(0, 0, 100, base_right=90), GateConfig())[0]
    assert known.passed and known.value == 0.9


def test_max_forgetting_is_a_gate_setting():
    s = summary(40, 5, 500)
    assert not forgetting_claims(s, GateConfig())[1].passed
    assert forgetting_claims(s, GateConfig(), max_forgetting=0.1)[1].passed


# --------------------------------------------------------------------------- statistics


@given(st.integers(0, 500), st.integers(1, 500))
def test_the_exact_interval_holds_the_estimate_inside_zero_one(k, n):
    k = min(k, n)
    lo, hi = clopper_pearson(k, n, 0.95)
    assert 0.0 <= lo <= k / n <= hi <= 1.0
    wide = clopper_pearson(k, n, 0.99)
    assert wide[0] <= lo + 1e-12 and hi <= wide[1] + 1e-12


