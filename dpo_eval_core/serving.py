"""Answers from a serving engine: vLLM, llama.cpp, TGI, or any OpenAI-compatible server.

Generation dominates the gate's cost, and the engines that scale it exist: vLLM serves a base model
with LoRA adapters selected per request (`vllm serve BASE --enable-lora --lora-modules NAME=ckpt/`),
runs tensor-parallel across GPUs and scales out as replicas behind one URL. With --serve-url the gate
asks the adapter's served name for the tuned answers and the base's served name for the base answers,
at most --serve-concurrency requests in flight. Each answer is cached as it arrives under the server's
identity (URL, served name, the weights the server reports loading, the prompt mode), so served answers
never mix with local ones and an interrupted run resumes. Log-probs for the reward claims stay local:
they must equal TRL's.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

from tqdm.auto import tqdm

from .backend import Generation, GenerationSettings
from .cache import Cache, memoized
from .chat import Message
from .endpoint import ChatEndpoint, EndpointSettings
from .errors import EndpointError
from .identity import served_generation_key

if TYPE_CHECKING:
    from .config import EvalConfig


@dataclass(frozen=True, slots=True)
class Served:
    """One served model: its endpoint and the identity its answers are cached under."""

    endpoint: ChatEndpoint
    identity: dict[str, Any]


def connect(cfg: EvalConfig, chat_template: Any) -> dict[str, Served]:
    """{'tuned': the adapter's served model, 'base': the base's}, checked at start: the server is up and
    serves both names, and where it says what each is (vLLM lists a LoRA module with its `parent`), the
    tuned name is an adapter of the base name. Raises EndpointError naming what is wrong and the fix."""
    assert cfg.serve_url and cfg.serve_model and cfg.serve_base_model  # EvalConfig checks them together

    def endpoint(name: str) -> ChatEndpoint:
        return ChatEndpoint(EndpointSettings(cfg.serve_url or "", name, cfg.serve_key_env, cfg.serve_timeout,
                                             concurrency=cfg.serve_concurrency))

    tuned, base = endpoint(cfg.serve_model), endpoint(cfg.serve_base_model)
    cards = tuned.model_cards()
    if cards is None:
        raise EndpointError(f"{tuned.url}/models answered 404: the gate cannot check which models the server "
                            f"serves. Use a server with the OpenAI /v1/models route (vLLM, llama.cpp, TGI).")
    for option, name in (("--serve-model", cfg.serve_model), ("--serve-base-model", cfg.serve_base_model)):
        if name not in cards:
            raise EndpointError(f"{tuned.url} does not serve {name!r} ({option}); it serves "
                                f"{', '.join(map(repr, cards)) or 'nothing'}. Fix {option}.")
    card, base_card = cards[cfg.serve_model], cards[cfg.serve_base_model]
    if "parent" in card and card["parent"] in (None, ""):
        raise EndpointError(f"--serve-model {cfg.serve_model!r} is served as a model of its own, not as an adapter "
                            f"(the server lists no parent for it). Serve the adapter as a LoRA module of the base, "
                            f"e.g. vllm serve BASE --enable-lora --lora-modules {cfg.serve_model}=ckpt/.")
    if card.get("parent") not in (None, cfg.serve_base_model, base_card.get("root")):
        raise EndpointError(f"--serve-model {cfg.serve_model!r} is an adapter of {card['parent']!r}, not of "
                            f"--serve-base-model {cfg.serve_base_model!r}: gate it against its own base.")
    template = hashlib.sha256(str(chat_template).encode()).hexdigest() if cfg.serve_prompt == "local" else None

    def identity(ep: ChatEndpoint, c: Mapping[str, Any]) -> dict[str, Any]:
        return {**ep.identity(), "root": c.get("root"), "revision": c.get("revision"), "prompt": cfg.serve_prompt,
                "chat_template": template}

    return {"tuned": Served(tuned, identity(tuned, card)), "base": Served(base, identity(base, base_card))}


def serve_answers(served: Served, prompts: Sequence[Sequence[Message]], *, settings: GenerationSettings,
                  cache: Cache, desc: str, prompt_ids: Callable[[Sequence[Message]], list[int]] | None,
                  count_tokens: Callable[[str], int], only: Sequence[int] | None = None
                  ) -> tuple[list[Generation | None], int]:
    """Answers from the server for the prompts at indices `only` (all by default; None elsewhere), as
    `generation.generate_answers` gives local ones: greedy, or sampled with the seed; each cached as it
    arrives. `prompt_ids` renders a prompt with the local chat template (sent as token ids to /completions);
    None sends the messages to /chat/completions. Returns (answers in prompt order, number asked now)."""
    asked = list(range(len(prompts))) if only is None else list(only)
    keys = [served_generation_key(served.identity, settings, prompts[i]) for i in asked]

    def answer(i: int) -> dict[str, Any]:
        messages = prompts[asked[i]]
        reply = served.endpoint.generate(prompt_ids(messages) if prompt_ids else messages,
                                         max_tokens=settings.max_new_tokens,
                                         temperature=settings.temperature if settings.do_sample else 0.0,
                                         top_p=settings.top_p if settings.do_sample else 1.0,
                                         seed=settings.seed if settings.do_sample else None)
        text = reply.text.strip()
        n = reply.n_tokens if reply.n_tokens is not None else count_tokens(reply.text)
        return dataclasses.asdict(Generation(text, n, reply.finish_reason == "length"))

    def compute(missing: list[int]) -> Iterator[tuple[int, Any]]:
        with tqdm(total=len(missing), desc=desc, unit="answer", leave=False) as bar:
            for j, value in served.endpoint.many(answer, missing):
                yield missing[j], value
                bar.update(1)

    values, n = memoized(cache, "generation", keys, compute)
    out: list[Generation | None] = [None] * len(prompts)
    for i, v in zip(asked, values):
        out[i] = Generation(**v)
    return out, n
