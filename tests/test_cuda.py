"""The GPU path: one-prompt-pass scoring and refilled decoding on CUDA, in fp32, bf16 and 4-bit.

Skipped without CUDA (CI has none); run on a GPU machine with `pytest tests/test_cuda.py -m gpu`.
"""

from __future__ import annotations

import math

import pytest
import torch

from dpo_eval_core.backend import GenerationSettings, HFBackend
from dpo_eval_core.chat import accepts_system
from dpo_eval_core.config import EvalConfig
from dpo_eval_core.models import attach_adapter, load_base, load_tokenizer, resolve

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

PROMPTS = [((("system", "Be brief."),) if i % 3 == 0 else ()) + (("user", f"Question {i} {'about foxes ' * i}?"),)
           for i in range(12)]
ANSWERS = [(f"Short answer {i}.", f"Well, um, a much longer and rambling answer {'and more ' * i}") for i in range(12)]


def cuda_backend(adapter, quant: str = "none", dtype: str = "float32") -> HFBackend:
    spec = resolve(EvalConfig(adapter=adapter))
    tok = load_tokenizer(spec.base)
    model, _ = attach_adapter(load_base(spec.base, quant, dtype, "cuda"), spec)
    return HFBackend(model, tok, system_ok=accepts_system(tok), device="cuda")


def groups_of(backend: HFBackend) -> list:
    return [backend.scored_rows([m, m], list(a)) for m, a in zip(PROMPTS, ANSWERS)]


@pytest.mark.parametrize("adapter", [True, False], ids=["policy", "reference"])
def test_one_prompt_pass_per_pair_equals_each_sequence_alone_in_fp32(tiny_adapter, adapter):
    backend = cuda_backend(tiny_adapter)
    groups = groups_of(backend)
    got = dict(backend.group_logprobs(groups, adapter=adapter, batch_size=64, max_tokens=16384))
    for i, group in enumerate(groups):
        for a, row in zip(got[i], group):
            b = backend.row_logprobs([row], adapter=adapter)[0]
            assert abs(a - b) <= 1e-5 * max(1.0, abs(b)), (i, a, b)


@pytest.mark.parametrize("quant,dtype,tolerance", [("none", "bfloat16", 0.05), ("4bit", "bfloat16", 0.25)],
                         ids=["bf16", "4bit-nf4-bf16"])
def test_low_precision_scoring_is_finite_and_near_fp32(tiny_adapter, quant, dtype, tolerance):
    """bf16 and NF4 change the numbers, not their meaning: every log-prob is finite and within a
    relative tolerance of the fp32 value (tiny random weights quantize coarsely)."""
    if quant != "none":
        pytest.importorskip("bitsandbytes")
    exact = cuda_backend(tiny_adapter)
    want = dict(exact.group_logprobs(groups_of(exact), adapter=True, batch_size=64, max_tokens=16384))
    low = cuda_backend(tiny_adapter, quant, dtype)
    got = dict(low.group_logprobs(groups_of(low), adapter=True, batch_size=64, max_tokens=16384))
    for i in want:
        for a, b in zip(got[i], want[i]):
            assert math.isfinite(a) and abs(a - b) <= tolerance * abs(b), (i, a, b)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_refilled_decoding_on_cuda_gives_finite_answers_equal_to_one_by_one_in_fp32(tiny_adapter, dtype):
    """Left-padded prefill and KV merges on CUDA: fp32 answers equal one-by-one decoding; bf16 ones
    (not batch-invariant) are complete and come back for every prompt."""
    backend = cuda_backend(tiny_adapter, dtype=dtype)
    settings = GenerationSettings(max_new_tokens=10, batch_size=4, batch_tokens=64)
    batched = backend.generate(PROMPTS, adapter=True, settings=settings)
    assert len(batched) == len(PROMPTS) and all(g.n_tokens <= 10 for g in batched)
    if dtype == "float32":
        assert batched == [backend.generate([p], adapter=True, settings=settings)[0] for p in PROMPTS]


def test_auto_picks_bfloat16_on_this_gpu_and_its_next_token_logits_match_the_models_own(tiny_adapter):
    """auto on a GPU of compute capability 8.0+ (the H200, A100, L4...) runs bfloat16 and says why; decoding's
    LM head on the contiguous last hidden state gives the model's own last-position logits."""
    from dpo_eval_core.backend import left_pad, next_token_logits
    from dpo_eval_core.hardware import choose_dtype

    choice = choose_dtype("auto", "cuda")
    major, _ = torch.cuda.get_device_capability()
    assert choice.dtype == ("bfloat16" if major >= 8 else "float32")
    assert torch.cuda.get_device_name() in choice.reason
    backend = cuda_backend(tiny_adapter, dtype=choice.dtype)
    ids, mask = left_pad([backend.prompt_ids(p) for p in PROMPTS], backend.tokenizer.pad_token_id, "cuda")
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        ours = next_token_logits(backend.model, ids, mask, positions, None)
        theirs = backend.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1].float()
    assert torch.isfinite(ours).all()
    assert torch.allclose(ours, theirs, atol=1e-2 if choice.dtype == "bfloat16" else 1e-5, rtol=0)


@pytest.mark.parametrize("quant", ["4bit", "8bit"])
def test_auto_on_a_gpu_with_quantized_weights_gives_float32_verdicts(tiny_adapter, tmp_path, quant):
    """auto with --quant on a GPU of compute capability 8.0+: bfloat16 passes on float32-loaded weights (the 4-bit
    layers compute in bfloat16 inside a pass and in float32 outside it), and every pair's correctness equals a
    float32 run's."""
    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("auto runs float32 on GPUs below compute capability 8.0")
    from tiny import write_pairs

    from dpo_eval_core.families.rewards import reward_summary
    from dpo_eval_core.run import GateRun

    data = str(write_pairs(tmp_path / "pairs.jsonl", 48))
    runs = {d: GateRun(EvalConfig(adapter=tiny_adapter, data=data, device="cuda", quant=quant, compute_dtype=d,
                                  valid_fraction=0.5, cache_dir=tmp_path / d)) for d in ("auto", "float32")}
    backend = runs["auto"].model.backend
    assert backend.cast == "bfloat16" and runs["auto"].cfg.dtype_choice.loads == "float32"
    layers = [m for m in backend.model.modules() if isinstance(getattr(m, "compute_dtype", None), torch.dtype)]
    with backend.precision():
        assert all(m.compute_dtype == torch.bfloat16 for m in layers)
    assert all(m.compute_dtype == torch.float32 for m in layers)
    fast, exact = reward_summary(runs["auto"]), reward_summary(runs["float32"])
    assert fast.rescored is not None and fast.correct == exact.correct
    assert fast.correct_per_token == exact.correct_per_token
