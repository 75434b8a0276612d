"""One gate run: pairs -> model (loaded once) -> answers -> features -> statistics -> claims.

Every step is computed on first use and memoised on the run; the content-addressed cache
makes re-runs and new adapters recompute only what changed. Usable without pytest:

    run = GateRun(EvalConfig(adapter=Path("ckpt")))
    for claim in run.all_claims(): print(claim.id, claim.passed, claim.message)
"""

from __future__ import annotations

import functools
import hashlib
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from . import claims as C
from . import regression as R
from .backend import Generation, GenerationSettings, HFBackend
from .cache import Cache, file_digest, make_key
from .chat import accepts_system, leading_bos_count, prompt_ids, require_chat_template
from .config import EvalConfig
from .data import PairSet, load_pairs
from .demo import demo_data_path
from .errors import ConfigError
from .features import FEATURE_NAMES, FeatureSettings, feature_rows
from .models import (
    AdapterReport,
    CheckpointSpec,
    adapter_weights,
    attach_adapter,
    load_base,
    load_tokenizer,
    resolve,
    weights_files,
)
from .quantization import (
    PROBE_VERSION,
    VARIANTS,
    Probe,
    Variant,
    agreement,
    pick_probe_prompts,
    probe_batch,
    run_probe,
)
from .quantization import free as free_models
from .results import library_versions, load_results
from .rewards import RewardSummary, score_logps, summarize
from .stats import ROLES, FeatureStat, agreement_rate_ci, differences, feature_stats


def _nan_to_none(values: list[Any]) -> list[Any]:
    """JSON has no NaN: a cached measurement stores None in its place."""
    return [None if isinstance(v, float) and math.isnan(v) else v for v in values]


@dataclass
class Loaded:
    """The one loaded model of a run."""

    backend: HFBackend
    report: AdapterReport
    model_key: dict[str, Any]


