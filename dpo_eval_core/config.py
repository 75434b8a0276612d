"""Frozen run and gate configuration, validated once, before any model loads."""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, get_args

import tomllib

from .backend import GenerationSettings
from .data import parse_columns as parse_columns  # noqa: PLC0414 (the options' parser, re-exported)
from .errors import ConfigError, check_choice, did_you_mean
from .family import Family
from .hardware import DtypeChoice, choose_dtype
from .registry import check_claim_ids, default_gating, discover
from .series import is_series

Quant = Literal["none", "8bit", "4bit", "4bit-dq", "4bit-fp4", "4bit-fp4-dq"]
"""4bit is NF4; -dq adds double quantization (QLoRA's recipe: bnb_4bit_use_double_quant=True); fp4 the FP4 type."""
ComputeDtype = Literal["auto", "float32", "bfloat16", "float16"]
SplitMode = Literal["auto", "own", "hash"]
ServePrompt = Literal["local", "server"]
ServeScoring = Literal["local", "server"]
Correction = Literal["none", "bh", "bonferroni"]
Inconclusive = Literal["fail", "warn"]
Sequential = Literal["auto", "on", "off"]

CACHE_ENV = "DPO_EVAL_CACHE_DIR"
CPU_BATCH_TOKENS = 512
"""Default scoring budget on CPU (rows x longest row): see docs/performance.md for the measurement."""
CUDA_BATCH_TOKENS = 16384
"""Default scoring and prefill budget on CUDA: a 7B GQA model in bf16 (14.5 GB of weights) scores 16k
tokens with at most 3 GB of KV cache (the shared prompts and one sub-batch's copy) and about 2.5 GB of
transient activations (docs/performance.md has the arithmetic), inside 24 GB."""


def default_cache_dir() -> Path:
    """$DPO_EVAL_CACHE_DIR, else ~/.cache/dpo-eval (never inside the installed package)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "dpo-eval"


def _choice(option: str, value: str, allowed: Any) -> None:
    check_choice(option, value, get_args(allowed))


@dataclass(frozen=True, slots=True)
class GateConfig:
    """Which claims gate and their thresholds. Command line > file > these defaults."""

    alpha: float = 0.05
    """Significance level of every per-feature Wilcoxon claim (two-sided, corrected within its family). The
    "shown to hold" decisions run at `tail`, from ci_level."""
    inconclusive: Inconclusive = "fail"
    """What a gating claim that the data could not decide does to the run: fail it (default: a PASS must mean
    the data shows the claim) or warn and let the run pass."""
    correction: Correction = "bh"
    """Multiple-comparison correction within a claim family: none, bh (Benjamini-Hochberg), bonferroni."""
    ci_level: float = 0.95
    """The "shown to hold" decisions on an adapter (above a threshold, not worse by more than a margin) spend a
    one-sided (1 - ci_level) / 2 = 0.025 (the ICH E9 convention) across its looks: 0.02 at the first run, 0.0025
    at a run on more or other data (looks.py); each run's intervals are printed at its look's level."""
    sequential: Sequential = "auto"
    """Score a stage's items (valid pairs, each set's questions) in a seeded order, in rounds of ..., N/4, N/2 and
    all N items, and stop once its gating claims are decided, each round deciding at its share of the look's error
    (sequential.py): auto where a stage has two rounds or more and nothing is compared with another adapter or a
    baseline; on (refused with --compare or --baseline); off: every item at once."""
    max_items: int | None = None
    """Score at most this many items per sequential stage: the rounds past it wait (their claims stay open), and a
    re-run with a larger cap continues the same rounds at the same shares (the cache has the items; it is the
    same look). None: up to every item."""
    first_round: int = 64
    """Fewest items in a sequential stage's first round (rounds halve back from every item while they keep this
    many)."""
    n_bootstrap: int = 2000
    """Resamples of the bootstraps over pairs: the sign-agreement rate's and the judge's length-controlled rate's
    intervals, and the report's per-feature intervals (every other interval is exact, score or t)."""
    gating: tuple[str, ...] = field(default_factory=lambda: default_gating(installed()))
    """Claim ids that fail the run ('family[*]' for every per-item claim of a family); every other
    claim is reported as a non-strict xfail with its measured value. Default: each kind's own `gates`. Setting it
    replaces the list (the summary says so); `gating+` adds to it: `--gate gating+=judge-win-rate`."""

    def __post_init__(self) -> None:
        for name in ("alpha", "ci_level"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0.0 <= v <= 1.0):
                raise ConfigError(f"gate.{name}", v, "a number in [0, 1]")
        _choice("gate.correction", self.correction, Correction)
        _choice("gate.inconclusive", self.inconclusive, Inconclusive)
        _choice("gate.sequential", self.sequential, Sequential)
        if not isinstance(self.first_round, int) or self.first_round < 1:
            raise ConfigError("gate.first_round", self.first_round, "a positive integer")
        if self.max_items is not None and (not isinstance(self.max_items, int) or self.max_items < 1):
            raise ConfigError("gate.max_items", self.max_items, "a positive integer", "Leave it out to score every item.")
        if not 0 < self.alpha < 0.5:
            raise ConfigError("gate.alpha", self.alpha, "a number in (0, 0.5)")
        if not isinstance(self.n_bootstrap, int) or self.n_bootstrap < 100:
            raise ConfigError("gate.n_bootstrap", self.n_bootstrap, "an integer >= 100")
        check_claim_ids(installed(), self.gating, "gate.gating")

    sizing_level: float | None = field(default=None, metadata={"internal": True})
    """Not an option: the level at which an inconclusive claim's `n_needed` is sized, the next look's (set with
    this look's ci_level by GateRun.gate; None: ci_level)."""

    @property
    def tail(self) -> float:
        """The one-sided error of every "shown to hold" decision: (1 - ci_level) / 2."""
        return (1 - self.ci_level) / 2

    @property
    def sized_at(self) -> float:
        """The two-sided level whose 80%-power sizes an inconclusive claim reports (the next look's)."""
        return self.ci_level if self.sizing_level is None else self.sizing_level

    def gating_record(self) -> dict[str, Any]:
        """How `gating` differs from the default list: for results.json and the summary, so that a list set to
        one claim cannot shrink the gate silently."""
        default = default_gating(installed())
        return {"entries": len(self.gating), "default_entries": len(default), "replaced": set(self.gating) !=
                set(default), "added": [g for g in self.gating if g not in default],
                "left_out": [g for g in default if g not in self.gating]}

    def gates(self, claim_id: str) -> bool:
        """True when a failure of this claim fails the run."""
        family, bracket, _ = claim_id.partition("[")
        return claim_id in self.gating or (bool(bracket) and f"{family}[*]" in self.gating)


