"""The docs document every option, gate setting and claim family of the code, the generated reference pages
equal what the code says, and README is a front page that links every page."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from dpo_eval_core.config import installed
from dpo_eval_core.registry import resolve
from fixtures.docs import PAGES
from fixtures.options import FLAGS, OPTIONS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
DOCS = {p.name: p.read_text(encoding="utf-8") for p in (ROOT / "docs").glob("*.md")}
ALL = README + "".join(DOCS.values())


def test_the_generated_reference_pages_equal_what_the_code_says():
    stale = [name for name, make in PAGES.items() if DOCS.get(name) != make()]
    assert not stale, f"{stale} differ from the code: run `python -m fixtures.docs`"


def test_every_option_is_documented():
    flags = [flag for flag, *_ in OPTIONS] + list(FLAGS) + [o.flag for f in installed() for o in f.options]
    assert "--gate" in flags and "--no-cache" in flags and "--refresh" in flags
    assert not [flag for flag in flags if f"`{flag}" not in DOCS["options.md"]]


def test_every_claim_is_documented():
    assert not [k.pattern for f in installed() for k in f.kinds if f"`{k.pattern}`" not in DOCS["claims.md"]]


def test_readme_is_a_front_page_that_links_every_page():
    assert len(README.splitlines()) <= 200
    assert not [name for name in DOCS if f"(docs/{name})" not in README]
    assert "pytest evals" in README and 'pytest tests -n 2 --dist loadfile -m "not slow"' in README


def test_the_docs_hold_measurements_without_commit_ids():
    assert not re.search(r"\((?:commit )?[0-9a-f]{7}\)|commit [0-9a-f]{7}\b(?![0-9a-f])", ALL)


def test_every_kind_of_claim_has_one_test_in_evals():
    markers = [m for path in (ROOT / "evals").glob("test_*.py")
               for m in re.findall(r'@pytest\.mark\.claim\("([^"]+)"\)', path.read_text())]
    found = [resolve(installed(), m) for m in markers]
    assert None not in found, markers
    assert sorted(k.pattern for _, k, _ in found) == sorted(k.pattern for f in installed() for k in f.kinds)


def string_literals(path: Path) -> list[str]:
    """Every string constant of a module's code (f-string pieces included), docstrings left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body
            and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docs]


def test_no_claim_id_is_written_outside_its_family_module():
    """A claim id is a literal once, in the module of the family that makes it; everything else builds it from
    the family's Kind (tests, evals/, docstrings and the docs aside)."""
    sources = [p for d in ("dpo_eval_core", "fixtures") for p in (ROOT / d).rglob("*.py")] + [ROOT / "conftest.py"]
    homes = {k.name: f.claims.__module__ for f in installed() for k in f.kinds}
    found = sorted(f"{p.relative_to(ROOT)}: {text!r}" for p in sources for text in string_literals(p)
                   for name, home in homes.items() if (text == name or text.startswith(name + "["))
                   and ".".join(p.relative_to(ROOT).with_suffix("").parts) != home)
    assert not found
