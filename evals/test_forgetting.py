"""The adapter did not forget what the base knew: multiple-choice accuracy, tuned vs base, on the same
questions (--mcq; the demo brings an MMLU sample)."""

import pytest


@pytest.mark.claim("mcq-accuracy[*]")
def test_multiple_choice_accuracy(claim_id, check_claim):
    check_claim(claim_id)


@pytest.mark.claim("no-forgetting[*]")
def test_no_forgetting(claim_id, check_claim):
    check_claim(claim_id)
