"""One gate run: a list of stages, each computed on first use by the module that owns it.

    inputs (adapter, base, pairs, question sets) -> tokenizer -> model (loaded once) -> answers
      -> features -> statistics -> rewards -> multiple choice -> probes -> claims (registry -> builder)

GateRun only orchestrates: it memoises stages, times them and counts what was recomputed. The
content-addressed cache makes re-runs and new adapters recompute only what changed, and a claim
touches only the stages it needs (data-signal loads no model). Usable without pytest:

    run = GateRun(EvalConfig(adapter=Path("ckpt")))
    for claim in run.all_claims(): print(claim.id, claim.passed, claim.message)
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from . import judge as J
from . import models as M
from . import quantization as Q
from . import regression as R
from .backend import Generation, HFBackend
from .builders import BUILDERS
from .cache import Cache, file_digest
from .chat import accepts_system, prompt_ids
from .claims import Claim, signal_features
from .compare import COMPARE_ADAPTER
from .comparison import Comparison
from .config import EvalConfig
from .data import PairSet, load_pairs
from .errors import ConfigError, ResourceError
from .features import FEATURE_NAMES, FeatureSettings, build_pipeline, feature_table
from .forgetting import ForgettingSummary, measure
from .generation import generate_answers
from .identity import ModelIdentity, base_fingerprint
from .mcq import QuestionSet, load_question_sets, set_names
from .registry import FAMILIES, Variant, check_claim_ids, claim_ids, family_of, split_id
from .rewards import RewardSummary, score_logps, summarize
from .serving import Served, connect, serve_answers
from .stats import FeatureStat, feature_stats, signal_agreement_ci


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """The one loaded model of a run."""

    backend: HFBackend
    report: M.AdapterReport


@dataclass
class Ledger:
    """Seconds per phase and how many results each stage computed (not read from the cache)."""

    timings: dict[str, float] = field(default_factory=dict)
    computed: dict[str, int] = field(default_factory=dict)
    prefix: str = ""
    """Put before every name: the --compare adapter's run writes into its host's ledger as 'compare: ...'."""

    failed: str | None = None
    """The innermost phase an exception left, for messages that name where a run stopped."""

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        except BaseException:
            self.failed = self.failed or self.prefix + name
            raise
        finally:
            key = self.prefix + name
            self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - start

    def count(self, name: str, n: int) -> None:
        self.computed[self.prefix + name] = self.computed.get(self.prefix + name, 0) + n


class GateRun:
    def __init__(self, cfg: EvalConfig, *, cache: Cache | None = None, local_bases: M.LocalBases | None = None,
                 host: GateRun | None = None) -> None:
        self.cfg = cfg
        self.cache = cache or Cache(cfg.cache_dir)
        self.local_bases = local_bases
        self._host = host
        """The run whose loaded model this one borrows (the --compare adapter's run), else None."""
        self.ledger = Ledger() if host is None else Ledger(host.timings, host.computed, "compare: ")
        self.timings, self.computed = self.ledger.timings, self.ledger.computed
        self._model: LoadedModel | None = None
        self._claims: dict[tuple[Any, str | None], list[Claim]] = {}
        self._quant: dict[str, Q.QuantMeasurement] = {}
        self._forgetting: dict[str, ForgettingSummary] = {}
        self._pipeline = functools.cache(functools.partial(build_pipeline, FeatureSettings()))

    # ------------------------------------------------------------------ inputs
    @functools.cached_property
    def spec(self) -> M.CheckpointSpec:
        return M.resolve(self.cfg, self.local_bases)

    @functools.cached_property
    def pairs(self) -> PairSet:
        c = self.cfg
        return load_pairs(c.data, columns=c.columns, split_mode=c.split, valid_fraction=c.valid_fraction, seed=c.seed,
                          max_samples=c.max_samples)

    @functools.cached_property
    def base_fingerprint(self) -> str:
        return base_fingerprint(self.spec.base, self.cache)

    @functools.cached_property
    def adapter_fingerprint(self) -> str:
        return file_digest(M.adapter_weights(self.spec.adapter), self.cache)

    @functools.cached_property
    def tokenizer(self) -> Any:
        return M.load_chat_tokenizer(self.spec.base)

    @functools.cached_property
    def system_ok(self) -> bool:
        return accepts_system(self.tokenizer)

    @functools.cached_property
    def identity(self) -> ModelIdentity:
        c = self.cfg
        return ModelIdentity.of(self.base_fingerprint, self.adapter_fingerprint, c.quant, c.resolved_dtype,
                                c.resolved_device, self.tokenizer.chat_template)

    @property
    def model(self) -> LoadedModel:
        """The base with the adapter, loaded on first use; the adapter's file is checked before the base loads."""
        if self._model is None and self._host is not None:
            host = self._host.model  # the other adapter joins the host's model: one base in memory
            with self.ledger.phase("load"):
                report = M.add_adapter(host.backend.model, self.spec, COMPARE_ADAPTER)
            self._model = LoadedModel(host.backend.with_adapter(COMPARE_ADAPTER), report)
        if self._model is None:
            with self.ledger.phase("load"):
                _ = self.identity
                model, report = M.load_adapted(self.spec, self.cfg.quant, self.cfg.resolved_dtype, self.cfg.resolved_device)
                self._model = LoadedModel(HFBackend(model, self.tokenizer, system_ok=self.system_ok,
                                                    device=self.cfg.resolved_device), report)
        return self._model

    def free(self) -> None:
        """Drop the model (and the --compare run's view of it) and return its memory."""
        self._model = None
        if "other" in self.__dict__:
            self.other._model = None
        Q.free()

    @functools.cached_property
    def other(self) -> GateRun:
        """The --compare adapter as a run of its own on the same pairs and cache, borrowing this run's model;
        refused (ConfigError) unless it was made for the same base weights."""
        if self.cfg.compare is None:
            raise ConfigError("--compare", None, "another adapter of the same base", "not-worse claims need one.")
        other = GateRun(dataclasses.replace(self.cfg, adapter=self.cfg.compare, compare=None, baseline=None),
                        cache=self.cache, local_bases=self.local_bases, host=self)
        if other.base_fingerprint != self.base_fingerprint:
            raise ConfigError("--compare", str(self.cfg.compare), f"an adapter of this run's base ({self.spec.base})",
                              f"It was made for {other.spec.base_declared}; compare adapters of the same base.")
        other.__dict__.update(pairs=self.pairs, tokenizer=self.tokenizer)  # the same data, the same tokenizer
        return other

    @functools.cached_property
    def comparison(self) -> Comparison:
        """This adapter against --compare, paired item by item (not-worse claims)."""
        return Comparison(self)

    @functools.cached_property
    def answers(self) -> dict[str, list[Generation | None]]:
        """Tuned and base answers, from the one loaded model: every valid pair, --train-answers train pairs."""
        prompts, out = [p.messages for p in self.pairs.pairs], {}
        only, settings = self.pairs.answered(self.cfg.train_answers, self.cfg.seed), self.cfg.generation
        for role, identity in (("tuned", self.identity), ("base", self.identity.without_adapter())):
            with self.ledger.phase(f"generate {role}"):
                if self.cfg.serve_url:
                    render = functools.partial(prompt_ids, self.tokenizer, system_ok=self.system_ok)
                    out[role], n = serve_answers(self.served[role], prompts, settings=settings, cache=self.cache,
                                                 desc=f"generate {role} (server)", only=only,
                                                 prompt_ids=render if self.cfg.serve_prompt == "local" else None,
                                                 count_tokens=lambda t: len(self.tokenizer(t)["input_ids"]))
                else:
                    out[role], n = generate_answers(self.model.backend, prompts, model=identity, settings=settings,
                                                    cache=self.cache, desc=f"generate {role}", only=only)
                self.ledger.count(f"generations_{role}", n)
        return out

    @functools.cached_property
    def served(self) -> dict[str, Served]:
        """The --serve-url models that answer instead of the loaded one, checked before any model loads."""
        return connect(self.cfg, self.tokenizer.chat_template)

    def _features(self, texts: dict[str, list[str]], of: str) -> dict[str, np.ndarray]:
        with self.ledger.phase(f"features ({of})"):
            table, n = feature_table([t for r in texts for t in texts[r]], self.cache, self._pipeline,
                                     f"text features ({of})")
        self.ledger.count("feature_rows", n)
        return dict(zip(texts, np.split(table, len(texts))))

    @functools.cached_property
    def data_features(self) -> dict[str, np.ndarray]:
        """{chosen, rejected: [n_pairs, n_features]}: the data alone, no model."""
        ps = self.pairs.pairs
        return self._features({"chosen": [p.chosen for p in ps], "rejected": [p.rejected for p in ps]},
                              "data")

    @functools.cached_property
    def answer_features(self) -> dict[str, np.ndarray]:
        """{tuned, base: [n_pairs, n_features]}."""
        return self._features({r: [g.text if g else None for g in gens] for r, gens in self.answers.items()},
                              "answers")

    def _stats(self, values: dict[str, np.ndarray]) -> list[FeatureStat]:
        g = self.cfg.gate
        return feature_stats(values, [p.split for p in self.pairs.pairs], FEATURE_NAMES, g.correction,
                             ci_level=g.ci_level, n_boot=g.n_bootstrap, rng=np.random.default_rng(self.cfg.seed))

    @functools.cached_property
    def data_stats(self) -> list[FeatureStat]:
        """Per-feature chosen-rejected statistics, from the data alone."""
        return self._stats(self.data_features)

    @functools.cached_property
    def feature_stats(self) -> list[FeatureStat]:
        """Per-feature statistics of all four roles (its chosen-rejected tests equal data_stats')."""
        return self._stats({**self.data_features, **self.answer_features})

    @functools.cached_property
    def agreement_ci(self) -> tuple[float, float]:
        """Bootstrap interval of the sign-agreement rate over the data-signal features (valid split)."""
        g = self.cfg.gate
        return signal_agreement_ci({**self.data_features, **self.answer_features}, [p.split for p in self.pairs.pairs],
                                   FEATURE_NAMES, {s.feature for s in signal_features(self.data_stats, g)}, g.ci_level,
                                   g.n_bootstrap, np.random.default_rng(self.cfg.seed))

    @functools.cached_property
    def reward_summary(self) -> RewardSummary:
        """Implicit rewards on the valid split."""
        valid = [i for i, p in enumerate(self.pairs.pairs) if p.split == "valid"]
        with self.ledger.phase("rewards"):
            logps, n = score_logps(self.model.backend, [self.pairs.pairs[i] for i in valid], model=self.identity,
                                   cache=self.cache, batch_size=self.cfg.batch_size,
                                   max_tokens=self.cfg.resolved_batch_tokens, max_length=self.cfg.max_length)
        self.ledger.count("logps", n)
        g = self.cfg.gate
        return summarize(logps, g.beta, g.ci_level, g.n_bootstrap, np.random.default_rng(self.cfg.seed),
                         tie_tolerance=g.reward_tie_tolerance, pair_ids=[self.pairs.pairs[i].pair_id for i in valid])

    @functools.cached_property
    def question_sets(self) -> dict[str, QuestionSet]:
        """The --mcq sets by claim name, read (and refused with the reason) before any model loads."""
        return load_question_sets(self.cfg.mcq, self.cfg.mcq_columns, self.cfg.mcq_max_questions, self.cfg.seed)

    def forgetting(self, name: str) -> ForgettingSummary:
        """Tuned and base accuracy on one --mcq set, from the one loaded model (adapter toggled), cached."""
        if name not in self._forgetting:
            with self.ledger.phase("multiple choice"):
                self._forgetting[name], n = measure(self.model.backend, self.question_sets[name], self.cfg,
                                                    model=self.identity, cache=self.cache)
            self.ledger.count("mcq_questions", n)
        return self._forgetting[name]

    @functools.cached_property
    def judge(self) -> J.Judge:
        """The --judge, resolved before any model loads (a server is asked whether it serves the model)."""
        return J.make_judge(self.cfg, self.spec, lambda: self.model.backend, self.identity, self.cache,
                            self.local_bases, self.free)

    @functools.cached_property
    def judge_summary(self) -> J.JudgeSummary:
        """Every answered valid pair judged in both orders by --judge; each reply cached."""
        answers, g = self.answers, self.cfg.gate  # answered before a judge model may take the memory
        with self.ledger.phase("judge"):
            summary, n = J.measure(self.judge, self.pairs.pairs, answers, J.load_template(self.cfg.judge_template),
                                   self.cfg.judge_max_tokens, self.cache, g.ci_level, g.n_bootstrap,
                                   np.random.default_rng(self.cfg.seed))
        self.ledger.count("judge_replies", n)
        return summary

    @functools.cached_property
    def probe_inputs(self) -> tuple[Any, Any]:
        """A left-padded batch of real prompts from shortest to longest: uneven padding on purpose."""
        prompts = [p.messages for p in self.pairs.pairs]
        idx = Q.pick_probe_prompts(prompts, [len(prompt_ids(self.tokenizer, m, self.system_ok)) for m in prompts])
        return Q.probe_batch(self.tokenizer, [prompts[i] for i in idx], self.system_ok, self.cfg.resolved_device)

    @functools.cached_property
    def reference_probe(self) -> Q.Probe:
        """Full precision (fp32 on CPU, the compute dtype on CUDA), adapter unmerged."""
        dtype = self.cfg.resolved_dtype if self.cfg.on_cuda else "float32"
        own = self._model is not None and self.cfg.quant == "none" and self.cfg.resolved_dtype == dtype
        return Q.reference_probe(self.spec, dtype, self.cfg.resolved_device, self.probe_inputs,
                                 self._model.backend.model if own and self._model else None)

    def quantization(self, variant: Variant) -> Q.QuantMeasurement:
        """One variant's measurements, cached; probes load models of their own, so the gate's is freed first."""
        if variant.id not in self._quant:
            key = Q.measurement_key(self.identity, variant, self.probe_inputs[0].tolist())
            with self.ledger.phase("quantization"):
                self._quant[variant.id], n = Q.cached_measurement(
                    self.cache, key, lambda: self.reference_probe, self.free, self.spec, variant,
                    self.cfg.resolved_device, self.probe_inputs)
            self.ledger.count("quantization_variants", n)
        return self._quant[variant.id]

    @functools.cached_property
    def baseline(self) -> dict[str, Any]:
        """The --baseline results, refused (ConfigError) unless made on the same data, split and base."""
        if self.cfg.baseline is None:
            raise ConfigError("--baseline", None, "a results.json of an earlier run", "Regression claims need one.")
        return R.load_baseline(self.cfg.baseline, self.base_fingerprint, self.pairs.fingerprint())

    # ------------------------------------------------------------------ claims
    def claim(self, claim_id: str) -> Claim | None:
        """This run's claim with that id, computing only what its family needs; None if not here (CUDA-only)."""
        check_claim_ids((claim_id,), "claim id")
        family, arg = family_of(claim_id), split_id(claim_id)[1]
        assert family is not None
        key = (BUILDERS[family.pattern], arg if family.over in ("variant", "rate", "baseline", "mcq", "compare")
               else None)
        if key not in self._claims:  # a builder makes its whole family (all features) at once
            try:
                self._claims[key] = key[0](self, arg)
            except Exception as e:
                if type(e).__name__ != "OutOfMemoryError":  # torch's, CUDA's or the CPU allocator's
                    raise
                raise out_of_memory(e, self.ledger.failed or f"computing {claim_id}", self.cfg) from None
        return next((c for c in self._claims[key] if c.id == claim_id), None)

    def all_claims(self, quantization: bool = False) -> list[Claim]:
        """Every claim this run can make without a baseline; the quantization probes only when asked."""
        given = {"baseline": False, "probes": quantization, "judge": bool(self.cfg.judge),
                 "compare": self.cfg.compare is not None}
        ids = [cid for f in FAMILIES if all(given.get(n, True) for n in f.needs)
               for cid in claim_ids(f, set_names(self.cfg.mcq), bool(self.cfg.judge))]
        return [c for cid in ids if (c := self.claim(cid)) is not None]

    def sections(self) -> dict[str, Any]:
        """Every stage computed so far, by name (results.json and the bench read these, nothing private)."""
        names = ("spec", "base_fingerprint", "adapter_fingerprint", "pairs", "identity", "answers", "data_stats",
                 "feature_stats", "reward_summary", "judge_summary")
        out = {n: self.__dict__[n] for n in names if n in self.__dict__} | {"forgetting": dict(self._forgetting)}
        if "comparison" in self.__dict__:
            out["comparison"] = self.comparison.section()
        return out


def out_of_memory(e: BaseException, phase: str, cfg: EvalConfig) -> ResourceError:
    """An out-of-memory error as a message: the phase, what was asked and free (from the allocator's own
    words, and the device where it can say), and the options that need less memory."""
    import re

    said = str(e)
    asked = re.search(r"Tried to allocate ([\d.]+ [KMGT]i?B)", said)
    free = re.search(r"of which ([\d.]+ [KMGT]i?B) is free", said)
    where = f"{asked.group(1)} asked" if asked else "an allocation failed"
    if free:
        where += f", {free.group(1)} free"
    elif cfg.on_cuda:
        import torch

        free_b, total_b = torch.cuda.mem_get_info()
        where += f", {free_b / 2**30:.2f} GiB of {total_b / 2**30:.2f} GiB free"
    options = [f"--batch-tokens {max(256, cfg.resolved_batch_tokens // 4)} (scoring and prefill in smaller batches; "
               f"now {cfg.resolved_batch_tokens})",
               f"--batch-size {max(1, cfg.batch_size // 4)} (fewer answers decoding together; now {cfg.batch_size})"]
    if cfg.quant != "4bit":
        options.insert(0, "--quant 4bit (the base's weights in a quarter of the bf16 memory)")
    if "quantization" in phase:
        options.append('-k "not quantization" to leave the quantization probes out, or a --gate gating list '
                       "without their variants")
    return ResourceError(f"out of memory while {phase} on {cfg.resolved_device} ({where}). Options that need less "
                         f"memory: {'; '.join(options)}.")
