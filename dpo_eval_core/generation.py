"""Tuned and base answers for every prompt, each cached as it finishes so a killed run resumes."""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Sequence

from tqdm.auto import tqdm

from .backend import Backend, Generation, GenerationSettings
from .cache import Cache, memoized
from .chat import Message
from .identity import ModelIdentity, generation_key


def generate_answers(backend: Backend, prompts: Sequence[Sequence[Message]], *, model: ModelIdentity,
                     settings: GenerationSettings, cache: Cache, desc: str,
                     only: Sequence[int] | None = None) -> tuple[list[Generation | None], int]:
    """Answers from `model` (the adapter on when model.adapter is set) for the prompts at indices `only`
    (all by default; None in the others' places). Only uncached ones are generated, and each is cached
    as it finishes, so a killed run keeps every finished answer. Returns (answers in prompt order,
    number generated now)."""
    adapter = model.adapter is not None
    asked = list(range(len(prompts))) if only is None else list(only)
    if only is not None:
        answers, n = generate_answers(backend, [prompts[i] for i in asked], model=model, settings=settings,
                                      cache=cache, desc=desc)
        out: list[Generation | None] = [None] * len(prompts)
        for i, g in zip(asked, answers):
            out[i] = g
        return out, n

    def compute(missing: list[int]) -> Iterator[tuple[int, Any]]:
        with tqdm(total=len(missing), desc=desc, unit="answer", leave=False) as bar:
            for j, answer in backend.generate_stream([prompts[i] for i in missing], adapter=adapter,
                                                     settings=settings):
                yield missing[j], dataclasses.asdict(answer)
                bar.update(1)

    keys = [generation_key(model, settings, m) for m in prompts]
    values, n = memoized(cache, "generation", keys, compute)
    return [Generation(**v) for v in values], n