@functools.cache
def installed() -> tuple[Family, ...]:
    """The claim families of this installation (registry.discover), looked up once per process."""
    return discover()


FamilySettings = tuple[tuple[str, Any], ...]
"""(family name, its settings) for every installed family, in the registry's order."""


def family_settings(given: Mapping[str, Any] | FamilySettings = ()) -> FamilySettings:
    """Every installed family's settings: those given (a settings object or a mapping of its fields), the rest
    at their defaults; an unknown family name is refused with the known ones."""
    given = dict(given)
    out = []
    for family in installed():
        value = given.pop(family.name, None)
        if value is None:
            value = family.settings()
        elif isinstance(value, Mapping):
            value = _replace(family, family.settings(), value, f"families.{family.name}")
        out.append((family.name, value))
    if given:
        raise ConfigError("families", sorted(given), "names of installed claim families: "
                          + ", ".join(f.name for f in installed()))
    return tuple(out)


def _replace(family: Family, settings: Any, changes: Mapping[str, Any], source: str) -> Any:
    fields = family.fields()
    values = {}
    for key, raw in changes.items():
        name = key.replace("-", "_")
        if name not in fields:
            raise ConfigError(f"{source}.{key}", raw, f"a setting of the {family.name} family: "
                              + (", ".join(fields) or "it has none"), did_you_mean(name, fields))
        values[name] = _coerce_field(f"{source}.{key}", raw, fields[name], getattr(settings, name))
    return dataclasses.replace(settings, **values)


def _coerce_field(option: str, raw: Any, f: dataclasses.Field, current: Any) -> Any:
    """A TOML value or command-line string as the field's type (read from its default, or its annotation
    when the default is None)."""
    if current is not None:
        return _coerce(option, raw, current)
    hint = str(f.type)
    try:
        if raw is None or not isinstance(raw, str):
            return raw
        if "Path" in hint:
            return Path(raw).expanduser()
        if "int" in hint:
            return int(raw)
        if "float" in hint:
            return float(raw)
        return raw
    except ValueError:
        raise ConfigError(option, raw, f"a value of type {hint}") from None


def gate_keys() -> tuple[dataclasses.Field, ...]:
    """GateConfig's fields that a user sets (--gate KEY=VALUE, the pyproject table)."""
    return tuple(f for f in dataclasses.fields(GateConfig) if not f.metadata.get("internal"))


