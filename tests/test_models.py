"""Loading, chat formatting and generation on tiny random models (Llama and Mistral shapes)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny import make_adapter, make_base

from dpo_eval_core.backend import GenerationSettings, HFBackend, decode, left_pad
from dpo_eval_core.chat import (
    accepts_system,
    fold_system,
    leading_bos_count,
    prompt_ids,
    require_chat_template,
)
from dpo_eval_core.config import EvalConfig
from dpo_eval_core.errors import CheckpointError
from dpo_eval_core.models import attach_adapter, load_base, load_gate_tokenizer, load_tokenizer, resolve, tokenizer_source

MESSAGES = (("system", "Be brief."), ("user", "What is DNA?"))


def load(adapter: Path, base: Path | None = None):
    spec = resolve(EvalConfig(adapter=adapter, base_model=str(base) if base else None))
    tok = load_tokenizer(spec.base)
    model, report = attach_adapter(load_base(spec.base, "none", "float32", "cpu"), spec)
    return HFBackend(model, tok, system_ok=accepts_system(tok), device="cpu"), report


def test_adapter_loads_with_every_target_module_matched(tiny_adapter):
    _, report = load(tiny_adapter)
    assert report.ok and report.target_modules == ("q_proj", "v_proj")
    assert report.matched_modules == 4  # 2 layers x (q_proj, v_proj)
    assert report.nonzero_b == report.n_b == 4


def test_zero_adapter_has_no_nonzero_b_and_leaves_logits_unchanged(zero_adapter):
    backend, report = load(zero_adapter)
    assert report.nonzero_b == 0
    ids = torch.tensor([backend.prompt_ids(MESSAGES)])
    with torch.no_grad():
        tuned = backend.model(input_ids=ids).logits
        with backend.model.disable_adapter():
            base = backend.model(input_ids=ids).logits
    assert torch.equal(tuned, base)


def test_adapter_for_another_base_fails_naming_both(tiny_adapter, tmp_path):
    other = make_base(tmp_path / "wide", "llama", hidden=96)
    with pytest.raises(CheckpointError) as err:
        load(tiny_adapter, base=other)
    assert str(tiny_adapter.name) in str(err.value) or "made for" in str(err.value)
    assert str(other) in str(err.value) and "made for" in str(err.value)


def test_adapter_targeting_modules_the_base_lacks_fails(tiny_llama, tmp_path):
    adapter = make_adapter(tiny_llama, tmp_path / "a")
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["target_modules"] = ["no_such_proj"]
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="does not fit the base"):
        load(adapter)


def test_pickle_only_adapter_is_refused_with_the_reason(tiny_adapter, tmp_path):
    adapter = tmp_path / "pickled"
    shutil.copytree(tiny_adapter, adapter)
    (adapter / "adapter_model.safetensors").rename(adapter / "adapter_model.bin")
    with pytest.raises(CheckpointError, match="only pickle weights"):
        load(adapter)


def test_mistral_tokenizer_gets_bos_1_pad_left_and_folds_the_system_turn(tiny_mistral):
    tok = load_tokenizer(str(tiny_mistral))
    assert tok.bos_token_id == 1 and tok.pad_token_id == tok.eos_token_id == 2 and tok.padding_side == "left"
    assert not accepts_system(tok)
    ids = prompt_ids(tok, MESSAGES, system_ok=False)
    assert leading_bos_count(ids, tok.bos_token_id) == 1
    assert "Be brief.\n\nWhat is DNA?" in tok.decode(ids)


def test_double_bos_is_caught_when_text_is_retokenized_with_special_tokens(tiny_mistral):
    tok = load_tokenizer(str(tiny_mistral))
    # the classic mistake: render the template (which writes <s>) as text, then tokenize with special tokens
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    wrong = tok(text)["input_ids"]
    assert leading_bos_count(wrong, tok.bos_token_id) == 2
    assert leading_bos_count(prompt_ids(tok, fold_system(MESSAGES), True), tok.bos_token_id) == 1


def test_tokenizer_without_chat_template_is_refused(tiny_llama):
    tok = load_tokenizer(str(tiny_llama))
    tok.chat_template = None
    with pytest.raises(CheckpointError, match="no chat template"):
        require_chat_template(tok, "tiny")


@pytest.mark.parametrize("kind", ["llama", "mistral"])
def test_batched_generation_equals_one_by_one_in_fp32(kind, tmp_path):
    base = make_base(tmp_path / kind, kind)
    backend, _ = load(make_adapter(base, tmp_path / "ad"))
    prompts = [(("user", "Hi"),), (("user", "Tell me a much longer story about a fox, please."),),
               (("system", "S"), ("user", "Mid-length question here?"))]
    settings = GenerationSettings(max_new_tokens=8, batch_size=3)
    batched = backend.generate(prompts, adapter=True, settings=settings)
    single = [backend.generate([p], adapter=True, settings=settings)[0] for p in prompts]
    assert [g.text for g in batched] == [g.text for g in single]
    assert all(g.n_tokens <= 8 for g in batched)


@pytest.mark.parametrize("kind", ["llama", "mistral"])
def test_decoding_that_drops_finished_rows_matches_transformers_generate(kind, tmp_path):
    """Rows stop at different steps (an EOS taken from one row's answer); every row must equal
    transformers' generate, which keeps finished rows in the batch."""
    backend, _ = load(make_adapter(make_base(tmp_path / kind, kind), tmp_path / "ad"))
    prompts = [(("user", f"Question number {i} about {'foxes ' * i}?"),) for i in range(6)]
    pad = backend.tokenizer.pad_token_id
    input_ids, mask = left_pad([backend.prompt_ids(m) for m in prompts], pad, "cpu")
    width = input_ids.shape[1]

    def reference(eos: list[int]) -> list[list[int]]:
        out = backend.model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=12, do_sample=False,
                                     pad_token_id=pad, eos_token_id=eos, temperature=None, top_p=None, top_k=None)
        rows = out[:, width:].tolist()
        return [row[:next((i for i, t in enumerate(row) if t in eos), len(row))] for row in rows]

    first = reference([backend.tokenizer.eos_token_id])
    backend.model.generation_config.eos_token_id = [first[0][3]]  # row 0 stops at step 4, others later or never
    expected = reference(backend._eos_ids())
    got = backend.generate(prompts, adapter=True, settings=GenerationSettings(max_new_tokens=12, batch_size=6))
    assert len({len(r) for r in expected}) > 1, "rows must finish at different steps for this test to bite"
    assert [g.text for g in got] == [backend.tokenizer.decode(r, skip_special_tokens=True).strip() for r in expected]
    assert [g.n_tokens for g in got] == [len(r) for r in expected]


