"""The adapter's implicit DPO reward prefers chosen over rejected on held-out pairs."""

import pytest


@pytest.mark.claim("reward-accuracy")
def test_reward_accuracy(claim_id, check_claim):
    check_claim(claim_id)


@pytest.mark.claim("reward-accuracy-per-token")
def test_reward_accuracy_per_token(claim_id, check_claim):
    check_claim(claim_id)


@pytest.mark.claim("reward-margin")
def test_reward_margin(claim_id, check_claim):
    check_claim(claim_id)
