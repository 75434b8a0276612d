"""The checkpoint: the adapter loads onto its base, changes the model, and the tokenizer is ready for batched
generation."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from .. import quantization as Q
from ..chat import prompt_ids, tokenizer_facts
from ..claims import Claim
from ..family import Family, Kind
from ..models import AdapterReport, logit_effect
from ..stages import Stage

if TYPE_CHECKING:
    from ..run import GateRun

PROBE_INPUTS: Stage[tuple[Any, Any]] = Stage("probe inputs")

LOADS = Kind("adapter-loads", "the adapter loads onto its base: every LoRA tensor meets a module, no missing or "
                              "unexpected keys")
CHANGES = Kind("adapter-changes-model", "some LoRA B matrix is non-zero and tuned logits differ from base logits on "
                                        "real prompts", validity=True)
TOKENIZER = Kind("tokenizer-ready", "pad token set, left padding, BOS id consistent, exactly one BOS after the chat "
                                    "template")


def probe_inputs(run: GateRun) -> tuple[Any, Any]:
    """A left-padded batch of real prompts from shortest to longest: uneven padding on purpose (also the
    quantization probes' batch)."""
    def batch() -> tuple[Any, Any]:
        prompts = [p.messages for p in run.pairs.pairs]
        idx = Q.pick_probe_prompts(prompts, [len(prompt_ids(run.tokenizer, m, run.system_ok)) for m in prompts])
        return Q.probe_batch(run.tokenizer, [prompts[i] for i in idx], run.system_ok, run.cfg.resolved_device)
    return run.stages.once(PROBE_INPUTS, batch)


def adapter_loads(report: AdapterReport, adapter: str, base: str) -> Claim:
    msg = (f"{report.matched_modules} modules adapted ({', '.join(report.target_modules)}); "
           f"missing keys {len(report.missing_keys)}, unexpected keys {len(report.unexpected_keys)}")
    if report.missing_keys:
        msg += f"; first missing: {report.missing_keys[0]}"
    if report.unexpected_keys:
        msg += f"; first unexpected: {report.unexpected_keys[0]}"
    return Claim(LOADS.id(), report.ok, float(report.matched_modules), "every adapter tensor matches a base module",
                 "", None, f"{adapter} onto {base}: {msg}")


def adapter_changes_model(report: AdapterReport, max_abs_diff: float, top1_changed: float) -> Claim:
    ok = report.nonzero_b > 0 and max_abs_diff > 1e-4
    why = "" if ok else (" All LoRA B matrices are zero: the adapter is the identity (untrained or zeroed)."
                         if report.nonzero_b == 0 else " Tuned and base logits are identical on real prompts.")
    return Claim(CHANGES.id(), ok, max_abs_diff, "max |tuned - base logit| > 1e-4 and some B != 0", "",
                 None, f"{report.nonzero_b} of {report.n_b} LoRA B matrices non-zero; max |logit change| "
                 f"{max_abs_diff:.4g}; top-1 token changed at {top1_changed:.1%} of positions" + why)


def tokenizer_ready(bos_id: int | None, model_bos_id: int | None, pad_id: int | None, padding_side: str,
                    leading_bos: int, template_has_bos: bool) -> Claim:
    problems = []
    if pad_id is None:
        problems.append("no pad token")
    if padding_side != "left":
        problems.append(f"padding side {padding_side!r} (decoder-only generation needs 'left')")
    if model_bos_id is not None and bos_id != model_bos_id:
        problems.append(f"tokenizer bos id {bos_id} != model config bos id {model_bos_id}")
    if leading_bos > 1:
        problems.append(f"{leading_bos} BOS tokens open the templated prompt (double BOS: the template already "
                        f"adds one; tokenize with add_special_tokens=False)")
    if template_has_bos and leading_bos != 1:
        problems.append(f"the chat template writes a BOS but the prompt starts with {leading_bos}")
    return Claim(TOKENIZER.id(), not problems, float(leading_bos), "pad set, left padding, one BOS", "", None,
                 f"bos={bos_id}, pad={pad_id}, padding={padding_side}, leading BOS after template={leading_bos}"
                 + ("; " + "; ".join(problems) if problems else ""))


def claims(run: GateRun, _: str | None) -> list[Claim]:
    model = run.model
    bos = getattr(model.backend.model.get_base_model().config, "bos_token_id", None)
    facts = tokenizer_facts(run.tokenizer, bos, run.pairs.pairs[0].messages, run.system_ok)
    return [adapter_loads(model.report, str(run.spec.adapter), run.spec.base),
            adapter_changes_model(model.report, *logit_effect(model.backend.model, *probe_inputs(run))),
            tokenizer_ready(**dataclasses.asdict(facts))]


FAMILY = Family("checkpoint", (LOADS, CHANGES, TOKENIZER), claims, rank=10,
                doc="The adapter is the right checkpoint for its base, it loads, it changes the model, and the "
                    "tokenizer is ready for batched generation.")
