"""The claims registry: one frozen spec per claim family, the single place claim ids are defined.

Everything that needs to know about claims reads it: the gating defaults (GateConfig), the
validation of `gating` and `--gate gating=...` (with "did you mean"), the parameters of the tests
in evals/, the xdist work units, the regression rates, the validity table, the console summary and
the docs test. How a family is computed lives in `builders.py`, one builder per family.

Adding a claim family: a `Family` here, a builder in builders.py, one test in evals/.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Literal

from .errors import ConfigError
from .features import FEATURE_NAMES

@dataclass(frozen=True, slots=True)
class Variant:
    """A quantization the quantization claims are made for."""

    id: str
    quant: str
    dtype: str
    cuda: bool
    """True: probed on CUDA only; False: probed on CPU only. On a GPU the CPU variants would hold float32
    copies of the whole model (29 GB for a 7B, more than a 24 GB card), so the GPU probes its own variants
    against a bfloat16 reference instead: each loads one model in at most bfloat16 (14.5 GB for a 7B) and
    frees it before the next."""

    def skip_reason(self, on_cuda: bool) -> str | None:
        """Why this machine does not probe the variant, or None when it does."""
        if self.cuda and not on_cuda:
            return "it needs CUDA"
        if not self.cuda and on_cuda:
            return ("a CPU variant: on CUDA the gate probes bf16-cuda, 8bit-cuda and 4bit-nf4-bf16-cuda against a "
                    "bfloat16 reference, since float32 copies of the whole model would not fit the GPU (29 GB for a "
                    "7B); run with --device cpu to probe this one")
        return None


def probed_variants(on_cuda: bool) -> tuple[Variant, ...]:
    """The quantization variants a machine probes by default: the CPU ones on CPU, the CUDA ones on CUDA."""
    return tuple(v for v in VARIANTS if v.skip_reason(on_cuda) is None)


def probe_peak_bytes(n_params: float, on_cuda: bool) -> float:
    """The most memory one probe holds, weights only: every variant loads, probes, dequantizes for the merge in
    its own dtype and frees, one model at a time, so the peak is the widest dtype among the probed variants
    and the reference (float32 on CPU, bfloat16 on CUDA)."""
    widest = max([4 if not on_cuda else 2] + [4 if v.dtype == "float32" else 2 for v in probed_variants(on_cuda)])
    return widest * n_params


VARIANTS: tuple[Variant, ...] = (
    Variant("none-fp32", "none", "float32", False),
    Variant("8bit", "8bit", "float32", False),
    Variant("4bit-nf4-fp32", "4bit", "float32", False),
    Variant("4bit-nf4-bf16", "4bit", "bfloat16", False),
    Variant("bf16-cuda", "none", "bfloat16", True),
    Variant("8bit-cuda", "8bit", "bfloat16", True),
    Variant("4bit-nf4-bf16-cuda", "4bit", "bfloat16", True),
)

Over = Literal["one", "feature", "variant", "rate", "baseline", "mcq", "compare"]
"""What the bracket of a claim id ranges over: nothing (a single claim), the text features, the
quantization variants, the regression rates, the gating claims that passed in --baseline, the
multiple-choice sets given with --mcq, or the paired comparisons with the --compare adapter."""
Need = Literal["data", "tokenizer", "model", "answers", "probes", "baseline", "mcq", "judge", "compare"]
"""What computing a family takes: the preference data, the base tokenizer, the loaded model, the
tuned and base answers, the quantization probes (models of their own), a --baseline file, --mcq sets,
a --judge, a --compare adapter."""


PLACEHOLDERS = {"feature": "FEATURE", "variant": "VARIANT", "rate": "RATE", "baseline": "CLAIM", "mcq": "SET",
                "compare": "COMPARISON"}
ABSENT = {"baseline": "no --baseline given: pass the results.json of the last release to compare against it",
          "mcq": "no --mcq given: pass a multiple-choice set (MMLU, ARC, MedQA or PubMedQA layout) to check that "
                 "the adapter did not forget what the base knew",
          "judge": "no --judge given: pass a judge model (a local one, or 'base') or an OpenAI-compatible server URL "
                   "with --judge-model to have tuned and base answers judged",
          "compare": "no --compare given: pass another adapter of the same base (the released one, or a rival "
                     "candidate) to compare this one with it pair by pair"}
"""Why a family that needs an option's input is skipped when the option is left out."""
SET_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True, slots=True)
class Family:
    """One claim family: its id, the claims it makes, and what computing them needs."""

    id: str
    """The claim id, or the part before the bracket for per-item families."""
    over: Over
    gates: bool
    """Whether it fails the run by default (GateConfig.gating); per-item families gate as `id[*]`."""
    needs: frozenset[Need]
    summary: str
    """One line for the docs: what holds when the claim passes."""
    rate: bool = False
    """A headline rate with an interval: `not-lower[id]` checks it against --baseline."""
    validity: bool = False
    """Shown in the validity script's table: a claim the control adapters are meant to fail."""

    @property
    def pattern(self) -> str:
        """How the docs write it: `data-signal[FEATURE]`, `reward-margin`."""
        return self.id if self.over == "one" else f"{self.id}[{PLACEHOLDERS[self.over]}]"

    @property
    def gating_entry(self) -> str:
        """How GateConfig.gating names the whole family."""
        return self.id if self.over == "one" else f"{self.id}[*]"