@pytest.mark.parametrize("kind", ["llama", "mistral"])
@pytest.mark.parametrize("batch_size,batch_tokens", [(4, None), (5, 30), (64, None)],
                         ids=["4-rows-refilled", "5-rows-prefill-within-30-tokens", "all-rows-at-once"])
def test_refilled_decoding_gives_every_prompt_its_one_by_one_answer(kind, batch_size, batch_tokens, tmp_path):
    """Rows finish at different steps (an EOS taken from the answers) and waiting prompts take their
    places mid-decode, their KV cache merged into the running batch: every answer equals the prompt's
    answer decoded alone, and until the queue drains every decode step runs at full width."""
    # seed 1: a random tiny model whose answers vary enough for an EOS to end them at many steps
    backend, _ = load(make_adapter(make_base(tmp_path / kind, kind, seed=1), tmp_path / "ad"))
    prompts = [(("user", f"Question {i} about {'foxes ' * ((7 * i) % 11)}?"),) for i in range(19)]
    settings = GenerationSettings(max_new_tokens=12, batch_size=batch_size, batch_tokens=batch_tokens)
    with torch.inference_mode():  # answers with no EOS at all, then the token that ends them at most distinct steps
        rows = [r for _, r in decode(backend.model, [backend.prompt_ids(p) for p in prompts], pad=0, eos=[-1],
                                     settings=settings, device="cpu")]
    backend.model.generation_config.eos_token_id = [max({t for r in rows for t in r},
                                                         key=lambda t: len({r.index(t) for r in rows if t in r}))]
    single = [backend.generate([p], adapter=True, settings=settings)[0] for p in prompts]
    assert len({g.n_tokens for g in single}) >= 4, "rows must finish at different steps for this test to bite"
    widths: list[tuple[int, int]] = []  # (rows, tokens) of each forward of the decoder body
    body = backend.model.get_base_model().get_decoder()
    forward = body.forward
    body.forward = lambda **kw: (widths.append(tuple(kw["input_ids"].shape)), forward(**kw))[1]
    batched = backend.generate(prompts, adapter=True, settings=settings)
    assert batched == single
    prefills = [i for i, (_, n) in enumerate(widths) if n > 1]
    assert len(prefills) > (1 if batch_size < len(prompts) else 0)  # the queue refilled the batch mid-decode
    if batch_tokens is not None:
        assert all(rows * n <= batch_tokens or rows == 1 for rows, n in widths if n > 1)
    steps_while_queued = [rows for i, (rows, n) in enumerate(widths) if n == 1 and i < prefills[-1]]
    refill_at = max(1, batch_size // 8)
    assert all(rows > batch_size - refill_at for rows in steps_while_queued)


def test_a_sliding_window_cache_decodes_batch_by_batch_with_the_same_answers(tmp_path):
    """A sliding-window layer drops columns past its window, so caches cannot be merged: the queue
    refills only when the batch has drained, one prefill per batch, and answers are unchanged."""
    backend, _ = load(make_adapter(make_base(tmp_path / "m", "mistral", seed=1), tmp_path / "ad"))
    backend.model.get_base_model().config.sliding_window = 8  # shorter than every prompt
    prompts = [(("user", f"Question {i} about {'foxes ' * ((7 * i) % 11)}?"),) for i in range(10)]
    settings = GenerationSettings(max_new_tokens=6, batch_size=4, batch_tokens=30)
    single = [backend.generate([p], adapter=True, settings=settings)[0] for p in prompts]
    calls: list[int] = []
    body = backend.model.get_base_model().get_decoder()
    forward = body.forward
    body.forward = lambda **kw: (calls.append(kw["input_ids"].shape[1]), forward(**kw))[1]
    assert backend.generate(prompts, adapter=True, settings=settings) == single
    assert sum(n > 1 for n in calls) == 3  # 4 + 4 + 2 prompts, each batch prefilled once, after the last drained


def test_base_answers_come_from_the_same_weights_with_adapter_disabled(tiny_adapter):
    backend, _ = load(tiny_adapter)
    settings = GenerationSettings(max_new_tokens=12)
    tuned = backend.generate([MESSAGES], adapter=True, settings=settings)
    base = backend.generate([MESSAGES], adapter=False, settings=settings)
    assert tuned[0].text != base[0].text  # random non-zero LoRA moves a random tiny model
    n_params = sum(p.numel() for p in backend.model.parameters())
    assert n_params < 400_000  # one copy: base + LoRA, no second model


def test_sampling_is_seeded(tiny_adapter):
    backend, _ = load(tiny_adapter)
    a = GenerationSettings(max_new_tokens=10, do_sample=True, seed=1)
    runs = [backend.generate([MESSAGES], adapter=True, settings=a)[0].text for _ in range(2)]
    other = backend.generate([MESSAGES], adapter=True, settings=GenerationSettings(max_new_tokens=10, do_sample=True,
                                                                                   seed=2))[0].text
    assert runs[0] == runs[1] and other != runs[0]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 300), max_size=60), st.integers(1, 16), st.one_of(st.none(), st.integers(1, 2000)))
