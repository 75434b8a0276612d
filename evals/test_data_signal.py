"""Chosen and rejected answers differ in text features: the data gives DPO something to learn.
Computed from the data alone: `pytest evals -k data_signal --data prefs.jsonl` loads no model."""

import pytest


@pytest.mark.claim("data-signal[*]")
def test_chosen_and_rejected_differ(claim_id, check_claim):
    check_claim(claim_id)


@pytest.mark.claim("data-signal")
def test_data_carries_signal(claim_id, check_claim):
    check_claim(claim_id)