def _f(id: str, over: Over, gates: bool, needs: str, summary: str, **kw: bool) -> Family:
    return Family(id, over, gates, frozenset(needs.split()), summary, **kw)  # type: ignore[arg-type]


FAMILIES: tuple[Family, ...] = (
    _f("adapter-loads", "one", True, "model",
       "the adapter loads onto its base: every LoRA tensor meets a module, no missing or unexpected keys"),
    _f("adapter-changes-model", "one", True, "model",
       "some LoRA B matrix is non-zero and tuned logits differ from base logits on real prompts", validity=True),
    _f("tokenizer-ready", "one", True, "model",
       "pad token set, left padding, BOS id consistent, exactly one BOS after the chat template"),
    _f("no-nan-logits", "variant", True, "probes", "finite logits on a left-padded batch under this quantization"),
    _f("quantized-agrees", "variant", True, "probes", "top-1 agreement and mean KL against full precision"),
    _f("merged-agrees", "variant", True, "probes", "the adapter merged into the dequantized base agrees with it unmerged"),
    _f("reward-accuracy", "one", True, "model",
       "implicit DPO reward accuracy on the valid split: CI lower bound above the threshold", rate=True,
       validity=True),
    _f("reward-accuracy-per-token", "one", True, "model",
       "the same accuracy with each reward divided by its completion's token count", rate=True, validity=True),
    _f("reward-margin", "one", True, "model", "mean reward margin on the valid split: CI above 0", validity=True),
    _f("data-signal", "feature", False, "data", "chosen and rejected differ in this feature (train split)"),
    _f("data-signal", "one", True, "data", "at least K features differ chosen vs rejected", validity=True),
    _f("tuned-differs", "feature", False, "answers", "tuned and base answers differ in this feature (valid split)"),
    _f("sign-agreement", "feature", False, "answers", "tuned - base moves the same way as chosen - rejected"),
    _f("adapter-changes-answers", "one", False, "answers",
       "a share of the valid-split answers differs from the base model's: CI lower bound above 0"),
    _f("sign-agreement-rate", "one", True, "answers",
       "share of data-signal features that agree is at least the threshold", rate=True, validity=True),
    _f("mcq-accuracy", "mcq", False, "model mcq",
       "the tuned model answers this multiple-choice set above chance (tuned and base accuracy, with intervals)"),
    _f("no-forgetting", "mcq", True, "model mcq",
       "non-inferiority: the one-sided upper bound of tuned's accuracy drop against base is below max_forgetting"),
    _f("judge-win-rate", "one", False, "answers judge",
       "the judge prefers tuned answers to base answers, judged in both orders: win rate CI low above 0.5"),
    _f("judge-length-controlled-win-rate", "one", False, "answers judge",
       "the win rate at zero length difference (a logistic regression on the answers' length difference): CI low "
       "above 0.5"),
    _f("judge-consistency", "one", False, "answers judge",
       "the judge gives the same verdict in both answer orders on at least min_judge_consistency of the pairs"),
    _f("not-worse", "compare", True, "model compare",
       "non-inferiority: the adapter is shown not worse than the --compare adapter, within the comparison's "
       "margin"),
    _f("still-passes", "baseline", True, "baseline", "a gating claim that passed in the baseline passes now"),
    _f("not-lower", "rate", True, "baseline",
       "non-inferiority: a headline rate is shown not to have dropped below the baseline's by more than its margin"),
)

