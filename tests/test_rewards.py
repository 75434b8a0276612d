"""Implicit DPO rewards equal TRL's own numbers; scoring is batch-invariant in fp32."""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dpo_eval_core.backend import HFBackend
from dpo_eval_core.cache import Cache
from dpo_eval_core.chat import accepts_system
from dpo_eval_core.config import EvalConfig
from dpo_eval_core.data import PreferencePair
from dpo_eval_core.demo.train import as_trl_rows
from dpo_eval_core.families.rewards import Settings as RewardSettings
from dpo_eval_core.identity import ModelIdentity
from dpo_eval_core.models import attach_adapter, load_base, load_tokenizer, resolve
from dpo_eval_core.rewards import PairLogps, log_ratio, score_logps, summarize

TIE = RewardSettings().reward_tie_tolerance


def model_id(n: int) -> ModelIdentity:
    """A distinct model identity per test, so cache entries never cross tests."""
    return ModelIdentity(f"base-{n}", "adapter", "none", "float32", "cpu", "template")

PAIRS = [PreferencePair(((("system", "Be brief."),) if i % 3 == 0 else ()) + (("user", f"Question number {i}?"),),
                        f"Short answer {i}.", f"Well, um, a much longer and rambling answer number {i}, I think.",
                        "valid") for i in range(12)]


@pytest.fixture(scope="module")
def backend(tiny_adapter):
    spec = resolve(EvalConfig(adapter=tiny_adapter))
    tok = load_tokenizer(spec.base)
    model, _ = attach_adapter(load_base(spec.base, "none", "float32", "cpu"), spec)
    return HFBackend(model, tok, system_ok=accepts_system(tok), device="cpu")


def ours(backend, tmp_path, batch_size=4, beta=0.1, max_tokens=None):
    logps, _ = score_logps(backend, PAIRS, cache=Cache(tmp_path, enabled=False), model=model_id(1),
                           batch_size=batch_size, max_tokens=max_tokens)
    return logps, summarize(logps, beta, 0.95, 200, np.random.default_rng(0), tie_tolerance=TIE)


def test_rewards_equal_trl_dpo_trainer_evaluate(backend, tiny_llama, tiny_adapter, tmp_path):
    """TRL's DPOTrainer with the adapter merged into the policy and the plain base as reference."""
    from datasets import Dataset
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    policy = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), tiny_adapter).merge_and_unload()
    reference = AutoModelForCausalLM.from_pretrained(tiny_llama)
    args = DPOConfig(output_dir=str(tmp_path / "trl"), per_device_eval_batch_size=len(PAIRS), report_to=[],
                     use_cpu=True, beta=0.1, max_length=None, bf16=False)  # TRL defaults to bf16 autocast
    trainer = DPOTrainer(model=policy, ref_model=reference, args=args, processing_class=backend.tokenizer,
                         train_dataset=Dataset.from_list(as_trl_rows(PAIRS)),
                         eval_dataset=Dataset.from_list(as_trl_rows(PAIRS)))
    trl = trainer.evaluate()
    _, s = ours(backend, tmp_path)
    assert 0 < s.accuracy.value < 1 or s.margin.value != 0  # a non-degenerate case
    assert s.accuracy.value == pytest.approx(trl["eval_rewards/accuracies"], abs=1e-4)
    assert s.margin.value == pytest.approx(trl["eval_rewards/margins"], abs=1e-4)
    assert s.chosen.value == pytest.approx(trl["eval_rewards/chosen"], abs=1e-4)
    assert s.rejected.value == pytest.approx(trl["eval_rewards/rejected"], abs=1e-4)


@pytest.mark.parametrize("batch_size,max_tokens", [(6, None), (64, 80), (64, 1)],
                         ids=["6-rows", "80-token-budget", "budget-below-every-row"])
def test_batched_and_one_by_one_logprobs_agree_in_fp32(backend, tmp_path, batch_size, max_tokens):
    batched, _ = ours(backend, tmp_path, batch_size=batch_size, max_tokens=max_tokens)
    single, _ = ours(backend, tmp_path, batch_size=1)
    for a, b in zip(batched, single):
        for f in ("policy_chosen", "policy_rejected", "reference_chosen", "reference_rejected"):
            assert getattr(a, f) == pytest.approx(getattr(b, f), abs=1e-5)


GROUPS = [  # (messages, completions): pairs, a question with three choices, prompts that share only a prefix
    *((PAIRS[i].messages, [PAIRS[i].chosen, PAIRS[i].rejected]) for i in range(0, 12, 2)),
    ((("user", "Pick one: A, B or C?"),), ["A", "B, because it is the best of the three", "C"]),
]


@pytest.mark.parametrize("batch_size,max_tokens,max_length", [(64, None, None), (1, None, None), (5, 90, None),
                                                              (64, 1, None), (64, None, "cut")],
                         ids=["one-batch", "one-row-per-batch", "90-token-budget", "budget-below-every-row",
                              "max-length-cuts-some-rows"])
