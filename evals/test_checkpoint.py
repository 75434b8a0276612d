"""The adapter is the right checkpoint for its base, it loads, it changes the model, and the
tokenizer is ready for batched generation."""


def test_adapter_loads(gate_run, claim, check_claim):
    check_claim(claim(gate_run.checkpoint_claims, "adapter-loads"))


def test_adapter_changes_the_model(gate_run, claim, check_claim):
    check_claim(claim(gate_run.checkpoint_claims, "adapter-changes-model"))


def test_tokenizer_ready_for_batched_generation(gate_run, claim, check_claim):
    check_claim(claim(gate_run.checkpoint_claims, "tokenizer-ready"))
