"""Quantized variants of the gated model: finite logits, agreement with full precision, and merge safety.

Each variant is loaded on its own, probed on one left-padded batch of real prompts of very
different lengths, and freed before the next, so memory holds one model at a time.
"""

from __future__ import annotations

import gc
import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator, Sequence

from .backend import left_pad
from .cache import Cache, memoized
from .chat import Message, prompt_ids
from .identity import ModelIdentity, library_versions, quantization_key
from .models import CheckpointSpec, load_adapted

PROBE_VERSION = 3
"""Joins the cache key of quantization measurements: raise it when how a probe is built changes, so
measurements made by older code are not trusted (version 1 reused an unloaded, dequantized model for
the merged probe and got wrong weights; version 3 stores a QuantMeasurement record instead of a list)."""


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


@dataclass(frozen=True, slots=True)
class Probe:
    """Logits of one variant on the probe batch, reduced to what the claims need."""

    variant: str
    finite: bool
    first_nonfinite_module: str | None
    top1: Any
    """[n_positions] argmax token ids over non-pad positions."""
    logprobs: Any
    """[n_positions, vocab] float32 log-softmax over non-pad positions (small batch by design)."""


def probe_batch(tokenizer: Any, prompts: Sequence[Sequence[Message]], system_ok: bool, device: str) -> tuple[Any, Any]:
    """Left-padded ids and mask for the probe prompts."""
    return left_pad([prompt_ids(tokenizer, m, system_ok) for m in prompts], tokenizer.pad_token_id, device)


def pick_probe_prompts(prompts: Sequence[Sequence[Message]], lengths: Sequence[int], k: int = 6,
                       max_tokens: int = 256) -> list[int]:
    """Indices of k prompts spread from the shortest to the longest (up to max_tokens), so padding is uneven.

    256 tokens already pads the shortest prompt by most of the batch; longer probes only made each
    variant's full-logits forwards slower (11 of 81 minutes of an UltraFeedback gate at 1024)."""
    short = [i for i in range(len(prompts)) if lengths[i] <= max_tokens] or [min(range(len(prompts)),
                                                                                 key=lambda i: lengths[i])]
    order = sorted(short, key=lambda i: (lengths[i], i))
    if len(order) <= k:
        return order
    return sorted({order[round(j * (len(order) - 1) / (k - 1))] for j in range(k)})


def run_probe(model: Any, input_ids: Any, mask: Any, variant: str) -> Probe:
    """Forward the batch once, with hooks that record the first module whose output is not finite."""
    import torch

    first: list[str] = []
    names = {m: n for n, m in model.named_modules()}

    def hook(module: Any, _inp: Any, out: Any) -> None:
        t = out[0] if isinstance(out, (tuple, list)) else out
        if not first and isinstance(t, torch.Tensor) and t.is_floating_point():
            # padded positions are masked in attention; judge only real tokens
            real = t[mask.bool()] if t.dim() >= 2 and t.shape[:2] == mask.shape else t
            if not torch.isfinite(real).all():
                first.append(names.get(module, type(module).__name__))

    handles = [m.register_forward_hook(hook) for m in model.modules() if m is not model]
    try:
        with torch.inference_mode():
            logits = model(input_ids=input_ids, attention_mask=mask).logits
    finally:
        for h in handles:
            h.remove()
    real = logits[mask.bool()].float()
    finite = bool(torch.isfinite(real).all())
    return Probe(variant, finite, first[0] if first else None, real.argmax(-1).cpu(),
                 real.log_softmax(-1).cpu())


def agreement(reference: Probe, other: Probe) -> tuple[float, float]:
    """(top-1 agreement share, mean KL(reference || other) in nats) over real positions."""
    if not (reference.finite and other.finite):
        return (math.nan, math.nan)
    top1 = float((reference.top1 == other.top1).float().mean())
    p = reference.logprobs
    kl = float((p.exp() * (p - other.logprobs)).sum(-1).clamp_min(0).mean())
    return top1, kl


def free(*objs: Any) -> None:
    """Release models promptly (and CUDA cache when present)."""
    del objs
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


@dataclass(frozen=True, slots=True)
class QuantMeasurement:
    """What the quantization claims of one variant are made from (cached as this record)."""

    finite: bool
    first_nonfinite_module: str | None
    top1: float
    """Top-1 agreement with the full-precision reference, unmerged adapter."""
    kl: float
    """Mean KL(reference || variant) in nats."""
    merged_top1: float
    """Top-1 agreement of the merged model with the unmerged one (same variant)."""
    merged_kl: float

    def to_json(self) -> dict[str, Any]:
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in asdict(self).items()}

    @staticmethod
    def from_json(d: dict[str, Any]) -> "QuantMeasurement":
        return QuantMeasurement(**{k: math.nan if v is None and k != "first_nonfinite_module" else v
                                   for k, v in d.items()})


def measurement_key(model: ModelIdentity, variant: Variant, probe_ids: list[list[int]]) -> str:
    """The cache key of one variant's measurements (identity.quantization_key, with this code's version)."""
    versions = library_versions()
    return quantization_key(model, variant.quant, variant.dtype, probe_ids, PROBE_VERSION,
                            {k: versions[k] for k in ("torch", "transformers", "peft", "bitsandbytes")})


def reference_probe(spec: CheckpointSpec, dtype: str, device: str, inputs: tuple[Any, Any],
                    loaded: Any | None = None) -> Probe:
    """Full precision, adapter unmerged: from `loaded` (the gate's own model, when it was loaded that way),
    else from a model loaded for the purpose and freed."""
    if loaded is not None:
        return run_probe(loaded, *inputs, "reference")
    model, _ = load_adapted(spec, "none", dtype, device)
    probe = run_probe(model, *inputs, "reference")
    del model
    free()
    return probe


def measure(spec: CheckpointSpec, variant: Variant, device: str, inputs: tuple[Any, Any],
            reference: Probe) -> QuantMeasurement:
    """Load the base quantized as the variant says with the adapter, probe it unmerged and merged, free it.

    The merged model is what serving a QLoRA adapter uses: a quantized base is dequantized first and the
    adapter merged with safe_merge, since merging into 4-bit weights would re-round them. It comes from a
    fresh load: dequantizing the model already probed gave other weights (demo, NF4).
    """
    model, _ = load_adapted(spec, variant.quant, variant.dtype, device)
    unmerged = run_probe(model, *inputs, variant.id)
    if variant.quant != "none":
        del model
        free()
        model, _ = load_adapted(spec, variant.quant, variant.dtype, device, dequantize=True)
    merged = run_probe(model.merge_and_unload(safe_merge=True), *inputs, f"{variant.id}-merged")
    del model
    free()
    return QuantMeasurement(unmerged.finite, unmerged.first_nonfinite_module, *agreement(reference, unmerged),
                            *agreement(unmerged, merged))


def cached_measurement(cache: Cache, key: str, reference: Callable[[], Probe], release: Callable[[], None],
                       spec: CheckpointSpec, variant: Variant, device: str,
                       inputs: tuple[Any, Any]) -> tuple[QuantMeasurement, int]:
    """(the variant's measurement, 1 if it was computed now else 0). On a miss, `reference()` is probed
    first (it may use the caller's loaded model) and `release()` frees that model before the variant loads,
    so memory never holds two copies."""
    def compute(_: list[int]) -> Iterator[tuple[int, Any]]:
        ref = reference()
        release()
        yield 0, measure(spec, variant, device, inputs, ref).to_json()

    (value,), n = memoized(cache, "quantization", [key], compute)
    return QuantMeasurement.from_json(value), n
