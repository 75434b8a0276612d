"""The adapter is the right checkpoint for its base, it loads, it changes the model, and the
tokenizer is ready for batched generation."""

import pytest


@pytest.mark.claim("adapter-loads")
def test_adapter_loads(claim_id, check_claim):
    check_claim(claim_id)


@pytest.mark.claim("adapter-changes-model")
def test_adapter_changes_the_model(claim_id, check_claim):
    check_claim(claim_id)


@pytest.mark.claim("tokenizer-ready")
def test_tokenizer_ready_for_batched_generation(claim_id, check_claim):
    check_claim(claim_id)