RATES: tuple[str, ...] = tuple(f.id for f in FAMILIES if f.rate)
"""Claims whose value must not fall below the baseline's beyond the two confidence intervals."""


def split_id(claim_id: str) -> tuple[str, str | None]:
    """'data-signal[n_tokens]' -> ('data-signal', 'n_tokens'); 'still-passes[no-nan-logits[8bit]]' keeps the
    inner brackets; 'reward-margin' -> ('reward-margin', None)."""
    head, bracket, rest = claim_id.partition("[")
    return (head, rest[:-1]) if bracket and rest.endswith("]") else (head, None)


def family_of(claim_id: str) -> Family | None:
    """The family that makes this claim id, or None for an id no family makes."""
    head, arg = split_id(claim_id)
    for fam in FAMILIES:
        if fam.id == head and (fam.over == "one") == (arg is None):
            if arg is None or arg == "*" or arg in arguments(fam):
                return fam
            if fam.over == "baseline" and family_of(arg) is not None:
                return fam
            if fam.over == "mcq" and SET_NAME.fullmatch(arg):
                return fam
            if fam.over == "compare" and (arg in COMPARED or (split_id(arg)[0] == "mcq-accuracy" and
                                                              SET_NAME.fullmatch(split_id(arg)[1] or ""))):
                return fam
    return None


def arguments(fam: Family) -> tuple[str, ...]:
    """The bracket values of a per-item family; the baseline's ids and the --mcq set names are known only
    from the options."""
    if fam.over == "feature":
        return FEATURE_NAMES
    if fam.over == "variant":
        return tuple(v.id for v in VARIANTS)
    if fam.over == "rate":
        return RATES
    return ()


COMPARED = ("reward-accuracy", "reward-accuracy-per-token", "reward-margin", "sign-agreement", "judge-win-rate")
"""What `not-worse[...]` compares besides `mcq-accuracy[SET]`: the candidate's value against the other
adapter's on the same items."""


def compared(mcq_sets: tuple[str, ...], judge: bool) -> tuple[str, ...]:
    """The bracket values of `not-worse`: the reward and alignment comparisons, the judge's (with --judge)
    and each --mcq set's."""
    return (*(c for c in COMPARED if judge or c != "judge-win-rate"), *(f"mcq-accuracy[{s}]" for s in mcq_sets))


def claim_ids(fam: Family, mcq_sets: tuple[str, ...] = (), judge: bool = False) -> tuple[str, ...]:
    """Every claim id the family makes, given the --mcq set names and whether a judge runs (the baseline's
    ids, for `still-passes`, are not known here)."""
    if fam.over == "mcq":
        return tuple(f"{fam.id}[{a}]" for a in mcq_sets)
    if fam.over == "compare":
        return tuple(f"{fam.id}[{a}]" for a in compared(mcq_sets, judge))
    return (fam.id,) if fam.over == "one" else tuple(f"{fam.id}[{a}]" for a in arguments(fam))


def default_gating() -> tuple[str, ...]:
    return tuple(dict.fromkeys(f.gating_entry for f in FAMILIES if f.gates))


def check_claim_ids(ids: tuple[str, ...], option: str) -> None:
    """Raise ConfigError naming the closest known id for each id no family makes."""
    known = sorted({f.gating_entry for f in FAMILIES})
    for cid in ids:
        if family_of(cid) is None:
            close = difflib.get_close_matches(cid, known, n=3, cutoff=0.5)
            hint = f"Did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
            raise ConfigError(option, cid, "a claim id or family[*] from the claims registry",
                              f"{hint}Known: {', '.join(known)}.")
