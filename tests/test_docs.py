"""The README documents every option and every claim family of the registry, and evals/ checks them all."""

from __future__ import annotations

import re
from pathlib import Path

from fixtures.options import FLAGS, OPTIONS

from dpo_eval_core.builders import BUILDERS
from dpo_eval_core.registry import FAMILIES, family_of

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_option_is_in_the_readme():
    flags = [flag for flag, *_ in OPTIONS] + list(FLAGS)
    assert "--gate" in flags and "--no-cache" in flags and "--refresh" in flags
    assert not [flag for flag in flags if f"`{flag}" not in README]


def test_every_claim_family_is_in_the_readme():
    assert not [f.pattern for f in FAMILIES if f"`{f.pattern}`" not in README]


def test_every_family_has_one_builder_and_one_test_in_evals():
    markers = [m for path in (ROOT / "evals").glob("test_*.py")
               for m in re.findall(r'@pytest\.mark\.claim\("([^"]+)"\)', path.read_text())]
    assert all(family_of(m) is not None for m in markers), markers
    assert sorted(family_of(m).pattern for m in markers) == sorted(f.pattern for f in FAMILIES)
    assert set(BUILDERS) == {f.pattern for f in FAMILIES}
