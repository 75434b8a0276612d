"""Quantization does not break the adapter: finite logits, agreement with full precision, safe merge. One claim
of each per variant; the CUDA-only variants are made only on CUDA."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import quantization as Q
from ..claims import Claim, fmt
from ..errors import ConfigError
from ..family import Family, Kind
from .checkpoint import probe_inputs
from ..stages import Stage

if TYPE_CHECKING:
    from ..run import GateRun

REFERENCE_PROBE: Stage[Q.Probe] = Stage("reference probe")
MEASUREMENT: Stage[Q.QuantMeasurement] = Stage("quantization")

FINITE = Kind("no-nan-logits", "finite logits on a left-padded batch under this quantization", over="VARIANT")
AGREES = Kind("quantized-agrees", "top-1 agreement and mean KL against full precision", over="VARIANT")
MERGED = Kind("merged-agrees", "the adapter merged into the dequantized base agrees with it unmerged", over="VARIANT")
VARIANT_IDS = tuple(v.id for v in Q.VARIANTS)


@dataclass(frozen=True, slots=True)
class Settings:
    max_kl: float = 1.0
    """Quantized vs full-precision mean KL (nats) per next-token distribution must stay below this. The
    default catches a broken quantization on a small model (NF4 moves the 135M demo base by up to ~1.1
    nats on its own); tighten it for larger models."""
    min_top1_agreement: float = 0.6
    """Quantized vs full-precision share of positions with the same top-1 token (see max_kl)."""

    def __post_init__(self) -> None:
        if not self.max_kl >= 0:
            raise ConfigError("quantization.max_kl", self.max_kl, "a number >= 0")
        if not 0.0 <= self.min_top1_agreement <= 1.0:
            raise ConfigError("quantization.min_top1_agreement", self.min_top1_agreement, "a number in [0, 1]")


def reference_probe(run: GateRun) -> Q.Probe:
    """Full precision (fp32 on CPU, the compute dtype on CUDA), adapter unmerged: the gate's own model when it
    was loaded that way, else one loaded for the purpose."""
    def probe() -> Q.Probe:
        dtype = run.cfg.resolved_dtype if run.cfg.on_cuda else "float32"
        own = run.loaded is not None and run.cfg.quant == "none" and run.cfg.dtype_choice.loads == dtype
        return Q.reference_probe(run.spec, dtype, run.cfg.resolved_device, probe_inputs(run),
                                 run.loaded.backend.model if own and run.loaded else None)
    return run.stages.once(REFERENCE_PROBE, probe)


def measurement(run: GateRun, variant: Q.Variant) -> Q.QuantMeasurement:
    """One variant's measurements, cached; probes load models of their own, so the gate's is freed first."""
    def compute() -> Q.QuantMeasurement:
        key = Q.measurement_key(run.identity, variant, probe_inputs(run)[0].tolist())
        with run.ledger.phase("quantization"):
            m, n = Q.cached_measurement(run.cache, key, lambda: reference_probe(run), run.free, run.spec, variant,
                                        run.cfg.resolved_device, probe_inputs(run))
        run.ledger.count("quantization_variants", n)
        return m
    return run.stages.once(MEASUREMENT.of(variant.id), compute)


def quantization(variant: str, m: Q.QuantMeasurement, s: Settings) -> list[Claim]:
    nan = Claim(FINITE.id(variant), m.finite, None, "all logits finite", "", None,
                "all logits finite on a left-padded batch of prompts of very different lengths" if m.finite
                else f"non-finite logits under {variant}; first non-finite output: {m.first_nonfinite_module or 'logits only'}")

    def agree(cid: str, t1: float, k: float, against: str) -> Claim:
        ok = m.finite and t1 >= s.min_top1_agreement and k <= s.max_kl
        return Claim(cid, bool(ok), k, f"top-1 >= {s.min_top1_agreement}, KL <= {s.max_kl}", "", None,
                     f"vs {against}: top-1 agreement {fmt(t1)}, mean KL {fmt(k)} nats")

    return [nan, agree(AGREES.id(variant), m.top1, m.kl, "full precision, unmerged"),
            agree(MERGED.id(variant), m.merged_top1, m.merged_kl,
                  "the unmerged model, with the adapter merged into the dequantized base")]


def claims(run: GateRun, variant_id: str | None) -> list[Claim]:
    """The three claims of one variant; none for a variant this machine does not probe (Variant.skip_reason)."""
    variant = next(v for v in Q.VARIANTS if v.id == variant_id)
    if variant.skip_reason(run.cfg.on_cuda) is not None:
        return []
    return quantization(variant.id, measurement(run, variant), run.settings(FAMILY))


def _unavailable(cfg: Any, variant_id: str | None) -> str:
    variant = next((v for v in Q.VARIANTS if v.id == variant_id), None)
    return (variant.skip_reason(cfg.on_cuda) if variant else None) or "it needs CUDA"


FAMILY = Family(
    "quantization", (FINITE, AGREES, MERGED), claims, settings=Settings, per_item=True, rank=20, own_models=True,
    arguments=lambda run, kind: VARIANT_IDS, accepts=lambda kind, arg: arg in VARIANT_IDS,
    cuda_only=lambda arg: any(v.id == arg and v.cuda for v in Q.VARIANTS), unavailable=_unavailable,
    doc="Quantization does not break the adapter: finite logits, agreement with full precision, safe merge.")
