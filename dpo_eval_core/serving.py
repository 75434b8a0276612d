"""Answers from a serving engine: vLLM, llama.cpp, TGI, or any OpenAI-compatible server.

Generation dominates the gate's cost, and the engines that scale it exist: vLLM serves a base model
with LoRA adapters selected per request (`vllm serve BASE --enable-lora --lora-modules NAME=ckpt/`),
runs tensor-parallel across GPUs and scales out as replicas behind one URL. With --serve-url the gate
asks the adapter's served name for the tuned answers and the base's served name for the base answers,
at most --serve-concurrency requests in flight. Each answer is cached as it arrives under the server's
identity (URL, served name, the weights the server reports loading, the prompt mode), so served answers
never mix with local ones and an interrupted run resumes. With --serve-scoring server the reward and
multiple-choice log-probs come from the server too (ServedScorer), the gate's own tokens scored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

from tqdm.auto import tqdm

from .backend import Generation, GenerationSettings, HFBackend, Row, scorable
from .cache import Cache, memoized
from .chat import Message
from .endpoint import ChatEndpoint, EndpointSettings, Replicas, RequestRefused, ScoringMode, Tokens
from .errors import EndpointError
from .identity import ModelIdentity, served_generation_key

if TYPE_CHECKING:
    from .config import EvalConfig


@dataclass(frozen=True, slots=True)
class Served:
    """One served model: its endpoint and the identity its answers are cached under."""

    endpoint: Replicas
    identity: dict[str, Any]


def connect(cfg: EvalConfig, chat_template: Any) -> dict[str, Served]:
    """{'tuned': the adapter's served model, 'base': the base's}, checked at start: the server is up and
    serves both names, and where it says what each is (vLLM lists a LoRA module with its `parent`), the
    tuned name is an adapter of the base name. Raises EndpointError naming what is wrong and the fix."""
    assert cfg.serve_url and cfg.serve_model and cfg.serve_base_model  # EvalConfig checks them together

    def endpoint(name: str) -> Replicas:
        return Replicas([ChatEndpoint(EndpointSettings(url, name, cfg.serve_key_env, cfg.serve_timeout,
                                                       concurrency=cfg.serve_concurrency)) for url in cfg.serve_urls])

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

    def identity(ep: Replicas, c: Mapping[str, Any]) -> dict[str, Any]:
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
        accepts(served, prompts[asked[missing[0]]], prompt_ids)
        with tqdm(total=len(missing), desc=desc, unit="answer", leave=False) as bar:
            for j, value in served.endpoint.many(answer, missing):
                yield missing[j], value
                bar.update(1)

    values, n = memoized(cache, "generation", keys, compute)
    out: list[Generation | None] = [None] * len(prompts)
    for i, v in zip(asked, values):
        out[i] = Generation(**v)
    return out, n


def accepts(served: Served, prompt: Sequence[Message],
            prompt_ids: Callable[[Sequence[Message]], list[int]] | None) -> None:
    """One tiny request (one new token) before the answers are asked: the server takes the prompt the way the
    gate sends it (token ids to /completions, or messages to /chat/completions), or an EndpointError names what
    it refused and the --serve-prompt that avoids it."""
    try:
        served.endpoint.generate(prompt_ids(prompt) if prompt_ids else prompt, max_tokens=1)
    except RequestRefused as e:
        what, other = (("token-id prompts on /v1/completions", "server (the server applies its own chat template)")
                       if prompt_ids else ("chat messages on /v1/chat/completions",
                                           "local (the gate applies the chat template and sends token ids)"))
        raise EndpointError(f"{served.endpoint.url} takes no {what} for {served.endpoint.settings.model!r}: {e} "
                            f"Pass --serve-prompt {other}.") from None


class ServedScorer:
    """The log-prob side of a Backend, from the server: the adapter's served name for adapter=True (policy),
    the base's for adapter=False (reference). Rows are tokenized here, as for local scoring, and sent as token
    ids (or, to a server that takes only text, as their text, its tokens checked against these), so the sums
    cover exactly the tokens local scoring sums; each row is one request, at most the endpoint's concurrency in
    flight."""

    def __init__(self, tuned: Served, base: Served, tokenizer: Any, system_ok: bool, mode: ScoringMode) -> None:
        self.served, self.mode = {True: tuned, False: base}, mode
        self.tokens = HFBackend(None, tokenizer, system_ok=system_ok, device="cpu")  # tokenization only

    def scored_rows(self, prompts: Sequence[Sequence[Message]], completions: Sequence[str],
                    max_length: int | None = None) -> list[Row]:
        return self.tokens.scored_rows(prompts, completions, max_length)

    def text_rows(self, contexts: Sequence[Any], continuations: Sequence[str], max_length: int | None = None
                  ) -> list[Row]:
        return self.tokens.text_rows(contexts, continuations, max_length)

    def completion_lengths(self, prompts: Sequence[Sequence[Message]], completions: Sequence[str], *,
                           max_length: int | None = None) -> list[int]:
        return self.tokens.completion_lengths(prompts, completions, max_length=max_length)

    def row_logprobs(self, rows: Sequence[Row], *, adapter: bool, max_length: int | None = None) -> list[float]:
        """Sum of log p(completion token | prefix) per row, summed exactly (math.fsum); NaN where nothing is
        scorable (TRL drops such rows)."""
        return [s for _, (s,) in sorted(self.group_logprobs([[r] for r in rows], adapter=adapter, batch_size=1,
                                                            max_tokens=None, max_length=max_length))]

    def group_logprobs(self, groups: Sequence[Sequence[Row]], *, adapter: bool, batch_size: int,
                       max_tokens: int | None, max_length: int | None = None) -> Iterator[tuple[int, list[float]]]:
        """`row_logprobs` of groups of rows (a pair's chosen and rejected, a question's choices), each group
        yielded as soon as its last row is scored (so the caller caches what arrived); batching is the
        server's, at most the endpoint's concurrency requests in flight."""
        endpoint = self.served[adapter].endpoint
        out = [[math.nan] * len(group) for group in groups]
        todo = [(g, k) for g, group in enumerate(groups) for k, row in enumerate(group) if scorable(row, max_length)]
        left = [0] * len(groups)
        for g, _ in todo:
            left[g] += 1
        yield from ((g, out[g]) for g in range(len(groups)) if left[g] == 0)

        def score(item: tuple[int, int]) -> float:
            prompt, completion = groups[item[0]][item[1]]
            sequence = to_score(self.tokens.tokenizer, [*prompt, *completion], self.mode)
            return math.fsum(endpoint.prompt_logprobs(sequence, self.mode, start=len(prompt)))

        for j, value in endpoint.many(score, todo):
            g, k = todo[j]
            out[g][k] = value
            left[g] -= 1
            if left[g] == 0:
                yield g, out[g]


def to_score(tokenizer: Any, ids: Sequence[int], mode: ScoringMode) -> Tokens:
    """Token ids as a server is sent them: as they are, or for echo_text with their text and each token's piece
    (special tokens and the halves of a character split over tokens have none a server echoes)."""
    if mode != "echo_text":
        return Tokens(tuple(ids))
    pieces = tuple(tokenizer.decode([t], skip_special_tokens=True, clean_up_tokenization_spaces=False)
                   .replace("\ufffd", "") for t in ids)
    return Tokens(tuple(ids), tokenizer.decode(ids, clean_up_tokenization_spaces=False), pieces)


def scoring_identity(tuned: Served, base: Served, mode: ScoringMode, chat_template: Any) -> ModelIdentity:
    """The cache identity of served log-probs: the two served identities (URL, name, the weights the server
    reports) as base and adapter, the scoring mode where a local model has its dtype, so served and local
    log-probs never share a cache entry."""
    def digest(served: Served) -> str:
        return hashlib.sha256(json.dumps(served.identity, sort_keys=True, default=str).encode()).hexdigest()
    return ModelIdentity.of(digest(base), digest(tuned), "server", mode, "server", chat_template)