class GateRun:
    def __init__(self, cfg: EvalConfig, *, cache: Cache | None = None) -> None:
        self.cfg = cfg
        self.cache = cache or Cache(cfg.cache_dir)
        self.timings: dict[str, float] = {}
        self.computed: dict[str, int] = {}
        self._loaded: Loaded | None = None
        self._quant: dict[str, list[C.Claim]] = {}

    def _timed(self, name: str, start: float) -> None:
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start

    # ------------------------------------------------------------------ inputs
    @functools.cached_property
    def spec(self) -> CheckpointSpec:
        return resolve(self.cfg)

    @functools.cached_property
    def base_fingerprint(self) -> str:
        """sha256 over the base's weight files (memoised by path, size and mtime), without loading it."""
        files = weights_files(self.spec.base)
        return hashlib.sha256("".join(file_digest(f, self.cache) for f in files).encode()).hexdigest() \
            if files else f"hub:{self.spec.base}"

    @functools.cached_property
    def adapter_fingerprint(self) -> str:
        """sha256 of the adapter's weights file, hashed once per run."""
        return file_digest(adapter_weights(self.spec.adapter), self.cache)

    @functools.cached_property
    def data_source(self) -> str:
        return self.cfg.data or str(demo_data_path(self.cfg.cache_dir))

    @functools.cached_property
    def pairs(self) -> PairSet:
        c = self.cfg
        return load_pairs(self.data_source, columns=c.columns, split_mode=c.split, valid_fraction=c.valid_fraction,
                          seed=c.seed, max_samples=c.max_samples)

    @functools.cached_property
    def settings(self) -> GenerationSettings:
        c = self.cfg
        return GenerationSettings(max_new_tokens=c.max_new_tokens, do_sample=c.do_sample, temperature=c.temperature,
                                  top_p=c.top_p, seed=c.seed, batch_size=c.batch_size)

    # ------------------------------------------------------------------ model
    @functools.cached_property
    def tokenizer(self) -> Any:
        """The base's tokenizer, ready for batched generation; loading it does not load the model."""
        tokenizer = load_tokenizer(self.spec.base)
        require_chat_template(tokenizer, self.spec.base)
        return tokenizer

    @functools.cached_property
    def system_ok(self) -> bool:
        return accepts_system(self.tokenizer)

    @property
    def loaded(self) -> Loaded:
        if self._loaded is None:
            start = time.perf_counter()
            self._loaded = self._load()
            self._timed("load", start)
        return self._loaded

    def _load(self) -> Loaded:
        spec, cfg = self.spec, self.cfg
        adapter_fp = self.adapter_fingerprint  # a missing or unsafe weights file fails before the base loads
        tokenizer = self.tokenizer
        model = load_base(spec.base, cfg.quant, cfg.resolved_dtype, cfg.resolved_device)
        peft_model, report = attach_adapter(model, spec)
        key = {"base": self.base_fingerprint, "adapter": adapter_fp, "quant": cfg.quant,
               "dtype": cfg.resolved_dtype, "device": cfg.resolved_device.split(":")[0],
               "chat_template": hashlib.sha256(str(tokenizer.chat_template).encode()).hexdigest()}
        backend = HFBackend(peft_model, tokenizer, system_ok=self.system_ok, device=cfg.resolved_device)
        return Loaded(backend, report, key)

    def free(self) -> None:
        """Drop the model and return its memory."""
        self._loaded = None
        free_models()

    # ------------------------------------------------------------------ method
    @functools.cached_property
    def prompt_lengths(self) -> list[int]:
        """Templated prompt lengths in tokens (batches group similar lengths)."""
        return [len(prompt_ids(self.tokenizer, p.messages, self.system_ok)) for p in self.pairs.pairs]

    @functools.cached_property
    def answers(self) -> dict[str, list[Generation]]:
        """Tuned and base answers for every pair, from the one loaded model."""
        start = time.perf_counter()
        prompts = [p.messages for p in self.pairs.pairs]
        out = {}
        for role, adapter in (("tuned", True), ("base", False)):
            out[role], n = self._generate(prompts, adapter, role)
            self.computed[f"generations_{role}"] = n
        self._timed("generate", start)
        return out

    def _generate(self, prompts: list, adapter: bool, role: str) -> tuple[list[Generation], int]:
        from .generation import generate_answers

        return generate_answers(self.loaded.backend, prompts, adapter=adapter, settings=self.settings,
                                cache=self.cache, model_key=self.loaded.model_key, lengths=self.prompt_lengths,
                                desc=f"generate {role}")

    @functools.cached_property
    def features(self) -> tuple[list[str], dict[str, np.ndarray]]:
        """(feature names, {role: [n_pairs, n_features]}) for chosen, rejected, tuned and base texts."""
        answers = self.answers
        start = time.perf_counter()
        texts = {"chosen": [p.chosen for p in self.pairs.pairs], "rejected": [p.rejected for p in self.pairs.pairs],
                 "tuned": [g.text for g in answers["tuned"]], "base": [g.text for g in answers["base"]]}
        flat = [t for r in ROLES for t in texts[r]]
        with tqdm(total=len(set(flat)), desc="text features", unit="text", leave=False) as bar:
            rows, n = feature_rows(flat, self.cache, FeatureSettings(), progress=bar.update)
        self.computed["feature_rows"] = n
        names = list(FEATURE_NAMES)
        matrix = np.array([[r[k] for k in names] for r in rows], dtype=float)
        n_pairs = len(self.pairs.pairs)
        out = {role: matrix[i * n_pairs:(i + 1) * n_pairs] for i, role in enumerate(ROLES)}
        self._timed("features", start)
        return names, out

    @functools.cached_property
    def feature_stats(self) -> list[FeatureStat]:
        names, values = self.features
        g = self.cfg.gate
        return feature_stats(values, [p.split for p in self.pairs.pairs], names, g.correction, ci_level=g.ci_level,
                             n_boot=g.n_bootstrap, rng=np.random.default_rng(self.cfg.seed))

    @functools.cached_property
    def agreement_ci(self) -> tuple[float, float]:
        """Bootstrap interval of the sign-agreement rate over the data-signal features (valid split)."""
        names, values = self.features
        signal = {s.feature for s in C.signal_features(self.feature_stats, self.cfg.gate)}
        cols = [j for j, n in enumerate(names) if n in signal]
        valid = np.array([p.split == "valid" for p in self.pairs.pairs])
        d_cr, d_tb = differences(values)
        g = self.cfg.gate
        return agreement_rate_ci(d_cr[valid][:, cols], d_tb[valid][:, cols], g.ci_level, g.n_bootstrap,
                                 np.random.default_rng(self.cfg.seed))

    @functools.cached_property
    def reward_summary(self) -> RewardSummary:
        """Implicit rewards on the valid split."""
        start = time.perf_counter()
        valid = [i for i, p in enumerate(self.pairs.pairs) if p.split == "valid"]
        pairs = [self.pairs.pairs[i] for i in valid]
        logps, n = score_logps(self.loaded.backend, pairs, cache=self.cache, model_key=self.loaded.model_key,
                               batch_size=self.cfg.batch_size, lengths=[self.prompt_lengths[i] for i in valid],
                               max_length=self.cfg.max_length)
        self.computed["logps"] = n
        g = self.cfg.gate
        self._timed("rewards", start)
        return summarize(logps, g.beta, g.ci_level, g.n_bootstrap, np.random.default_rng(self.cfg.seed))

    # ------------------------------------------------------------------ checkpoint and quantization
    @functools.cached_property
    def probe_prompts(self) -> list:
        """A few real prompts from shortest to longest: uneven left padding on purpose."""
        idx = pick_probe_prompts([p.messages for p in self.pairs.pairs], self.prompt_lengths)
        return [self.pairs.pairs[i].messages for i in idx]

    def _probe_inputs(self, device: str) -> tuple[Any, Any]:
        return probe_batch(self.tokenizer, self.probe_prompts, self.system_ok, device)

    @functools.cached_property
    def adapter_effect(self) -> tuple[float, float]:
        """(max |tuned - base| logit, share of positions whose top-1 token changed) on the probe batch."""
        import torch

        b = self.loaded.backend
        ids, mask = self._probe_inputs(self.cfg.resolved_device)
        with torch.inference_mode():
            tuned = b.model(input_ids=ids, attention_mask=mask).logits[mask.bool()].float()
            with b.model.disable_adapter():
                base = b.model(input_ids=ids, attention_mask=mask).logits[mask.bool()].float()
        return float((tuned - base).abs().max()), float((tuned.argmax(-1) != base.argmax(-1)).float().mean())

    def _probe_variant(self, quant: str, dtype: str, name: str) -> tuple[Probe, Probe]:
        """(unmerged, merged) probes of the base quantized as asked with the adapter.

        The merged model is what serving a QLoRA adapter uses: a quantized base is dequantized first
        and the adapter merged with safe_merge, since merging into 4-bit weights would re-round them.
        """
        inputs = self._probe_inputs(self.cfg.resolved_device)
        model, _ = attach_adapter(load_base(self.spec.base, quant, dtype, self.cfg.resolved_device), self.spec)
        unmerged = run_probe(model, *inputs, name)
        if quant != "none":  # a fresh load: dequantizing the unloaded model gave other weights (demo, NF4)
            del model
            free_models()
            model, _ = attach_adapter(load_base(self.spec.base, quant, dtype, self.cfg.resolved_device).dequantize(),
                                      self.spec)
        merged = run_probe(model.merge_and_unload(safe_merge=True), *inputs, f"{name}-merged")
        return unmerged, merged

    @functools.cached_property
    def _reference_probe(self) -> Probe:
        """Full precision (fp32 on CPU, the compute dtype on CUDA), adapter unmerged: the gate's own
        model when it was loaded that way, else one loaded for the purpose."""
        dtype = "float32" if not self.cfg.on_cuda else self.cfg.resolved_dtype
        if self._loaded is not None and self.cfg.quant == "none" and self.cfg.resolved_dtype == dtype:
            return run_probe(self._loaded.backend.model, *self._probe_inputs(self.cfg.resolved_device), "reference")
        model, _ = attach_adapter(load_base(self.spec.base, "none", dtype, self.cfg.resolved_device), self.spec)
        probe = run_probe(model, *self._probe_inputs(self.cfg.resolved_device), "reference")
        del model
        free_models()
        return probe

    def quantization_claims(self, variant: Variant) -> list[C.Claim]:
        """Claims for one quantization variant; each model is loaded, probed and freed in turn.

        The measurements are cached, keyed by base and adapter digests, the variant, the device,
        the probe token ids, the probe code's version and the versions of the libraries that do the arithmetic."""
        if variant.id not in self._quant:
            start = time.perf_counter()
            ids, _ = self._probe_inputs("cpu")
            versions = library_versions()
            key = make_key("quantization", {
                "base": self.base_fingerprint, "adapter": self.adapter_fingerprint,
                "quant": variant.quant, "dtype": variant.dtype, "device": self.cfg.resolved_device.split(":")[0],
                "probe": ids.tolist(), "probe_version": PROBE_VERSION,
                "libraries": {k: versions[k] for k in ("torch", "transformers", "peft", "bitsandbytes")}})
            measured = self.cache.get("quantization", key)
            if measured is None:
                _ = self._reference_probe  # from the loaded model, before it is freed
                self.free()  # probes load models of their own: never hold two copies at once
                measured = _nan_to_none(self._measure_quantization(variant))
                self.cache.put("quantization", key, measured)
                self.computed["quantization_variants"] = self.computed.get("quantization_variants", 0) + 1
            finite, first_bad, *numbers = measured
            self._quant[variant.id] = C.quantization(variant.id, finite, first_bad,
                                                     *(math.nan if x is None else x for x in numbers), self.cfg.gate)
            self._timed("quantization", start)
        return self._quant[variant.id]

    def _measure_quantization(self, variant: Variant) -> list[Any]:
        """[finite, first non-finite module, top-1, KL, merged top-1, merged KL] for one variant."""
        reference = self._reference_probe
        probe, merged = self._probe_variant(variant.quant, variant.dtype, variant.id)
        free_models()
        return [probe.finite, probe.first_nonfinite_module, *agreement(reference, probe), *agreement(probe, merged)]

    # ------------------------------------------------------------------ claims
    def checkpoint_claims(self) -> list[C.Claim]:
        b, report = self.loaded.backend, self.loaded.report
        tok = b.tokenizer
        ids = b.prompt_ids(self.probe_prompts[0])
        template_has_bos = bool(tok.bos_token) and str(tok.chat_template).find("bos_token") >= 0
        model_bos = getattr(b.model.get_base_model().config, "bos_token_id", None)
        return [C.adapter_loads(report, str(self.spec.adapter), self.spec.base),
                C.adapter_changes_model(report, *self.adapter_effect),
                C.tokenizer_ready(tok.bos_token_id, model_bos, tok.pad_token_id, tok.padding_side,
                                  leading_bos_count(ids, tok.bos_token_id), template_has_bos)]

    def data_claims(self) -> list[C.Claim]:
        return C.data_signal(self.feature_stats, self.cfg.gate)

    def alignment_claims(self) -> list[C.Claim]:
        empty = [role for role, gens in self.answers.items() if gens and all(not g.text.strip() for g in gens)]
        return C.alignment(self.feature_stats, self.cfg.gate, self.agreement_ci, empty)

    def reward_claims(self) -> list[C.Claim]:
        return C.rewards(self.reward_summary, self.cfg.gate)

    @functools.cached_property
    def baseline(self) -> dict[str, Any] | None:
        """The --baseline results, refused (ConfigError) unless made on the same data, split and base."""
        if self.cfg.baseline is None:
            return None
        baseline = load_results(self.cfg.baseline)
        why = R.mismatch(baseline, self.base_fingerprint, self.pairs.fingerprint())
        if why is not None:
            raise ConfigError("--baseline", str(self.cfg.baseline), "a results.json made on the same data and base "
                              "as this run", f"Refused, not compared: {why}.")
        return baseline

    def claim_by_id(self, claim_id: str) -> C.Claim | None:
        """This run's claim with that id, computing only its family; None when this machine cannot
        compute it (a CUDA-only variant without CUDA)."""
        family, _, arg = claim_id.partition("[")
        arg = arg.rstrip("]")
        if family in ("no-nan-logits", "quantized-agrees", "merged-agrees"):
            variant = next((v for v in VARIANTS if v.id == arg), None)
            if variant is None or (variant.cuda and not self.cfg.on_cuda):
                return None
            claims = self.quantization_claims(variant)
        else:
            families = {"adapter-loads": self.checkpoint_claims, "adapter-changes-model": self.checkpoint_claims,
                        "tokenizer-ready": self.checkpoint_claims, "reward-accuracy": self.reward_claims,
                        "reward-accuracy-per-token": self.reward_claims,
                        "reward-margin": self.reward_claims, "data-signal": self.data_claims,
                        "tuned-differs": self.alignment_claims, "sign-agreement": self.alignment_claims,
                        "sign-agreement-rate": self.alignment_claims}
            if family not in families:
                return None
            claims = families[family]()
        return next((c for c in claims if c.id == claim_id), None)

    def regression_claims(self, claim_id: str) -> list[C.Claim]:
        """still-passes[claim_id] when the baseline passed it, not-lower[claim_id] for the headline rates."""
        baseline = self.baseline
        if baseline is None:
            raise ConfigError("--baseline", None, "a results.json of an earlier run",
                              "Regression claims compare against a baseline.")
        current = self.claim_by_id(claim_id)
        out = []
        if claim_id in R.passed_gating_claims(baseline):
            out.append(R.still_passes(claim_id, current, "it needs CUDA" if current is None else ""))
        if claim_id in R.RATES and current is not None:
            old = next((c for c in baseline["claims"] if c["id"] == claim_id), None)
            out.append(R.not_lower(claim_id, old, current))
        return out

    def truncated_share(self) -> dict[str, float]:
        """Share of answers cut at --max-new-tokens (it flattens length features)."""
        return {r: float(np.mean([g.truncated for g in gens])) if gens else 0.0 for r, gens in self.answers.items()}

    def all_claims(self) -> list[C.Claim]:
        return self.checkpoint_claims() + self.reward_claims() + self.data_claims() + self.alignment_claims()
