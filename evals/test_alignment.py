"""Tuned answers differ from base answers, in the direction the preference data points."""

import pytest

from dpo_eval_core.features import FEATURE_NAMES


@pytest.mark.parametrize("feature", FEATURE_NAMES)
def test_tuned_and_base_differ(feature, gate_run, claim, check_claim):
    check_claim(claim(gate_run.alignment_claims, f"tuned-differs[{feature}]"))


@pytest.mark.parametrize("feature", FEATURE_NAMES)
def test_tuned_moves_the_data_way(feature, gate_run, claim, check_claim):
    check_claim(claim(gate_run.alignment_claims, f"sign-agreement[{feature}]"))


def test_sign_agreement_rate(gate_run, claim, check_claim):
    check_claim(claim(gate_run.alignment_claims, "sign-agreement-rate"))
