"""The README documents every option and every claim family the gate can report."""

from __future__ import annotations

import re
from pathlib import Path

from fixtures.options import OPTIONS

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
EVALS = Path(__file__).resolve().parents[1] / "evals"


def test_every_option_is_in_the_readme():
    missing = [flag for flag, *_ in OPTIONS if f"`{flag}`" not in README]
    assert not missing


def test_every_claim_family_used_in_evals_is_in_the_readme():
    families = set()
    for path in EVALS.glob("test_*.py"):
        families |= set(re.findall(r'"([a-z0-9-]+)(?:\[|")', path.read_text()))
        families |= set(re.findall(r'f"([a-z0-9-]+)\[', path.read_text()))
    families -= {"variant", "feature", "rate"}  # parametrize argument names
    assert families and not [f for f in families if f"`{f}" not in README]