def merge_tables(gate: GateConfig, families: FamilySettings, table: Mapping[str, Any], source: str
                 ) -> tuple[GateConfig, FamilySettings, list[str]]:
    """Apply a gate table (TOML `[tool.dpo_eval]` with a sub-table per family, or --gate KEY=VALUE pairs where
    KEY may be `family.setting`) to the shared gate settings and the families' settings. A flat key that names
    a family's setting (the layout before families had tables) still works, with a deprecation note among the
    returned messages."""
    shared = {f.name: f for f in gate_keys()}
    by_name = {f.name: f for f in installed()}
    gate_values: dict[str, Any] = {}
    changes: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    added: tuple[str, ...] = ()
    for key, raw in table.items():
        name = key.replace("-", "_")
        head, dot, rest = key.partition(".")
        if name.replace(" ", "") == "gating+":  # --gate gating+=ID, or "gating+" = [...] in a table
            added += _coerce(f"{source}: {key}", raw, ())
        elif key in by_name and isinstance(raw, Mapping):
            changes.setdefault(key, {}).update(raw)
        elif dot and head in by_name:
            changes.setdefault(head, {})[rest] = raw
        elif name in shared:
            gate_values[name] = _coerce(f"{source}: {key}", raw, getattr(gate, name))
        elif owners := [f for f in installed() if name in f.fields()]:
            owner = owners[0].name
            changes.setdefault(owner, {})[name] = raw
            where = (f"--gate {owner}.{name}=..." if source == "--gate" else
                     f"[tool.dpo_eval.{owner}] {name} = ..." if source.endswith("pyproject.toml") else
                     f"[{owner}] {name} = ...")
            notes.append(f"{source}: {key} is a setting of the {owner} family now: write it as {where}; the flat "
                         f"key is still read, and will not be in a later version")
        else:
            known = [*shared, "gating+", *(f"{f}.{s}" for f in by_name for s in by_name[f].fields())]
            raise ConfigError(f"{source}: {key}", raw, "a gate setting (" + ", ".join(sorted(shared)) + ", or "
                              "gating+ to add to gating) or a family's table or FAMILY.SETTING (families: "
                              + ", ".join(by_name) + ")", did_you_mean(name, known))
    if added:
        base = gate_values.get("gating", gate.gating)
        gate_values["gating"] = base + tuple(a for a in added if a not in base)
    values = {f: getattr(gate, f) for f in shared} | gate_values
    current = dict(families)
    for name, ch in changes.items():
        current[name] = _replace(by_name[name], current[name], ch, f"{source}: {name}")
    return GateConfig(**values), tuple(current.items()), notes


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
    looks: Path | None = None
    """The ledger that counts the gate's looks on each adapter (looks.py): each run on other inputs decides at a
    smaller share of the one-sided error. None: looks.json in the cache directory (CI with a fresh cache keeps it
    elsewhere, with its baseline)."""
    seed: int = 0
    """Seeds the hash split, sampling and bootstrap."""
    serve_url: str | None = None
    """Answers come from this OpenAI-compatible server (vLLM, llama.cpp, TGI) instead of the loaded model, or from
    several replicas of it (their URLs separated by commas, requests spread over them); log-probs too with
    serve_scoring server. None: local generation."""
    serve_model: str | None = None
    """The served name of the adapter (vLLM: a --lora-modules NAME)."""
    serve_base_model: str | None = None
    """The served name of the base model."""
    serve_prompt: ServePrompt = "local"
    """local: the chat template is applied here and the prompt's token ids are sent to /completions (the same
    prompt as local generation); server: the messages go to /chat/completions and the server's template."""
    serve_scoring: ServeScoring = "local"
    """local: the reward and multiple-choice log-probs come from the local model (float32 on CPU, equal to
    TRL's); server: from --serve-url too (policy from the adapter's served name, reference from the base's),
    the gate's own tokens scored (sent as token ids, or as their text to a server that takes only text), so
    the gate needs no local model for them."""
    serve_check: int = 0
    """With serve_scoring server: score this many valid pairs with the local model too, and stop the run when the
    server's log-probs differ beyond scoring.RELATIVE * |log-prob| + scoring.ABSOLUTE (0: no check, no local
    model)."""
    serve_concurrency: int = 16
    """Requests in flight at once to the answer server (its own batching does the rest)."""
    serve_timeout: float = 300.0
    """Seconds the answer server may take per answer before the request is retried."""
    serve_key_env: str = "DPO_EVAL_SERVE_API_KEY"
    """Environment variable holding the answer server's API key (sent only to it; none sent if unset)."""
    gate: GateConfig = field(default_factory=GateConfig)
    """The decision settings every family shares, and which claims gate."""
    families: Any = ()
    """Each claim family's settings (its options and thresholds): a mapping of family name to a settings object
    or a mapping of its fields; stored as (name, settings) for every installed family, defaults filled in."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "families", family_settings(self.families))
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
        if self.adapter is not None and not (Path(self.adapter) / "adapter_config.json").is_file() and not is_series(
                self.adapter):
            raise ConfigError("--adapter", str(self.adapter), "a PEFT adapter directory containing adapter_config.json, "
                              "or a training run's directory with checkpoint-* directories in it",
                              "Point --adapter at the folder written by PeftModel.save_pretrained(), or at the "
                              "Trainer's output_dir.")
        names = {src for src, _ in self.columns}
        if len(names) != len(self.columns):
            raise ConfigError("--columns", dict(self.columns), "each source column named once")
        self._check_serve()

    @property
    def serve_urls(self) -> tuple[str, ...]:
        """The --serve-url replicas (one URL, or several separated by commas)."""
        return tuple(u.strip() for u in (self.serve_url or "").split(",") if u.strip())

    def settings_of(self, family: Family | str) -> Any:
        """A family's settings (its frozen dataclass)."""
        name = family if isinstance(family, str) else family.name
        return next(s for n, s in self.families if n == name)

    def with_settings(self, family: str, **changes: Any) -> "EvalConfig":
        """A copy with some of one family's settings changed."""
        return dataclasses.replace(self, families={**dict(self.families), family: dataclasses.replace(
            self.settings_of(family), **changes)})

    def without(self, *families: str) -> "EvalConfig":
        """A copy with these families' settings back at their defaults (the --compare adapter's own run makes
        no comparison and reads no baseline)."""
        return dataclasses.replace(self, families={n: s for n, s in self.families if n not in families})

    def _check_serve(self) -> None:
        _choice("--serve-prompt", self.serve_prompt, ServePrompt)
        _choice("--serve-scoring", self.serve_scoring, ServeScoring)
        if self.serve_check < 0 or (self.serve_check and self.serve_scoring != "server"):
            raise ConfigError("--serve-check", self.serve_check, "a number of pairs >= 0, with --serve-scoring server")
        if self.serve_scoring == "server" and self.serve_url is None:
            raise ConfigError("--serve-scoring", self.serve_scoring, "local without --serve-url",
                              "Pass the server's URL with --serve-url, or leave --serve-scoring out.")
        if self.serve_url is None:
            if self.serve_model or self.serve_base_model:
                raise ConfigError("--serve-model", self.serve_model or self.serve_base_model, "no value without "
                                  "--serve-url", "Pass the server's URL with --serve-url.")
            return
        for url in self.serve_urls:
            if not url.startswith(("http://", "https://")):
                raise ConfigError("--serve-url", url, "an http:// or https:// URL, e.g. http://127.0.0.1:8000/v1, or "
                                  "several replicas' URLs separated by commas")
        for option, name in (("--serve-model", self.serve_model), ("--serve-base-model", self.serve_base_model)):
            if not name:
                raise ConfigError(option, name, "the served model name, with --serve-url",
                                  f"List what the server serves: curl {self.serve_url.rstrip('/')}/models")
        if self.serve_model == self.serve_base_model:
            raise ConfigError("--serve-model", self.serve_model, "the adapter's served name, not the base's",
                              "With vLLM: --lora-modules NAME=ckpt/ and --serve-model NAME.")
        if self.serve_concurrency < 1:
            raise ConfigError("--serve-concurrency", self.serve_concurrency, "a positive integer")
        if not self.serve_timeout > 0:
            raise ConfigError("--serve-timeout", self.serve_timeout, "a number of seconds > 0")

    @property
    def on_cuda(self) -> bool:
        """True when models run on a CUDA device."""
        return self.resolved_device.startswith("cuda")

    @property
    def looks_path(self) -> Path:
        """Where the ledger of looks is: `looks`, or looks.json in the cache directory."""
        return Path(self.looks) if self.looks is not None else Path(self.cache_dir) / "looks.json"

    @property
    def resolved_device(self) -> str:
        """The device string actually used."""
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    @property
    def dtype_choice(self) -> DtypeChoice:
        """The dtype models run in, the one their weights load in, and why (hardware.choose_dtype)."""
        return choose_dtype(self.compute_dtype, self.resolved_device, self.quant)

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

    def warnings(self) -> list[str]:
        """Legal but risky combinations the user should hear about."""
        out = []
        if self.quant.startswith("4bit") and self.resolved_dtype == "float16":
            out.append("--quant 4bit with --compute-dtype float16 is a known NaN trap with left padding "
                       "(fully masked rows through sdpa); use bfloat16 on GPU or float32 on CPU.")
        if self.quant != "none" and not self.on_cuda:
            out.append(f"--quant {self.quant} on CPU runs bitsandbytes' slow CPU kernels.")
        return out


def _is_cuda_index(device: str) -> bool:
    head, _, idx = device.partition(":")
    return head == "cuda" and idx.isdigit()
