"""Tiny random models, tokenizers and adapters built on disk for tests: no hub, seconds to make."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# Mistral-Instruct's shape: BOS inside the template, no system role, no pad token.
MISTRAL = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}"
           "{{ raise_exception('System role not supported') }}{% endif %}"
           "{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
           "{% else %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}")

Kind = Literal["llama", "mistral"]


def make_tokenizer(kind: Kind):  # type: ignore[no-untyped-def]
    """A byte-level tokenizer (every byte a token) with the special tokens of the model family."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    specials = ["<unk>", "<s>", "</s>"] if kind == "mistral" else ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {t: i for i, t in enumerate(specials + sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=specials[0]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    if kind == "mistral":  # like Mistral's and Llama's tokenizers: tokenizing text adds a BOS
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
        fast.chat_template = MISTRAL
    else:
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                       pad_token="<|im_end|>", unk_token="<|endoftext|>")
        fast.chat_template = CHATML
    return fast


def make_base(path: Path, kind: Kind = "llama", hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Save a tiny random causal LM (safetensors) and its tokenizer to path."""
    import torch
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
    )

    tok = make_tokenizer(kind)
    common = dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    if kind == "mistral":
        model = MistralForCausalLM(MistralConfig(**common, pad_token_id=None))
    else:
        model = LlamaForCausalLM(LlamaConfig(**common, pad_token_id=tok.pad_token_id))
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


def make_adapter(base: Path, path: Path, init: Literal["random", "zero"] = "random", r: int = 4,
                 target_modules: tuple[str, ...] = ("q_proj", "v_proj"), scale: float = 0.5, seed: int = 0) -> Path:
    """Save a LoRA adapter for base: random non-zero A and B, or B = 0 (an adapter that changes nothing)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    peft = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(target_modules),
                                            task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * scale if init == "random" else torch.zeros_like(p))
    peft.save_pretrained(path, safe_serialization=True)
    cfg = json.loads((path / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(base)
    (path / "adapter_config.json").write_text(json.dumps(cfg))
    return path


def make_silent_base(path: Path) -> Path:
    """A tiny model that answers every prompt with EOS first: the final norm is zeroed, so every logit is 0,
    greedy decoding picks token 0, and token 0 is declared an EOS id."""
    import torch
    from transformers import AutoModelForCausalLM

    make_base(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        model.model.norm.weight.zero_()
    model.generation_config.eos_token_id = [0, model.config.eos_token_id]
    model.save_pretrained(path, safe_serialization=True)
    return path


def write_pairs(path: Path, n: int) -> Path:
    """n preference pairs with a plain style difference (a short chosen, a hedging rejected) as JSON Lines."""
    rows = [{"prompt": f"Question {i}?", "chosen": f"Answer {i}.",
             "rejected": f"Well, um, I guess answer {i} maybe, or so, I think, honestly."} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def load_backend(adapter: Path):  # type: ignore[no-untyped-def]
    """The adapter on its base, float32 on CPU, as an HFBackend: what the test servers answer from (each call
    loads a copy of its own: a server's adapter state is its model's)."""
    from dpo_eval_core.backend import HFBackend
    from dpo_eval_core.chat import accepts_system
    from dpo_eval_core.config import EvalConfig
    from dpo_eval_core.models import attach_adapter, load_base, load_tokenizer, resolve

    spec = resolve(EvalConfig(adapter=adapter))
    tok = load_tokenizer(spec.base)
    model, _ = attach_adapter(load_base(spec.base, "none", "float32", "cpu"), spec)
    return HFBackend(model, tok, system_ok=accepts_system(tok), device="cpu")
