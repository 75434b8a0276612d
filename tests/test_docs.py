"""The docs document every option, gate setting and claim family of the code, the generated reference pages
equal what the code says, and README is a front page that links every page."""

from __future__ import annotations

import re
from pathlib import Path

from fixtures.docs import PAGES
from fixtures.options import FLAGS, OPTIONS

from dpo_eval_core.builders import BUILDERS
from dpo_eval_core.registry import FAMILIES, family_of

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
DOCS = {p.name: p.read_text(encoding="utf-8") for p in (ROOT / "docs").glob("*.md")}
ALL = README + "".join(DOCS.values())


def test_the_generated_reference_pages_equal_what_the_code_says():
    stale = [name for name, make in PAGES.items() if DOCS.get(name) != make()]
    assert not stale, f"{stale} differ from the code: run `python -m fixtures.docs`"


def test_every_option_is_documented():
    flags = [flag for flag, *_ in OPTIONS] + list(FLAGS)
    assert "--gate" in flags and "--no-cache" in flags and "--refresh" in flags
    assert not [flag for flag in flags if f"`{flag}" not in DOCS["options.md"]]


def test_every_claim_family_is_documented():
    assert not [f.pattern for f in FAMILIES if f"`{f.pattern}`" not in DOCS["claims.md"]]


def test_readme_is_a_front_page_that_links_every_page():
    assert len(README.splitlines()) <= 200
    assert not [name for name in DOCS if f"(docs/{name})" not in README]
    assert "pytest evals" in README and 'pytest tests -n 2 -m "not slow"' in README


def test_the_docs_hold_measurements_without_commit_ids():
    assert not re.search(r"\((?:commit )?[0-9a-f]{7}\)|commit [0-9a-f]{7}\b(?![0-9a-f])", ALL)


def test_every_family_has_one_builder_and_one_test_in_evals():
    markers = [m for path in (ROOT / "evals").glob("test_*.py")
               for m in re.findall(r'@pytest\.mark\.claim\("([^"]+)"\)', path.read_text())]
    assert all(family_of(m) is not None for m in markers), markers
    assert sorted(family_of(m).pattern for m in markers) == sorted(f.pattern for f in FAMILIES)
    assert set(BUILDERS) == {f.pattern for f in FAMILIES}
