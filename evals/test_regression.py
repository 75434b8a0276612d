"""Against --baseline (the results.json of the last release): what passed then passes now, and the
headline rates did not drop beyond their uncertainty. Skipped without --baseline."""

import pytest

from dpo_eval_core.regression import RATES


def test_gating_claim_still_passes(baseline_claim, baseline, gate_run, claim, check_claim):
    check_claim(claim(lambda: gate_run.regression_claims(baseline_claim), f"still-passes[{baseline_claim}]"))


@pytest.mark.parametrize("rate", RATES)
def test_rate_not_lower_than_baseline(rate, baseline, gate_run, claim, check_claim):
    check_claim(claim(lambda: gate_run.regression_claims(rate), f"not-lower[{rate}]"))
