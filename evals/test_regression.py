"""Against --baseline (the results.json of the last release): what passed then passes now, and the
headline rates did not drop beyond their uncertainty. Skipped without --baseline."""

import pytest


@pytest.mark.claim("still-passes[*]")
def test_gating_claim_still_passes(claim_id, check_claim):
    check_claim(claim_id)


@pytest.mark.claim("not-lower[*]")
def test_rate_not_lower_than_baseline(claim_id, check_claim):
    check_claim(claim_id)
