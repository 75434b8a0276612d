"""Chosen and rejected answers differ in text features: the data gives DPO something to learn."""

import pytest

from dpo_eval_core.features import FEATURE_NAMES


@pytest.mark.parametrize("feature", FEATURE_NAMES)
def test_chosen_and_rejected_differ(feature, gate_run, claim, check_claim):
    check_claim(claim(gate_run.data_claims, f"data-signal[{feature}]"))


def test_data_carries_signal(gate_run, claim, check_claim):
    check_claim(claim(gate_run.data_claims, "data-signal"))
