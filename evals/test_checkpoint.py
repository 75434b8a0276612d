"""The adapter is the right checkpoint for its base, and it loads."""


def test_adapter_loads(gate_run, claim, check_claim):
    check_claim(claim(gate_run.checkpoint_claims, "adapter-loads"))
