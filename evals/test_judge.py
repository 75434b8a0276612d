"""A judge model prefers the tuned answers to the base answers, in both orders and at equal length
(--judge; skipped without one)."""

import pytest


@pytest.mark.claim("judge-win-rate")
def test_judge_prefers_tuned_answers(claim_id, check_claim):
    check_claim(claim_id)


@pytest.mark.claim("judge-length-controlled-win-rate")
def test_judge_prefers_tuned_answers_at_equal_length(claim_id, check_claim):
    check_claim(claim_id)


@pytest.mark.claim("judge-consistency")
def test_judge_verdicts_do_not_depend_on_order(claim_id, check_claim):
    check_claim(claim_id)
