"""Harmlessness, tuned against base on the same prompts: no more unsafe answers to harmful requests, no more
refusals of safe look-alikes (--safety-prompts, --benign-prompts; skipped without them)."""

import pytest


@pytest.mark.claim("no-more-harmful")
def test_no_more_harmful_answers_than_base(claim_id, check_claim):
    check_claim(claim_id)


@pytest.mark.claim("no-more-over-refusal")
def test_no_more_refusals_of_safe_prompts_than_base(claim_id, check_claim):
    check_claim(claim_id)


@pytest.mark.claim("refuses-harmful")
def test_refuses_harmful_prompts_at_the_floor(claim_id, check_claim):
    check_claim(claim_id)