@pytest.mark.parametrize("head", ["plain", "full-logits"])
def test_one_prompt_pass_per_group_equals_scoring_each_sequence_alone(backend, batch_size, max_tokens, max_length,
                                                                      head, monkeypatch):
    """Chosen and rejected (or a question's choices) continue one prompt KV cache; each value equals the
    full sequence scored alone within 1e-5 relative (fp32), NaN where max_length leaves no completion,
    and the shared prompt tokens go through the model once per group."""
    if head == "full-logits":  # the path of models whose LM head is more than a linear map
        monkeypatch.setattr(backend.model.get_base_model().config, "logit_scale", 1.0, raising=False)
    if max_length == "cut":  # the shortest prompts keep 4 completion tokens, the longest keep none
        max_length = min(len(backend.prompt_ids(m)) for m, _ in GROUPS) + 4
    groups = [backend.scored_rows([m] * len(cs), cs, max_length) for m, cs in GROUPS]
    groups.append([groups[0][0], groups[1][1]])  # two prompts: only the template's opening is shared
    fed = []
    decoder = type(backend.model.get_base_model().get_decoder())
    forward = decoder.forward

    @functools.wraps(forward)
    def counting(self, **kw):  # real tokens fed: the mask's columns of this call's input
        fed.append(int(kw["attention_mask"][:, -kw["input_ids"].shape[1]:].sum()))
        return forward(self, **kw)

    monkeypatch.setattr(decoder, "forward", counting)
    got = dict(backend.group_logprobs(groups, adapter=True, batch_size=batch_size, max_tokens=max_tokens,
                                      max_length=max_length))
    fed_grouped = sum(fed)
    assert sorted(got) == list(range(len(groups)))
    n_scored = 0
    for i, group in enumerate(groups):
        alone = [backend.row_logprobs([row], adapter=True, max_length=max_length)[0] for row in group]
        assert len(got[i]) == len(group)
        for a, b in zip(got[i], alone):
            assert (np.isnan(a) and np.isnan(b)) or abs(a - b) <= 1e-5 * max(1.0, abs(b)), (i, a, b)
            n_scored += not np.isnan(b)
    n_rows = sum(map(len, groups))
    assert n_scored == n_rows if max_length is None else 0 < n_scored < n_rows
    if max_length is None and head == "plain":  # a group's shared prompt (less its last token) is fed once
        saved = sum((len(g) - 1) * max(0, len(os.path.commonprefix([p for p, _ in g])) - 1) for g in groups)
        assert saved > 0 and fed_grouped == sum(len(p) + len(c) for g in groups for p, c in g) - saved


def test_logprobs_equal_a_full_logits_computation(backend):
    from dpo_eval_core.chat import completion_ids

    p = PAIRS[0]
    prompt, completion = completion_ids(backend.tokenizer, p.messages, p.chosen, backend.system_ok)
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = backend.model(input_ids=ids).logits.log_softmax(-1)
    want = sum(logits[0, len(prompt) + t - 1, tok].item() for t, tok in enumerate(completion))
    (got,) = backend.logprobs([p.messages], [p.chosen], adapter=True)
    assert got == pytest.approx(want, abs=1e-4)


def test_zero_adapter_gives_zero_rewards_and_says_why(zero_adapter, tmp_path):
    spec = resolve(EvalConfig(adapter=zero_adapter))
    tok = load_tokenizer(spec.base)
    model, _ = attach_adapter(load_base(spec.base, "none", "float32", "cpu"), spec)
    _, s = ours(HFBackend(model, tok, system_ok=True, device="cpu"), tmp_path)
    assert s.accuracy.value == 0.0 and s.margin.value == 0.0 and s.all_zero


def test_max_length_keeps_the_start_as_trl_does_and_drops_prompt_only_rows(backend):
    from dpo_eval_core.chat import completion_ids

    p = PAIRS[1]
    prompt, completion = completion_ids(backend.tokenizer, p.messages, p.rejected, backend.system_ok)
    cut = len(prompt) + 5
    ids = torch.tensor([(prompt + completion)[:cut]])
    with torch.no_grad():
        logits = backend.model(input_ids=ids).logits.log_softmax(-1)
    want = sum(logits[0, len(prompt) + t - 1, tok].item() for t, tok in enumerate(completion[:5]))
    got, too_long = backend.logprobs([p.messages, p.messages], [p.rejected, p.rejected], adapter=True,
                                     max_length=cut)[0], backend.logprobs([p.messages], [p.rejected], adapter=True,
                                                                          max_length=len(prompt))[0]
    assert got == pytest.approx(want, abs=1e-4)
    assert np.isnan(too_long)


