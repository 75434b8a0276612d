"""Tuned and base answers for every prompt, cached batch by batch so a killed run resumes."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from tqdm.auto import tqdm

from .backend import DECODER_VERSION, Backend, Generation, GenerationSettings, batches
from .cache import Cache, make_key
from .chat import Message


def generation_key(model_key: Mapping[str, Any], adapter: bool, settings: GenerationSettings,
                   messages: Sequence[Message]) -> str:
    """Keyed by base weights, adapter weights (none for the base role), quantization, dtype, device,
    chat template, generation settings, decoder version and prompt."""
    fields = dict(model_key)
    if not adapter:
        fields["adapter"] = None
    return make_key("generation", {"model": fields, "settings": dataclasses.asdict(settings), "decoder": DECODER_VERSION,
                                   "messages": [list(m) for m in messages]})


def generate_answers(backend: Backend, prompts: Sequence[Sequence[Message]], *, adapter: bool,
                     settings: GenerationSettings, cache: Cache, model_key: Mapping[str, Any],
                     lengths: Sequence[int], desc: str) -> tuple[list[Generation], int]:
    """Answers for all prompts; only uncached ones are generated, grouped by prompt length.

    Returns (answers in prompt order, number generated now).
    """
    keys = [generation_key(model_key, adapter, settings, m) for m in prompts]
    found: dict[int, Generation] = {}
    for i, key in enumerate(keys):
        hit = cache.get("generation", key)
        if hit is not None:
            found[i] = Generation(**hit)
    missing = [i for i in range(len(prompts)) if i not in found]
    if missing:
        with tqdm(total=len(missing), desc=desc, unit="answer", leave=False) as bar:
            for batch in batches(len(missing), settings.batch_size, [lengths[i] for i in missing]):
                idx = [missing[b] for b in batch]
                for i, gen in zip(idx, backend.generate([prompts[i] for i in idx], adapter=adapter,
                                                        settings=settings)):
                    cache.put("generation", keys[i], dataclasses.asdict(gen))
                    found[i] = gen
                bar.update(len(idx))
    return [found[i] for i in range(len(prompts))], len(missing)
