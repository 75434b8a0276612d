"""One builder per claim family: the run's measurements -> that family's claims.

A builder reads the public stages of a GateRun (each computed on first use) and calls the pure claim
constructors in claims.py and regression.py. It touches only the stages its claims need, so a
data-only claim loads no model. Keyed by `Family.pattern` (registry.py); tests check that every
family has exactly one builder.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable


from . import claims as C
from . import regression as R
from .chat import tokenizer_facts
from .claims import Claim
from .errors import ConfigError
from .features import FEATURE_NAMES
from .models import logit_effect
from .registry import VARIANTS, family_of, split_id

if TYPE_CHECKING:
    from .gate import GateRun

Builder = Callable[["GateRun", "str | None"], list[Claim]]
"""(run, the claim id's bracket value or None) -> the claims of that family the run can compute."""


def adapter_loads(run: GateRun, _: str | None) -> list[Claim]:
    return [C.adapter_loads(run.model.report, str(run.spec.adapter), run.spec.base)]


def adapter_changes_model(run: GateRun, _: str | None) -> list[Claim]:
    return [C.adapter_changes_model(run.model.report, *logit_effect(run.model.backend.model, *run.probe_inputs))]


def tokenizer_ready(run: GateRun, _: str | None) -> list[Claim]:
    bos = getattr(run.model.backend.model.get_base_model().config, "bos_token_id", None)
    facts = tokenizer_facts(run.tokenizer, bos, run.pairs.pairs[0].messages, run.system_ok)
    return [C.tokenizer_ready(**dataclasses.asdict(facts))]


def quantization(run: GateRun, variant_id: str | None) -> list[Claim]:
    """The three claims of one variant; none for a variant this machine does not probe (Variant.skip_reason)."""
    variant = next(v for v in VARIANTS if v.id == variant_id)
    if variant.skip_reason(run.cfg.on_cuda) is not None:
        return []
    m = run.quantization(variant)
    return C.quantization(variant.id, m.finite, m.first_nonfinite_module, m.top1, m.kl, m.merged_top1, m.merged_kl,
                          run.cfg.gate)


def rewards(run: GateRun, _: str | None) -> list[Claim]:
    return C.rewards(run.reward_summary, run.cfg.gate)


def data_signal(run: GateRun, _: str | None) -> list[Claim]:
    return C.data_signal(run.data_stats, run.cfg.gate)


def alignment(run: GateRun, _: str | None) -> list[Claim]:
    empty = [role for role, gens in run.answers.items()
             if (given := [g for g in gens if g is not None]) and all(not g.text.strip() for g in given)]
    return C.alignment(run.feature_stats, run.cfg.gate, run.agreement_ci, empty)


def adapter_changes_answers(run: GateRun, _: str | None) -> list[Claim]:
    """Share of valid-split prompts whose tuned answer differs from the base answer (greedy: a zero adapter
    gives 0; a weak one leaves many answers as they were), on its exact interval."""
    valid = [i for i, p in enumerate(run.pairs.pairs) if p.split == "valid"]
    tuned, base = run.answers["tuned"], run.answers["base"]
    changed = [t.text != b.text for i in valid if (t := tuned[i]) and (b := base[i])]
    if not any(changed):
        return [Claim("adapter-changes-answers", False, 0.0 if changed else None, "CI low > 0", "", len(changed),
                      f"none of the {len(changed)} valid-split answers differs from the base model's")]
    return [C.rate_above("adapter-changes-answers", sum(changed), len(changed), 0.0, run.cfg.gate,
                         "valid-split answers that differ from the base model's: share", units="answers")]


def forgetting(run: GateRun, set_name: str | None) -> list[Claim]:
    if set_name not in run.question_sets:
        raise ConfigError("claim id", set_name, "a set given with --mcq: " + (", ".join(run.question_sets) or "none"))
    return C.forgetting(run.forgetting(set_name), run.cfg.gate)


def judge(run: GateRun, _: str | None) -> list[Claim]:
    return C.judge(run.judge_summary, run.cfg.gate)


def not_worse(run: GateRun, item: str | None) -> list[Claim]:
    other = f"--compare {run.cfg.compare}"
    if item == "judge-win-rate":
        return [C.not_worse_judge(run.comparison.judged(), run.cfg.gate, other)]
    if split_id(item or "")[0] == "mcq-accuracy" and split_id(item or "")[1] not in run.question_sets:
        raise ConfigError("claim id", item, "a set given with --mcq: " + (", ".join(run.question_sets) or "none"))
    return [C.not_worse(run.comparison.item(item or ""), run.cfg.gate, other)]


def still_passes(run: GateRun, claim_id: str | None) -> list[Claim]:
    assert claim_id is not None
    family, arg = family_of(claim_id), split_id(claim_id)[1]
    for need, option in (("judge", "--judge"), ("compare", "--compare")):
        if family is not None and need in family.needs and getattr(run.cfg, need) is None:
            return [R.still_passes(claim_id, None, f"the baseline had {option}, this run has none: pass it again")]
    if family is not None and family.over == "mcq" and arg not in run.question_sets:
        return [R.still_passes(claim_id, None, f"the baseline asked the multiple-choice set {arg!r}, this run "
                                               f"was given none of that name: pass the same --mcq")]
    current = run.claim(claim_id)
    return [R.still_passes(claim_id, current, "it needs CUDA" if current is None else "")]


def not_lower(run: GateRun, rate: str | None) -> list[Claim]:
    """Non-inferiority against the baseline: paired on the items both runs have where the baseline recorded
    them (pairs, data-signal features), else unpaired with the reason."""
    current = run.claim(rate or "")
    if current is None:
        return []
    if rate == R.PER_FEATURE:
        values: dict = {"agreement": R.agreement_by_feature(
            [c for f in FEATURE_NAMES if (c := run.claim(f"sign-agreement[{f}]")) is not None])}
    else:
        values = {"pair_ids": run.reward_summary.pair_ids, "correct": run.reward_summary.correct,
                  "correct_per_token": run.reward_summary.correct_per_token}
    paired = R.paired_values(run.baseline, values, current.id)
    if isinstance(paired, str):
        old = next((c for c in run.baseline["claims"] if c["id"] == rate), None)
        return [R.not_lower(current.id, old, current, run.cfg.gate, paired)]
    return [R.not_lower_paired(current.id, *paired, run.cfg.gate)]


BUILDERS: dict[str, Builder] = {
    "adapter-loads": adapter_loads,
    "adapter-changes-model": adapter_changes_model,
    "tokenizer-ready": tokenizer_ready,
    "no-nan-logits[VARIANT]": quantization,
    "quantized-agrees[VARIANT]": quantization,
    "merged-agrees[VARIANT]": quantization,
    "reward-accuracy": rewards,
    "reward-accuracy-per-token": rewards,
    "reward-margin": rewards,
    "data-signal[FEATURE]": data_signal,
    "data-signal": data_signal,
    "tuned-differs[FEATURE]": alignment,
    "sign-agreement[FEATURE]": alignment,
    "sign-agreement-rate": alignment,
    "adapter-changes-answers": adapter_changes_answers,
    "mcq-accuracy[SET]": forgetting,
    "no-forgetting[SET]": forgetting,
    "judge-win-rate": judge,
    "judge-length-controlled-win-rate": judge,
    "judge-consistency": judge,
    "not-worse[COMPARISON]": not_worse,
    "still-passes[CLAIM]": still_passes,
    "not-lower[RATE]": not_lower,
}

