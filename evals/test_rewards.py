"""The adapter's implicit DPO reward prefers chosen over rejected on held-out pairs."""


def test_reward_accuracy(gate_run, claim, check_claim):
    check_claim(claim(gate_run.reward_claims, "reward-accuracy"))


def test_reward_accuracy_per_token(gate_run, claim, check_claim):
    check_claim(claim(gate_run.reward_claims, "reward-accuracy-per-token"))


def test_reward_margin(gate_run, claim, check_claim):
    check_claim(claim(gate_run.reward_claims, "reward-margin"))