def test_unscorable_pairs_are_left_out_and_counted(backend, tmp_path):
    logps, _ = score_logps(backend, PAIRS, cache=Cache(tmp_path), model=model_id(2), batch_size=4,
                           max_tokens=None, max_length=12)  # shorter than every templated prompt
    s = summarize(logps, 0.1, 0.95, 200, np.random.default_rng(0), tie_tolerance=TIE)
    assert (s.n, s.n_unscorable) == (0, len(PAIRS))
    cached, computed = score_logps(backend, PAIRS, cache=Cache(tmp_path), model=model_id(2), batch_size=4,
                                   max_tokens=None, max_length=12)
    assert computed == 0 and all(np.isnan(x.policy_chosen) for x in cached)


def test_float_noise_between_batch_shapes_is_a_tie_not_a_preference():
    # reference reused from another batch shape: equal up to ~1e-7 relative, as fp32 sums are
    noisy = [PairLogps(-300.0, -420.0, -300.0 + 3e-5, -420.0 - 4e-5, 30, 40),
             PairLogps(-50.0, -80.0, -50.0, -80.0, 5, 8)]
    s = summarize(noisy, 0.1, 0.95, 200, np.random.default_rng(0), tie_tolerance=TIE)
    assert (s.accuracy.value, s.accuracy_per_token.value, s.margin.value, s.all_zero) == (0.0, 0.0, 0.0, True)
    real = summarize([PairLogps(-290.0, -430.0, -300.0, -420.0, 30, 40)], 0.1, 0.95, 200, np.random.default_rng(0), tie_tolerance=TIE)
    assert real.accuracy.value == 1.0 and real.margin.value == pytest.approx(2.0)


def test_completion_lengths_count_the_tokens_logprobs_sums(backend, tmp_path):
    from dpo_eval_core.chat import completion_ids

    p = PAIRS[2]
    prompt, completion = completion_ids(backend.tokenizer, p.messages, p.rejected, backend.system_ok)
    assert backend.completion_lengths([p.messages], [p.rejected]) == [len(completion)]
    assert backend.completion_lengths([p.messages] * 2, [p.rejected] * 2, max_length=len(prompt) + 5) == [5, 5]
    assert backend.completion_lengths([p.messages], [p.rejected], max_length=len(prompt)) == [0]
    logps, _ = score_logps(backend, [p], cache=Cache(tmp_path, enabled=False), model=model_id(3), batch_size=1,
                           max_tokens=None, max_length=len(prompt) + 5)
    assert (logps[0].n_rejected, logps[0].n_chosen) == (5, min(5, backend.completion_lengths([p.messages],
                                                                                                [p.chosen])[0]))


def test_a_warm_cache_gives_the_token_counts_without_tokenizing(backend, tmp_path, monkeypatch):
    cold, _ = score_logps(backend, PAIRS, cache=Cache(tmp_path), model=model_id(4), batch_size=4,
                          max_tokens=None)
    for name in ("completion_lengths", "scored_rows"):
        monkeypatch.setattr(backend, name, lambda *a, **k: pytest.fail("tokenized on a warm run"))
    warm, computed = score_logps(backend, PAIRS, cache=Cache(tmp_path), model=model_id(4), batch_size=4,
                                 max_tokens=None)
    assert computed == 0 and warm == cold


token_counts = st.integers(1, 400)


@given(st.lists(st.tuples(token_counts, token_counts), min_size=1, max_size=40),
       st.integers(-64, 64).filter(bool).map(lambda k: k / 64))
def test_a_shift_of_every_token_moves_summed_accuracy_with_length_not_per_token_accuracy(lengths, shift):
    """An adapter that adds the same log-ratio to every token (what a random, degrading one does on
    average) looks like a preference for the longer or shorter answer to the summed accuracy; the
    per-token accuracy sees ties only. (shift is a multiple of 1/64: exact in binary.)"""
    logps = [PairLogps(-100.0 + shift * c, -200.0 + shift * r, -100.0, -200.0, c, r) for c, r in lengths]
    s = summarize(logps, 0.1, 0.95, 200, np.random.default_rng(0), tie_tolerance=TIE)
    prefers_chosen = [(c > r) if shift > 0 else (c < r) for c, r in lengths]
    assert s.accuracy.value == pytest.approx(np.mean(prefers_chosen))
    assert s.accuracy_per_token.value == 0.0


@given(st.lists(st.tuples(token_counts, token_counts, st.floats(-2, 2), st.floats(-2, 2)), min_size=1, max_size=40))
def test_per_token_accuracy_is_the_share_of_pairs_whose_mean_token_log_ratio_is_higher(rows):
    logps = [PairLogps(-50.0 + a * c, -60.0 + b * r, -50.0, -60.0, c, r) for c, r, a, b in rows]
    s = summarize(logps, 0.1, 0.95, 200, np.random.default_rng(0), tie_tolerance=TIE)
    want = np.mean([log_ratio(x.policy_chosen, x.reference_chosen, TIE) / x.n_chosen
                    > log_ratio(x.policy_rejected, x.reference_rejected, TIE) / x.n_rejected for x in logps])
    assert s.accuracy_per_token.value == pytest.approx(want)
    assert s.accuracy_per_token.ci_low <= s.accuracy_per_token.value <= s.accuracy_per_token.ci_high
