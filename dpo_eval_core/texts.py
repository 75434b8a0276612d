"""The text stages of a run: every answered prompt, tuned and base, from the loaded model or the --serve-url
server, and TextDescriptives features of any texts; each cached per answer or text (an interrupted run keeps
what it got)."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .backend import Generation
from .chat import Message, prompt_ids
from .features import FeatureSettings, build_pipeline, feature_table
from .generation import generate_answers
from .serving import Served, connect, serve_answers
from .stages import Stage

if TYPE_CHECKING:
    from .run import GateRun

SERVED: Stage[dict[str, Served]] = Stage("served")
"""The --serve-url models by role (tuned, base)."""
NLP: Stage[Any] = Stage("nlp")
"""The spaCy pipeline's maker, built once per loaded model's run."""


def served(run: GateRun) -> dict[str, Served]:
    """The --serve-url models that answer instead of the loaded one, checked before any model loads."""
    return run.stages.once(SERVED, lambda: connect(run.cfg, run.tokenizer.chat_template))


def answer(run: GateRun) -> dict[str, list[Generation | None]]:
    """{tuned, base: one answer per pair (None where not asked)}: every valid pair and --train-answers train
    pairs; the adapter on for tuned, off for base (one loaded model)."""
    return answer_prompts(run, [p.messages for p in run.pairs.pairs],
                          run.pairs.answered(run.cfg.train_answers, run.cfg.seed))


def answer_prompts(run: GateRun, prompts: Sequence[Sequence[Message]], only: Sequence[int] | None = None,
                   of: str = "") -> dict[str, list[Generation | None]]:
    """{tuned, base: the answer to each prompt (at `only`'s indices; None elsewhere)}, from the loaded model
    (adapter on, then off) or the --serve-url server, with the gate's generation settings; each answer cached
    as it finishes. `of` names the prompts in the progress bar and the timings ("safety: harmful")."""
    out, settings, label = {}, run.cfg.generation, f" ({of})" if of else ""
    for role, identity in (("tuned", run.identity), ("base", run.identity.without_adapter())):
        with run.ledger.phase(f"generate {role}{label}"):
            if run.cfg.serve_url:
                render = functools.partial(prompt_ids, run.tokenizer, system_ok=run.system_ok)
                out[role], n = serve_answers(served(run)[role], prompts, settings=settings, cache=run.cache,
                                             desc=f"generate {role}{label} (server)", only=only,
                                             prompt_ids=render if run.cfg.serve_prompt == "local" else None,
                                             count_tokens=lambda t: len(run.tokenizer(t)["input_ids"]))
            else:
                out[role], n = generate_answers(run.model.backend, prompts, model=identity, settings=settings,
                                                cache=run.cache, desc=f"generate {role}{label}", only=only)
            run.ledger.count(f"generations_{role}", n)
    return out


def features(run: GateRun, texts: dict[str, list[str | None]], of: str) -> dict[str, np.ndarray]:
    """{role: [n_texts, n_features]} TextDescriptives features, cached per text (None: an unanswered row); the
    spaCy pipeline is built once per run, and only when a text is missing from the cache."""
    nlp = run.owner.stages.once(NLP, lambda: functools.cache(functools.partial(build_pipeline, FeatureSettings())))
    with run.ledger.phase(f"features ({of})"):
        table, n = feature_table([t for r in texts for t in texts[r]], run.cache, nlp, f"text features ({of})")
    run.ledger.count("feature_rows", n)
    return dict(zip(texts, np.split(table, len(texts))))
