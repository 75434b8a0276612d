"""Quantized variants of the gated model: finite logits, agreement with full precision, and merge safety.

Each variant is loaded on its own, probed on one left-padded batch of real prompts of very
different lengths, and freed before the next, so memory holds one model at a time.
"""

from __future__ import annotations

import gc
import math
from dataclasses import dataclass
from typing import Any, Sequence

from .backend import left_pad
from .chat import Message, prompt_ids

PROBE_VERSION = 2
"""Joins the cache key of quantization measurements: raise it when how a probe is built changes, so
measurements made by older code are not trusted (version 1 reused an unloaded, dequantized model for
the merged probe and got wrong weights)."""


@dataclass(frozen=True, slots=True)
class Variant:
    id: str
    quant: str
    dtype: str
    cuda: bool
    """True: runs only on CUDA (skipped elsewhere)."""


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
                       max_tokens: int = 1024) -> list[int]:
    """Indices of k prompts spread from the shortest to the longest (up to max_tokens), so padding is uneven."""
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
