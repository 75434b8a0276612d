"""Checkpoint and quantization claims on tiny models: they fail for the reason they name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dpo_eval_core import quantization as Q
from dpo_eval_core.config import EvalConfig
from dpo_eval_core.families import quantization as QF
from dpo_eval_core.families.checkpoint import tokenizer_ready
from dpo_eval_core.models import load_base, load_tokenizer
from dpo_eval_core.quantization import VARIANTS, agreement, probe_batch, run_probe
from dpo_eval_core.run import GateRun

CPU_VARIANTS = [pytest.param(v, id=v.id) for v in VARIANTS if not v.cuda]
CUDA_VARIANTS = [pytest.param(v, id=v.id, marks=pytest.mark.gpu) for v in VARIANTS if v.cuda]


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("q") / "pairs.jsonl"
    rows = [{"prompt": "Why? " * (1 + 7 * i), "chosen": f"Because {i}.", "rejected": f"Um, {i}, maybe."}
            for i in range(12)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def gate(adapter: Path, data: Path, tmp_path: Path) -> GateRun:
    return GateRun(EvalConfig(adapter=adapter, data=str(data), cache_dir=tmp_path, device="cpu"))


def checkpoint_claims(run: GateRun) -> dict:
    return {cid: run.claim(cid) for cid in ("adapter-loads", "adapter-changes-model", "tokenizer-ready")}


def quantization_claims(run: GateRun, variant) -> dict:
    return {cid: run.claim(cid) for cid in (k.id(variant.id) for k in QF.FAMILY.kinds)}


@pytest.mark.parametrize("layer", [0, 1])
def test_nan_in_layer_k_fails_the_claim_and_names_layer_k(tiny_llama, layer):
    tok = load_tokenizer(str(tiny_llama))
    model = load_base(str(tiny_llama), "none", "float32", "cpu")
    model.model.layers[layer].mlp.register_forward_hook(lambda m, i, o: o * float("nan"))
    ids, mask = probe_batch(tok, [(("user", "Hi"),), (("user", "A much longer prompt here."),)], True, "cpu")
    probe = run_probe(model, ids, mask, "none-fp32")
    assert not probe.finite
    assert probe.first_nonfinite_module.startswith(f"model.layers.{layer}.mlp")
    measured = Q.QuantMeasurement(probe.finite, probe.first_nonfinite_module, 1.0, 0.0, 1.0, 0.0)
    (nan_claim, *_) = QF.quantization("none-fp32", measured, QF.Settings())
    assert not nan_claim.passed and f"model.layers.{layer}.mlp" in nan_claim.message


def test_identical_probes_agree_exactly(tiny_llama):
    tok = load_tokenizer(str(tiny_llama))
    model = load_base(str(tiny_llama), "none", "float32", "cpu")
    ids, mask = probe_batch(tok, [(("user", "Hello there"),)], True, "cpu")
    p = run_probe(model, ids, mask, "a")
    assert agreement(p, p) == (1.0, 0.0)


def test_zero_adapter_fails_changes_the_model(zero_adapter, pairs_file, tmp_path):
    claims = checkpoint_claims(gate(zero_adapter, pairs_file, tmp_path))
    assert claims["adapter-loads"].passed
    assert not claims["adapter-changes-model"].passed
    assert "All LoRA B matrices are zero" in claims["adapter-changes-model"].message


def test_random_adapter_changes_the_model_and_mistral_tokenizer_is_ready(tiny_mistral, pairs_file, tmp_path):
    from tiny import make_adapter

    adapter = make_adapter(tiny_mistral, tmp_path / "m")
    claims = checkpoint_claims(gate(adapter, pairs_file, tmp_path))
    assert claims["adapter-changes-model"].passed and claims["tokenizer-ready"].passed
    assert "bos=1" in claims["tokenizer-ready"].message


def test_double_bos_fails_tokenizer_ready():
    c = tokenizer_ready(1, 1, 2, "left", leading_bos=2, template_has_bos=True)
    assert not c.passed and "double BOS" in c.message


@pytest.mark.parametrize("variant", CPU_VARIANTS)
def test_quantized_variants_give_finite_agreeing_logits_on_cpu(variant, tiny_adapter, pairs_file, tmp_path):
    claims = quantization_claims(gate(tiny_adapter, pairs_file, tmp_path), variant)
    assert claims[f"no-nan-logits[{variant.id}]"].passed
    merged = claims[f"merged-agrees[{variant.id}]"]
    assert merged.passed, merged.message  # merged into the dequantized base = the unmerged quantized model
    if variant.id == "none-fp32":  # exact up to float error: same weights, merge in fp32
        assert claims["quantized-agrees[none-fp32]"].value < 1e-6 and claims["merged-agrees[none-fp32]"].passed


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("variant", CUDA_VARIANTS)
def test_cuda_variants_give_finite_logits(variant, tiny_adapter, pairs_file, tmp_path):
    run = GateRun(EvalConfig(adapter=tiny_adapter, data=str(pairs_file), cache_dir=tmp_path, device="cuda"))
    claims = quantization_claims(run, variant)
    assert claims[f"no-nan-logits[{variant.id}]"].passed, claims[f"no-nan-logits[{variant.id}]"].message


def test_each_machine_probes_the_variants_that_fit_it_one_model_at_a_time():
    """CPU: the float32 variants, unchanged. CUDA: the bf16 reference and the -cuda variants only; a float32
    copy of a 7B (7.24e9 parameters, 29 GB) would not fit a 24 GB card, the widest CUDA probe holds 14.5 GB."""
    from dpo_eval_core.quantization import VARIANTS, probe_peak_bytes, probed_variants

    assert [v.id for v in probed_variants(on_cuda=False)] == ["none-fp32", "8bit", "4bit-nf4-fp32", "4bit-nf4-bf16"]
    assert [v.id for v in probed_variants(on_cuda=True)] == ["bf16-cuda", "8bit-cuda", "4bit-nf4-bf16-cuda"]
    assert all(v.dtype != "float32" for v in probed_variants(on_cuda=True))
    assert {v.id for v in VARIANTS} == {v.id for c in (False, True) for v in probed_variants(c)}
    seven_b = 7.24e9
    assert probe_peak_bytes(seven_b, on_cuda=True) / 1e9 == pytest.approx(14.48)
    assert probe_peak_bytes(seven_b, on_cuda=False) / 1e9 == pytest.approx(28.96)
    none_fp32 = next(v for v in VARIANTS if v.id == "none-fp32")
    assert "29 GB for a 7B" in none_fp32.skip_reason(on_cuda=True) and none_fp32.skip_reason(on_cuda=False) is None
