"""Chat formatting shared by generation and reward scoring, so both see the same tokens.

Prompts are rendered with the model's chat template and tokenized without adding special
tokens (the template already holds them); templates that refuse a system role get the
system text folded into the first user turn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from .errors import CheckpointError

Message = tuple[str, str]


def _dicts(messages: Sequence[Message]) -> list[dict[str, str]]:
    return [{"role": r, "content": c} for r, c in messages]


def fold_system(messages: Sequence[Message]) -> tuple[Message, ...]:
    """Move a leading system turn into the first user turn (for templates such as Mistral's)."""
    if not messages or messages[0][0] != "system":
        return tuple(messages)
    system, rest = messages[0][1], list(messages[1:])
    for i, (role, content) in enumerate(rest):
        if role == "user":
            rest[i] = ("user", f"{system}\n\n{content}")
            break
    return tuple(rest)


def accepts_system(tokenizer: Any) -> bool:
    """Whether the chat template renders a system turn (Mistral's raises on one)."""
    probe = [("system", "S"), ("user", "U")]
    try:
        text = tokenizer.apply_chat_template(_dicts(probe), tokenize=False, add_generation_prompt=True)
    except Exception:  # jinja raise_exception surfaces as TemplateError or a plain Exception
        return False
    return "S" in text


def require_chat_template(tokenizer: Any, name: str) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise CheckpointError(f"The tokenizer of {name} has no chat template, so prompts cannot be formatted as the "
                              f"model was trained. Use an instruct/chat checkpoint, or save a tokenizer with "
                              f"chat_template set (tokenizer.chat_template = ...; tokenizer.save_pretrained(dir)).")


def prompt_ids(tokenizer: Any, messages: Sequence[Message], system_ok: bool) -> list[int]:
    """Token ids of the prompt with the generation prompt, exactly as TRL's DPOTrainer builds them."""
    msgs = messages if system_ok else fold_system(messages)
    return list(_ids(tokenizer.apply_chat_template(_dicts(msgs), tokenize=True, add_generation_prompt=True)))


def completion_ids(tokenizer: Any, messages: Sequence[Message], completion: str,
                   system_ok: bool) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids) split where prompt and prompt+completion diverge (TRL's rule)."""
    msgs = tuple(messages if system_ok else fold_system(messages))
    prompt = prompt_ids(tokenizer, msgs, True)
    full = list(_ids(tokenizer.apply_chat_template(_dicts(msgs + (("assistant", completion),)), tokenize=True)))
    n = 0
    while n < min(len(prompt), len(full)) and prompt[n] == full[n]:
        n += 1
    return full[:n], full[n:]


def prompt_text(tokenizer: Any, messages: Sequence[Message], system_ok: bool) -> str:
    """The templated prompt as text, with the generation prompt: what `prompt_ids` tokenizes."""
    msgs = messages if system_ok else fold_system(messages)
    return str(tokenizer.apply_chat_template(_dicts(msgs), tokenize=False, add_generation_prompt=True))


def context_continuation_ids(tokenizer: Any, context: str, continuation: str,
                             move_spaces: bool = True) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) of a text pair, as lm-evaluation-harness encodes a loglikelihood
    request: trailing spaces of the context move to the continuation (`move_spaces`; not for a chat
    prompt, whose closing newline belongs to the template), the whole is tokenized once and split after
    the context's own tokens, no special tokens added (a chat template holds its own)."""
    n_spaces = len(context) - len(context.rstrip()) if move_spaces else 0
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = list(tokenizer(context + continuation, add_special_tokens=False)["input_ids"])
    n = len(tokenizer(context, add_special_tokens=False)["input_ids"])
    return whole[:n], whole[n:]


def _ids(result: Any) -> list[int]:
    """apply_chat_template(tokenize=True) returns a list or a BatchEncoding depending on the version."""
    if hasattr(result, "keys") and "input_ids" in result:
        return list(result["input_ids"])
    return list(result)


def leading_bos_count(ids: Sequence[int], bos_id: int | None) -> int:
    """How many BOS tokens open a sequence (more than one is the double-BOS bug)."""
    if bos_id is None:
        return 0
    n = 0
    while n < len(ids) and ids[n] == bos_id:
        n += 1
    return n


@dataclass(frozen=True, slots=True)
class TokenizerFacts:
    """What batched generation needs from a tokenizer, as observed on a real templated prompt."""

    bos_id: int | None
    model_bos_id: int | None
    """The model config's bos_token_id (must equal the tokenizer's)."""
    pad_id: int | None
    padding_side: str
    leading_bos: int
    """BOS tokens that open the templated prompt (more than one is the double-BOS bug)."""
    template_has_bos: bool
    """The chat template writes a BOS itself."""


def tokenizer_facts(tokenizer: Any, model_bos_id: int | None, messages: Sequence[Message],
                    system_ok: bool) -> TokenizerFacts:
    ids = prompt_ids(tokenizer, messages, system_ok)
    return TokenizerFacts(tokenizer.bos_token_id, model_bos_id, tokenizer.pad_token_id, tokenizer.padding_side,
                          leading_bos_count(ids, tokenizer.bos_token_id),
                          bool(tokenizer.bos_token) and "bos_token" in str(tokenizer.chat_template))
