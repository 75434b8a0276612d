"""Quantization does not break the adapter: finite logits, agreement with full precision, safe merge.
One test per variant; the CUDA-only variants skip without CUDA."""

import pytest


@pytest.mark.claim("no-nan-logits[*]")
def test_no_nan_logits(claim_id, check_claim):
    check_claim(claim_id)


@pytest.mark.claim("quantized-agrees[*]")
def test_quantized_logits_agree_with_full_precision(claim_id, check_claim):
    check_claim(claim_id)


@pytest.mark.claim("merged-agrees[*]")
def test_merged_and_unmerged_adapter_agree(claim_id, check_claim):
    check_claim(claim_id)
