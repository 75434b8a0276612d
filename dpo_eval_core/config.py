"""Frozen run and gate configuration, validated once, before any model loads."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, get_args

import tomllib

from .backend import GenerationSettings
from .errors import ConfigError
from .hardware import DtypeChoice, choose_dtype
from .mcq import McqFormat, McqMetric, McqPrompt, McqSettings
from .registry import check_claim_ids, default_gating

Quant = Literal["none", "8bit", "4bit"]
ComputeDtype = Literal["auto", "float32", "bfloat16", "float16"]
SplitMode = Literal["auto", "own", "hash"]
ServePrompt = Literal["local", "server"]
Correction = Literal["none", "bh", "bonferroni"]
Inconclusive = Literal["fail", "warn"]

CACHE_ENV = "DPO_EVAL_CACHE_DIR"
CPU_BATCH_TOKENS = 512
"""Default scoring budget on CPU (rows x longest row): see README "Performance" for the measurement."""
CUDA_BATCH_TOKENS = 16384
"""Default scoring and prefill budget on CUDA: a 7B GQA model in bf16 (14.5 GB of weights) scores 16k
tokens with at most 3 GB of KV cache (the shared prompts and one sub-batch's copy) and about 2.5 GB of
transient activations (README "Performance" has the arithmetic), inside 24 GB."""


def default_cache_dir() -> Path:
    """$DPO_EVAL_CACHE_DIR, else ~/.cache/dpo-eval (never inside the installed package)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "dpo-eval"


def _choice(option: str, value: str, allowed: Any) -> None:
    choices = get_args(allowed)
    if value not in choices:
        raise ConfigError(option, value, "one of " + ", ".join(choices))


@dataclass(frozen=True, slots=True)
class GateConfig:
    """Which claims gate and their thresholds. Command line > file > these defaults."""

    alpha: float = 0.05
    """Significance level of every per-feature Wilcoxon claim, and the one-sided error of every
    non-inferiority ("not worse") decision: it passes when the one-sided (1 - alpha) bound of the drop lies
    inside the margin."""
    inconclusive: Inconclusive = "fail"
    """What a gating claim that the data could not decide does to the run: fail it (default: a PASS must mean
    the data shows the claim) or warn and let the run pass."""
    correction: Correction = "bh"
    """Multiple-comparison correction within a claim family: none, bh (Benjamini-Hochberg), bonferroni."""
    min_signal_features: int = 5
    """K: the data carries signal when at least K features differ chosen vs rejected."""
    min_agreement: float = 0.5
    """sign-agreement-rate passes when the lower bound of its interval is above this share of data-signal
    features: 0.5 is what an adapter that moves answers in no particular direction scores, so a pass shows
    that more features move the data's way than chance would."""
    min_reward_accuracy: float = 0.5
    """Lower CI bound of implicit-reward accuracy (summed and per token) on the valid split must exceed this."""
    beta: float = 0.1
    """DPO beta used to turn log-ratios into rewards (TRL's default)."""
    ci_level: float = 0.95
    """Confidence level of the intervals of the "above a threshold" claims (a lower bound above the threshold
    is a one-sided test at (1 - ci_level) / 2)."""
    n_bootstrap: int = 2000
    """Resamples of the bootstraps over pairs: the sign-agreement rate's and the judge's length-controlled rate's
    intervals, and the report's per-feature intervals (every other interval is exact, score or t)."""
    reward_tie_tolerance: float = 1e-6
    """Log-ratios within this share of |reference log-prob| (at least 1 nat) are ties, not preferences:
    batches of different shapes give log-probs equal only to float precision (~1e-7 relative in fp32)."""
    max_kl: float = 1.0
    """Quantized vs full-precision mean KL (nats) per next-token distribution must stay below this. The
    default catches a broken quantization on a small model (NF4 moves the 135M demo base by up to ~1.1
    nats on its own); tighten it for larger models."""
    min_top1_agreement: float = 0.6
    """Quantized vs full-precision share of positions with the same top-1 token (see max_kl)."""
    min_judge_consistency: float = 0.5
    """judge-consistency fails when fewer of the judged pairs get the same verdict in both answer orders (MT-Bench
    measured 65% for GPT-4 and 46% for GPT-3.5 on its pairs; a judge below half is mostly reading positions)."""
    max_forgetting: float = 0.02
    """Non-inferiority margin of no-forgetting[SET], in accuracy: the tuned model may answer at most this share
    of questions fewer right than the base (two points, what a release team would trade for an alignment
    gain; the leaderboard differences teams act on are a point or two). It passes when the one-sided
    (1 - alpha) upper bound of the drop is below it."""
    max_reward_accuracy_drop: float = 0.02
    """Margin of not-worse[reward-accuracy*] and not-lower[reward-accuracy*], in accuracy: two points of
    held-out preference pairs, the same trade as max_forgetting."""
    max_margin_drop: float = 0.1
    """Margin of not-worse[reward-margin], as a share of the other adapter's |mean margin|: rewards are in
    beta-scaled nats whose size depends on beta and the data, so the margin is relative; a tenth of the
    margin is a change no reviewer reads as a different adapter."""
    max_agreement_drop: float = 0.1
    """Margin of not-worse[sign-agreement] and not-lower[sign-agreement-rate], in share of data-signal features:
    real data has 15 to 60 signal features (16 on UltraFeedback, 58 on the demo), so one feature is 0.02 to
    0.07 of the rate; a tenth is the smallest drop a run can resolve."""
    max_win_rate_drop: float = 0.05
    """Margin of not-worse[judge-win-rate]: the judge's win rate of this adapter against the other may be
    shown no lower than 0.5 minus this (five points: judges disagree with themselves across orders more
    than that)."""
    gating: tuple[str, ...] = field(default_factory=default_gating)
    """Claim ids that fail the run ('family[*]' for every per-item claim of a family); every other
    claim is reported as a non-strict xfail with its measured value. Default: the registry's."""

    def __post_init__(self) -> None:
        for name in ("alpha", "min_agreement", "min_reward_accuracy", "ci_level", "min_top1_agreement",
                     "max_forgetting", "min_judge_consistency", "max_reward_accuracy_drop", "max_margin_drop",
                     "max_agreement_drop", "max_win_rate_drop"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0.0 <= v <= 1.0):
                raise ConfigError(f"gate.{name}", v, "a number in [0, 1]")
        _choice("gate.correction", self.correction, Correction)
        _choice("gate.inconclusive", self.inconclusive, Inconclusive)
        if not 0 < self.alpha < 0.5:
            raise ConfigError("gate.alpha", self.alpha, "a number in (0, 0.5)")
        if not isinstance(self.min_signal_features, int) or self.min_signal_features < 0:
            raise ConfigError("gate.min_signal_features", self.min_signal_features, "an integer >= 0")
        if not isinstance(self.n_bootstrap, int) or self.n_bootstrap < 100:
            raise ConfigError("gate.n_bootstrap", self.n_bootstrap, "an integer >= 100")
        if not (isinstance(self.beta, (int, float)) and self.beta > 0):
            raise ConfigError("gate.beta", self.beta, "a number > 0")
        if not (isinstance(self.reward_tie_tolerance, (int, float)) and 0 <= self.reward_tie_tolerance < 1e-2):
            raise ConfigError("gate.reward_tie_tolerance", self.reward_tie_tolerance, "a number in [0, 0.01)")
        if not (isinstance(self.max_kl, (int, float)) and self.max_kl >= 0):
            raise ConfigError("gate.max_kl", self.max_kl, "a number >= 0")
        check_claim_ids(self.gating, "gate.gating")

    def gates(self, claim_id: str) -> bool:
        """True when a failure of this claim fails the run."""
        family, bracket, _ = claim_id.partition("[")
        return claim_id in self.gating or (bool(bracket) and f"{family}[*]" in self.gating)

    def merged(self, overrides: Mapping[str, Any], source: str) -> "GateConfig":
        """A copy with overrides (a TOML table or KEY=VALUE pairs) applied; unknown keys name the source."""
        known = {f.name: f for f in dataclasses.fields(self)}
        values = {name: getattr(self, name) for name in known}
        for key, raw in overrides.items():
            name = key.replace("-", "_")
            if name not in known:
                raise ConfigError(f"{source}: {key}", raw, "one of " + ", ".join(sorted(known)))
            values[name] = _coerce(f"{source}: {key}", raw, values[name])
        return GateConfig(**values)


def _coerce(option: str, raw: Any, default: Any) -> Any:
    """Turn TOML values or command-line strings into the type of the field's current value."""
    try:
        if isinstance(default, tuple):
            if isinstance(raw, str):
                return tuple(s.strip() for s in raw.split(",") if s.strip())
            return tuple(str(s) for s in raw)
        if isinstance(default, bool):
            return raw if isinstance(raw, bool) else str(raw).lower() in ("1", "true", "yes")
        if isinstance(default, int):
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError(raw)
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        return raw
    except (TypeError, ValueError):
        raise ConfigError(option, raw, f"a value of type {type(default).__name__}") from None


def load_gate_file(path: Path) -> dict[str, Any]:
    """The [tool.dpo_eval] table of a pyproject.toml, or the top level of any other TOML file."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("--gate-config", str(path), "an existing TOML file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("--gate-config", str(path), f"valid TOML ({e})") from None
    if path.name == "pyproject.toml":
        return dict(data.get("tool", {}).get("dpo_eval", {}))
    return dict(data)


@dataclass(frozen=True, slots=True)
class EvalConfig:
    """One gate run: what to load, which data, how to generate, where to write."""

    adapter: Path | None = None
    """PEFT LoRA directory; None gates the bundled demo adapter."""
    base_model: str | None = None
    """Hub id or local directory of the base; None reads it from the adapter config."""
    data: str | None = None
    """Hub dataset id or local .jsonl/.json/.csv/.parquet; None uses the demo pairs."""
    columns: tuple[tuple[str, str], ...] = ()
    """Renames from the file's column names to prompt/chosen/rejected/system/question."""
    split: SplitMode = "auto"
    """auto: the dataset's own train/valid split if it has one, else a seeded hash split."""
    valid_fraction: float = 0.2
    """Share of prompts in the valid split of a hash split."""
    max_samples: int | None = None
    """At most this many pairs per split (deterministic: the first by prompt hash)."""
    quant: Quant = "none"
    """Quantization of the base for generation and rewards."""
    compute_dtype: ComputeDtype = "auto"
    """auto: float32 on CPU, bfloat16 on CUDA."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    batch_size: int = 64
    """Rows per generation or scoring batch, at most."""
    batch_tokens: int | None = None
    """Reward scoring and prompt prefill: a batch holds rows while rows x longest row stays within this many
    tokens (None: CPU_BATCH_TOKENS on CPU, CUDA_BATCH_TOKENS on CUDA)."""
    train_answers: int | None = 64
    """Train-split prompts the models answer (all when None), chosen by seeded hash. Train answers feed only
    the report's tuned-base train averages; every claim uses the valid split, which is always answered."""
    max_new_tokens: int = 96
    """Generation stops at EOS or after this many new tokens."""
    max_length: int = 1024
    """Reward scoring cuts prompt+completion to this many tokens, as TRL's DPOTrainer does (keep_start)."""
    do_sample: bool = False
    """Greedy by default; sampling is seeded by `seed` (and the seed is part of the cache key)."""
    temperature: float = 1.0
    top_p: float = 1.0
    cache_dir: Path = field(default_factory=default_cache_dir)
    """Content-addressed cache of converted models, generations, features and rewards."""
    results: Path = Path("results.json")
    """Where the machine-readable results are written."""
    baseline: Path | None = None
    """results.json of a previous release to compare against."""
    compare: Path | None = None
    """Another PEFT adapter of the same base to compare this one with, pair by pair (not-worse claims)."""
    seed: int = 0
    """Seeds the hash split, sampling and bootstrap."""
    mcq: tuple[str, ...] = ()
    """Multiple-choice sets (files or hub ids) for the forgetting claims; none: they are skipped."""
    mcq_columns: tuple[tuple[str, str], ...] = ()
    """Renames from a set's column names to question/choices/answer/subject/... (mcq.py lists layouts)."""
    mcq_format: McqFormat = "auto"
    """letters: MMLU style, 'A. ..' options and letter continuations; cloze: the choice texts; auto: cloze for
    ARC and PubMedQA layouts, letters for the others (as lm-evaluation-harness's tasks)."""
    mcq_metric: McqMetric = "auto"
    """What no-forgetting gates on: acc, acc_norm, or auto (acc_norm for cloze, acc for letters)."""
    mcq_prompt: McqPrompt = "chat"
    """chat: the question is the user turn of the chat template; raw: plain text, as lm-evaluation-harness."""
    mcq_shots: int = 0
    """Answered examples from the set's dev split before each question (zero-shot by default)."""
    mcq_max_questions: int | None = None
    """At most this many questions per set (the first by seeded hash)."""
    serve_url: str | None = None
    """Answers come from this OpenAI-compatible server (vLLM, llama.cpp, TGI) instead of the loaded model; the
    log-probs of the reward claims stay local. None: local generation."""
    serve_model: str | None = None
    """The served name of the adapter (vLLM: a --lora-modules NAME)."""
    serve_base_model: str | None = None
    """The served name of the base model."""
    serve_prompt: ServePrompt = "local"
    """local: the chat template is applied here and the prompt's token ids are sent to /completions (the same
    prompt as local generation); server: the messages go to /chat/completions and the server's template."""
    serve_concurrency: int = 16
    """Requests in flight at once to the answer server (its own batching does the rest)."""
    serve_timeout: float = 300.0
    """Seconds the answer server may take per answer before the request is retried."""
    serve_key_env: str = "DPO_EVAL_SERVE_API_KEY"
    """Environment variable holding the answer server's API key (sent only to it; none sent if unset)."""
    judge: str | None = None
    """Judges tuned vs base answers: a local model (directory or hub id; 'base' for the gated adapter's base, adapter
    off) or the base URL of an OpenAI-compatible chat-completions server. None: the judge claims are skipped."""
    judge_model: str | None = None
    """The served model name, with a URL --judge."""
    judge_template: Path | None = None
    """A pairwise prompt with {question}, {answer_a} and {answer_b}; None: MT-Bench's, verdict first."""
    judge_max_tokens: int = 16
    """Reply budget of the judge (the default template asks for the verdict first)."""
    judge_concurrency: int = 8
    """Requests in flight at once to a judge server."""
    judge_timeout: float = 60.0
    """Seconds a judge server may take per reply before it is retried."""
    judge_key_env: str = "DPO_EVAL_JUDGE_API_KEY"
    """Environment variable holding the judge server's API key (sent only to that server; none sent if unset)."""
    gate: GateConfig = field(default_factory=GateConfig)
    """Thresholds and which claims gate."""

    def __post_init__(self) -> None:
        _choice("--quant", self.quant, Quant)
        _choice("--compute-dtype", self.compute_dtype, ComputeDtype)
        _choice("--split", self.split, SplitMode)
        if not (0.0 < self.valid_fraction < 1.0):
            raise ConfigError("--valid-fraction", self.valid_fraction, "a number strictly between 0 and 1")
        if self.max_samples is not None and self.max_samples < 1:
            raise ConfigError("--max-samples", self.max_samples, "a positive integer",
                              "Leave it out to use every pair.")
        if self.batch_size < 1:
            raise ConfigError("--batch-size", self.batch_size, "a positive integer")
        if self.batch_tokens is not None and self.batch_tokens < 1:
            raise ConfigError("--batch-tokens", self.batch_tokens, "a positive integer",
                              "Leave it out for the device's default.")
        if self.train_answers is not None and self.train_answers < 0:
            raise ConfigError("--train-answers", self.train_answers, "an integer >= 0 or 'all'")
        if self.max_length < 2:
            raise ConfigError("--max-length", self.max_length, "an integer >= 2")
        if self.max_new_tokens < 1:
            raise ConfigError("--max-new-tokens", self.max_new_tokens, "a positive integer",
                              "An answer of zero tokens has no text features.")
        if not self.temperature > 0:
            raise ConfigError("--temperature", self.temperature, "a number > 0")
        if not 0 < self.top_p <= 1:
            raise ConfigError("--top-p", self.top_p, "a number in (0, 1]")
        if not (self.device in ("auto", "cpu", "cuda") or _is_cuda_index(self.device)):
            raise ConfigError("--device", self.device, "auto, cpu, cuda or cuda:N")
        if self.adapter is not None and not (Path(self.adapter) / "adapter_config.json").is_file():
            raise ConfigError("--adapter", str(self.adapter), "a PEFT adapter directory containing adapter_config.json",
                              "Point --adapter at the folder written by PeftModel.save_pretrained().")
        if self.compare is not None and not (Path(self.compare) / "adapter_config.json").is_file():
            raise ConfigError("--compare", str(self.compare), "a PEFT adapter directory containing "
                              "adapter_config.json", "Point --compare at the other adapter's save_pretrained() folder.")
        if self.baseline is not None and not Path(self.baseline).is_file():
            raise ConfigError("--baseline", str(self.baseline), "an existing results.json of an earlier run")
        names = {src for src, _ in self.columns}
        if len(names) != len(self.columns):
            raise ConfigError("--columns", dict(self.columns), "each source column named once")
        _choice("--mcq-format", self.mcq_format, McqFormat)
        _choice("--mcq-prompt", self.mcq_prompt, McqPrompt)
        _choice("--mcq-metric", self.mcq_metric, McqMetric)
        if self.mcq_shots < 0:
            raise ConfigError("--mcq-shots", self.mcq_shots, "an integer >= 0")
        if self.mcq_max_questions is not None and self.mcq_max_questions < 1:
            raise ConfigError("--mcq-max-questions", self.mcq_max_questions, "a positive integer",
                              "Leave it out to ask every question.")
        if len(set(self.mcq)) != len(self.mcq):
            raise ConfigError("--mcq", list(self.mcq), "each set given once")
        self._check_judge()
        self._check_serve()

    def _check_serve(self) -> None:
        _choice("--serve-prompt", self.serve_prompt, ServePrompt)
        if self.serve_url is None:
            if self.serve_model or self.serve_base_model:
                raise ConfigError("--serve-model", self.serve_model or self.serve_base_model, "no value without "
                                  "--serve-url", "Pass the server's URL with --serve-url.")
            return
        if not self.serve_url.startswith(("http://", "https://")):
            raise ConfigError("--serve-url", self.serve_url, "an http:// or https:// URL, e.g. http://127.0.0.1:8000/v1")
        for option, name in (("--serve-model", self.serve_model), ("--serve-base-model", self.serve_base_model)):
            if not name:
                raise ConfigError(option, name, "the served model name, with --serve-url",
                                  f"List what the server serves: curl {self.serve_url.rstrip('/')}/models")
        if self.compare is not None:
            raise ConfigError("--compare", str(self.compare), "no value with --serve-url",
                              "The other adapter has no served name to ask: compare the two with local generation "
                              "(leave out --serve-url), or gate each against the server on its own.")
        if self.serve_model == self.serve_base_model:
            raise ConfigError("--serve-model", self.serve_model, "the adapter's served name, not the base's",
                              "With vLLM: --lora-modules NAME=ckpt/ and --serve-model NAME.")
        if self.serve_concurrency < 1:
            raise ConfigError("--serve-concurrency", self.serve_concurrency, "a positive integer")
        if not self.serve_timeout > 0:
            raise ConfigError("--serve-timeout", self.serve_timeout, "a number of seconds > 0")

    def _check_judge(self) -> None:
        url = self.judge is not None and self.judge.startswith(("http://", "https://"))
        if url and not self.judge_model:
            raise ConfigError("--judge-model", self.judge_model, "the served model name, with a judge URL",
                              f"List what {self.judge} serves with: curl {self.judge.rstrip('/')}/models")
        if self.judge_model and not url:
            raise ConfigError("--judge-model", self.judge_model, "no value unless --judge is a server URL",
                              "A local judge is named by --judge alone.")
        if self.judge_template is not None and not Path(self.judge_template).is_file():
            raise ConfigError("--judge-template", str(self.judge_template), "an existing text file")
        for option, value in (("--judge-max-tokens", self.judge_max_tokens),
                              ("--judge-concurrency", self.judge_concurrency)):
            if value < 1:
                raise ConfigError(option, value, "a positive integer")
        if not self.judge_timeout > 0:
            raise ConfigError("--judge-timeout", self.judge_timeout, "a number of seconds > 0")

    @property
    def on_cuda(self) -> bool:
        """True when models run on a CUDA device."""
        return self.resolved_device.startswith("cuda")

    @property
    def resolved_device(self) -> str:
        """The device string actually used."""
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    @property
    def dtype_choice(self) -> DtypeChoice:
        """The dtype models run in, and why (auto: bfloat16 on CUDA of compute capability 8+, float32 on CPU)."""
        return choose_dtype(self.compute_dtype, self.resolved_device)

    @property
    def resolved_dtype(self) -> str:
        """The dtype models run in."""
        return self.dtype_choice.dtype

    @property
    def resolved_batch_tokens(self) -> int:
        """The scoring token budget actually used."""
        if self.batch_tokens is not None:
            return self.batch_tokens
        return CUDA_BATCH_TOKENS if self.on_cuda else CPU_BATCH_TOKENS

    @property
    def generation(self) -> GenerationSettings:
        """Everything besides model and prompt that changes an answer."""
        return GenerationSettings(max_new_tokens=self.max_new_tokens, do_sample=self.do_sample,
                                  temperature=self.temperature, top_p=self.top_p, seed=self.seed,
                                  batch_size=self.batch_size, batch_tokens=self.resolved_batch_tokens)

    @property
    def mcq_settings(self) -> McqSettings:
        """How multiple-choice questions become prompts."""
        return McqSettings(self.mcq_format, self.mcq_prompt, self.mcq_shots, self.mcq_max_questions,
                           self.mcq_metric)

    def warnings(self) -> list[str]:
        """Legal but risky combinations the user should hear about."""
        out = []
        if self.quant == "4bit" and self.resolved_dtype == "float16":
            out.append("--quant 4bit with --compute-dtype float16 is a known NaN trap with left padding "
                       "(fully masked rows through sdpa); use bfloat16 on GPU or float32 on CPU.")
        if self.quant != "none" and not self.on_cuda:
            out.append(f"--quant {self.quant} on CPU runs bitsandbytes' slow CPU kernels.")
        return out


def _is_cuda_index(device: str) -> bool:
    head, _, idx = device.partition(":")
    return head == "cuda" and idx.isdigit()


PAIR_COLUMNS = ("prompt", "chosen", "rejected", "system", "question")
MCQ_COLUMNS = ("question", "choices", "answer", "subject", "answerKey", "options", "answer_idx", "contexts",
               "final_decision")


def parse_columns(spec: str, option: str = "--columns", targets: tuple[str, ...] = PAIR_COLUMNS
                  ) -> tuple[tuple[str, str], ...]:
    """'q=prompt,good=chosen,bad=rejected' -> (('q','prompt'), ...); targets are checked."""
    example = "q=prompt,good=chosen,bad=rejected" if targets == PAIR_COLUMNS else "stem=question,label=answer"
    out = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        src, eq, dst = part.partition("=")
        if not eq or not src or dst not in targets:
            raise ConfigError(option, spec, "comma-separated SOURCE=TARGET with TARGET one of "
                              + ", ".join(sorted(targets)), f"Example: {option} {example}")
        out.append((src.strip(), dst.strip()))
    return tuple(out)
