"""Claims of the families other packages install (the `dpo_eval.families` entry point: README "Your own
claims"): one test per claim, skipped when no such package is installed."""

import pytest


@pytest.mark.installed_families
def test_claim_of_an_installed_family(claim_id, check_claim):
    check_claim(claim_id)