def test_batches_take_every_row_once_within_the_row_cap_and_the_token_budget(lengths, size, max_tokens):
    from dpo_eval_core.backend import batches

    out = list(batches(len(lengths), size, lengths, max_tokens))
    assert sorted(i for b in out for i in b) == list(range(len(lengths)))
    for b in out:
        assert 0 < len(b) <= size  # never empty, never over the row cap
        if max_tokens is not None and len(b) > 1:  # a single row longer than the budget is its own batch
            assert len(b) * max(lengths[i] for i in b) <= max_tokens
    if max_tokens is None:  # rows alone cap the batches: only the last may be short
        assert all(len(b) == size for b in out[:-1])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=40))
def test_survivors_keep_every_live_row_once_and_move_only_rows_from_above(finished):
    from dpo_eval_core.backend import survivors

    order = survivors(finished)
    live = [i for i, f in enumerate(finished) if not f]
    assert sorted(order) == live
    for slot, row in enumerate(order):  # a live row already below the new size stays where it is
        assert row == slot if not finished[slot] else row >= len(order)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.integers(1, 5), st.lists(st.booleans(), min_size=1, max_size=1)), min_size=1,
                max_size=12), st.integers(1, 4))
def test_growing_cache_layer_holds_what_transformers_dynamic_layer_holds(ops, reserve):
    """Appends of 1-5 columns and row removals in any order: the in-place layer's keys and values equal
    the concatenating DynamicLayer's; appends within the reserve write into the same buffer."""
    from transformers.cache_utils import DynamicLayer

    from dpo_eval_core.backend import growing_layer_class, survivors

    gen = torch.Generator().manual_seed(len(ops) * 7 + reserve)
    ours, theirs, rows = growing_layer_class()(reserve), DynamicLayer(), 6
    for op in ops:
        if isinstance(op, int):
            k, v = torch.randn(rows, 2, op, 3, generator=gen), torch.randn(rows, 2, op, 3, generator=gen)
            before = None if ours.key_buffer is None else ours.key_buffer.data_ptr()
            free = 0 if ours.key_buffer is None else ours.key_buffer.shape[-2] - ours.filled
            ours.update(k, v)
            theirs.update(k, v)
            if op <= free:
                assert ours.key_buffer.data_ptr() == before  # written in place, nothing copied
        elif rows > 1 and ours.is_initialized:
            finished = [op[0] and i % 2 == 0 for i in range(rows)]  # every other row, when op says so
            keep = torch.tensor(survivors(finished))
            ours.batch_select_indices(keep)
            theirs.batch_select_indices(keep)
            rows = len(keep)
        if ours.is_initialized:
            assert torch.equal(ours.keys, theirs.keys) and torch.equal(ours.values, theirs.values)


