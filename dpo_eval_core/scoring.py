"""The log-prob stage of a run: what scores completions and choices (the reward and multiple-choice claims),
the local model or the --serve-url server (--serve-scoring), with the identity its log-probs are cached
under."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .chat import prompt_ids
from .identity import ModelIdentity
from .serving import ServedScorer, scoring_identity
from .texts import served

if TYPE_CHECKING:
    from .run import GateRun


def scorer(run: GateRun) -> tuple[Any, ModelIdentity]:
    """(a Backend's scoring side, the identity of its log-probs): the loaded model, or the server, whose way of
    returning prompt log-probs is found at the first use with one small request (refused, naming what is
    missing, when it has none)."""
    def make() -> tuple[Any, ModelIdentity]:
        if run.cfg.serve_scoring != "server":
            return run.model.backend, run.identity
        tuned, base = served(run)["tuned"], served(run)["base"]
        probe = prompt_ids(run.tokenizer, (("user", "Hello"),), run.system_ok)
        mode = tuned.endpoint.scoring_mode(probe)
        base.endpoint.prompt_logprobs(probe, mode)  # the base's name is scored the same way, or refused now
        return (ServedScorer(tuned, base, run.tokenizer, run.system_ok, mode),
                scoring_identity(tuned, base, mode, run.tokenizer.chat_template))
    return run.stage("scorer", make)
