"""Tuned answers differ from base answers, in the direction the preference data points."""

import pytest


@pytest.mark.claim("tuned-differs[*]")
def test_tuned_and_base_differ(claim_id, check_claim):
    check_claim(claim_id)


@pytest.mark.claim("sign-agreement[*]")
def test_tuned_moves_the_data_way(claim_id, check_claim):
    check_claim(claim_id)


@pytest.mark.claim("sign-agreement-rate")
def test_sign_agreement_rate(claim_id, check_claim):
    check_claim(claim_id)


@pytest.mark.claim("adapter-changes-answers")
def test_adapter_changes_the_answers(claim_id, check_claim):
    check_claim(claim_id)