# --------------------------------------------------------------------------- load errors name their cause


def _hub_error(cls_name: str, status: int):
    """The error huggingface_hub raises for a hub answer of this status, wrapped as transformers wraps it."""
    import httpx
    from huggingface_hub import errors as hub

    url = "https://huggingface.co/mistralai/Mistral-7B-Instruct-v0.2/resolve/main/config.json"
    response = httpx.Response(status, request=httpx.Request("GET", url), headers={"X-Error-Code": "GatedRepo"})
    cause = getattr(hub, cls_name)(f"{status} Client Error. Cannot access gated repo for url {url}.",
                                   response=response)
    try:
        raise cause
    except hub.HfHubHTTPError:
        try:
            raise OSError("You are trying to access a gated repo.\nMake sure to have access to it at "
                          "https://huggingface.co/mistralai/Mistral-7B-Instruct-v0.2.") from cause
        except OSError as e:
            return e


@pytest.mark.parametrize("status", [401, 403])
def test_a_gated_hub_repo_says_to_accept_the_licence_and_log_in(status, monkeypatch):
    import transformers

    def refuse(*args, **kwargs):
        raise _hub_error("GatedRepoError", status)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    for load in (lambda: load_tokenizer("mistralai/Mistral-7B-Instruct-v0.2"),
                 lambda: load_base("mistralai/Mistral-7B-Instruct-v0.2", "none", "float32", "cpu")):
        with pytest.raises(CheckpointError) as e:
            load()
        msg = str(e.value)
        assert "gated or private repository" in msg and "HF_TOKEN" in msg and "huggingface-cli login" in msg
        assert "remote code" not in msg


def test_a_missing_file_is_named_and_remote_code_is_only_blamed_when_it_was_the_reason(monkeypatch):
    import transformers

    def missing(*args, **kwargs):
        raise OSError("ckpt/base does not appear to have a file named config.json. Checkout "
                      "'https://huggingface.co/ckpt/base/tree/main' for available files.")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", missing)
    with pytest.raises(CheckpointError, match="a file is missing: config") as e:
        load_base("ckpt/base", "none", "float32", "cpu")
    assert "remote code" not in str(e.value) and "gated" not in str(e.value)


@pytest.mark.parametrize("quant,quant_type,double", [
    ("4bit", "nf4", False), ("4bit-dq", "nf4", True), ("4bit-fp4", "fp4", False), ("4bit-fp4-dq", "fp4", True)])
def test_the_base_loads_with_the_4bit_settings_the_adapter_was_trained_with(tiny_llama, quant, quant_type, double):
    """QLoRA's recipe double-quantizes NF4; the gate scores the adapter on that same base, not a look-alike."""
    model = load_base(str(tiny_llama), quant, "float32", "cpu")
    qc = model.config.quantization_config
    assert (qc.bnb_4bit_quant_type, qc.bnb_4bit_use_double_quant) == (quant_type, double)
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()


def test_a_tokenizer_saved_with_the_adapter_is_the_one_the_gate_uses(tiny_llama, tiny_adapter, tmp_path):
    """TRL saves the tokenizer beside the adapter; its chat template is the one the adapter was trained with."""
    adapter = tmp_path / "with-tokenizer"
    shutil.copytree(tiny_adapter, adapter)
    spec = resolve(EvalConfig(adapter=adapter))
    assert tokenizer_source(spec) == spec.base  # none saved: the base's
    tokenizer = load_tokenizer(str(tiny_llama))
    tokenizer.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    tokenizer.save_pretrained(adapter)
    gate_tokenizer = load_gate_tokenizer(spec)
    assert tokenizer_source(spec) == str(adapter) and gate_tokenizer.chat_template == tokenizer.chat_template

    tokenizer.add_tokens([f"<new{i}>" for i in range(400)])  # trained with added tokens the base cannot embed
    tokenizer.save_pretrained(adapter)
    with pytest.raises(CheckpointError, match="trained with added tokens"):
        load_gate_tokenizer(spec)
