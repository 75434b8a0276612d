"""This adapter is not worse than another of the same base (--compare: the released one, or a rival),
pair by pair on the same items."""

import pytest


@pytest.mark.claim("not-worse[*]")
def test_not_worse_than_the_other_adapter(claim_id, check_claim):
    check_claim(claim_id)
