"""The log-prob stage of a run: what scores completions and choices (the reward and multiple-choice claims),
the local model or the --serve-url server (--serve-scoring), with the identity its log-probs are cached
under."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

from .chat import completion_ids
from .errors import EndpointError
from .identity import ModelIdentity
from .serving import ServedScorer, scoring_identity, to_score
from .stages import Stage
from .texts import served

if TYPE_CHECKING:
    from .run import GateRun

SCORER: Stage[tuple[Any, ModelIdentity]] = Stage("scorer")
"""What scores completions and choices, and the identity its log-probs are cached under."""
SERVE_CHECK: Stage[dict[str, Any]] = Stage("serve check")
"""What --serve-check saw (local against served log-probs)."""


def scorer(run: GateRun) -> tuple[Any, ModelIdentity]:
    """(a Backend's scoring side, the identity of its log-probs): the loaded model, or the server, whose way of
    returning prompt log-probs is found at the first use with one small request (refused, naming what is
    missing, when it has none)."""
    def make() -> tuple[Any, ModelIdentity]:
        if run.cfg.serve_scoring != "server":
            return run.model.backend, run.identity
        tuned, base = served(run)["tuned"], served(run)["base"]
        prompt, completion = completion_ids(run.tokenizer, (("user", "Hello"),), "Hello!", run.system_ok)
        probe = [*prompt, *completion]
        mode = tuned.endpoint.scoring_mode(to_score(run.tokenizer, probe, "echo_text"), start=len(prompt))
        base.endpoint.prompt_logprobs(to_score(run.tokenizer, probe, mode), mode, start=len(prompt))  # or refused
        served_scorer = ServedScorer(tuned, base, run.tokenizer, run.system_ok, mode)
        if run.cfg.serve_check:
            run.stages.once(SERVE_CHECK, lambda: parity(run, served_scorer))
        return served_scorer, scoring_identity(tuned, base, mode, run.tokenizer.chat_template)
    return run.stages.once(SCORER, make)


def exact_scorer(run: GateRun) -> tuple[Any, ModelIdentity] | None:
    """The float32 pass that settles what a bfloat16 pass cannot (precision.py): the loaded model on its weights
    as loaded, keyed under the identity a float32 run caches its log-probs under (so either run reuses the
    other's); None where the verdicts are the pass's own (no cast, or the server scores)."""
    choice = run.cfg.dtype_choice
    if choice.cast is None or run.cfg.serve_scoring == "server":
        return None
    return run.model.backend.exact(), dataclasses.replace(run.identity, dtype=choice.loads)


RELATIVE, ABSOLUTE = 0.02, 1.0
"""--serve-check's tolerance per sequence log-prob: 2% of |log-prob| plus 1 nat. A server runs other kernels
and usually bfloat16: bfloat16 keeps 8 bits of mantissa, so each token's log-prob moves by up to a few tenths of
a percent, and over the ~265 tokens of an UltraFeedback answer the sum moves by about a nat (measured on this
project's bfloat16 runs: reward margins moved by a median 0.1 at beta 0.1, i.e. about 1 nat of log-ratio). A
wrong tokenizer, template or model moves a sum by tens of nats."""


def parity(run: GateRun, served_scorer: ServedScorer) -> dict[str, Any]:
    """Score the first --serve-check valid pairs (chosen and rejected, policy and reference) locally and on the
    server; raise EndpointError with the numbers when any differs beyond the tolerance, else what was seen."""
    pairs = [run.pairs.pairs[i] for i in run.valid_index[:run.cfg.serve_check]]
    local = run.model.backend
    rows = local.scored_rows([p.messages for p in pairs for _ in (0, 1)],
                             [c for p in pairs for c in (p.chosen, p.rejected)], run.cfg.max_length)
    worst = (-math.inf, math.nan, math.nan, "")  # (how far past the tolerance, local, server, which model)
    for adapter, role in ((True, "policy"), (False, "reference")):
        mine, theirs = local.row_logprobs(rows, adapter=adapter), served_scorer.row_logprobs(rows, adapter=adapter)
        for a, b in zip(mine, theirs):
            if math.isnan(a) and math.isnan(b):
                continue  # nothing left to score after the max_length cut, on both sides
            past = math.inf if math.isnan(a) or math.isnan(b) else abs(a - b) - (RELATIVE * abs(a) + ABSOLUTE)
            if past > worst[0]:
                worst = (past, a, b, role)
    past, a, b, role = worst
    d = abs(a - b)
    seen = {"pairs": len(pairs), "worst_difference": d, "local": a, "server": b, "role": role,
            "tolerance": f"{RELATIVE:.0%} of |log-prob| + {ABSOLUTE:g} nat"}
    if past > 0:
        raise EndpointError(f"--serve-check {run.cfg.serve_check}: the server's {role} log-prob of a sequence is "
                            f"{b:.4g} where local {run.cfg.resolved_dtype} scoring gives {a:.4g} (difference {d:.3g}; "
                            f"tolerance {seen['tolerance']}, {RELATIVE * abs(a) + ABSOLUTE:.3g} here) on {len(pairs)} "
                            f"pairs. The server scores another model, tokenizer or chat template than the local one: "
                            f"check --serve-model and --serve-base-model, or score locally (--serve-scoring local).")
    return seen
