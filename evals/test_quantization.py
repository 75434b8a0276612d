"""Quantization does not break the adapter: finite logits, agreement with full precision, safe merge."""

import pytest
import torch

from dpo_eval_core.quantization import VARIANTS

CUDA = torch.cuda.is_available()
variants = [pytest.param(v, id=v.id, marks=[pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs CUDA")]
                         if v.cuda else []) for v in VARIANTS]


@pytest.mark.parametrize("variant", variants)
def test_no_nan_logits(variant, gate_run, claim, check_claim):
    check_claim(claim(lambda: gate_run.quantization_claims(variant), f"no-nan-logits[{variant.id}]"))


@pytest.mark.parametrize("variant", variants)
def test_quantized_logits_agree_with_full_precision(variant, gate_run, claim, check_claim):
    check_claim(claim(lambda: gate_run.quantization_claims(variant), f"quantized-agrees[{variant.id}]"))


@pytest.mark.parametrize("variant", variants)
def test_merged_and_unmerged_adapter_agree(variant, gate_run, claim, check_claim):
    check_claim(claim(lambda: gate_run.quantization_claims(variant), f"merged-agrees[{variant.id}]"))
