"""A claim family from another package: README's example, installed from a temporary package through the
`dpo_eval.families` entry point, gets what a built-in family gets: its option in `--help`, its tests, gating,
results.json, the report and --baseline."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from evals_cli import ROOT, run_evals
from tiny import write_pairs

README = (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """README's family as an installed package: its module and a dist-info with the entry point, on PYTHONPATH."""
    site = tmp_path_factory.mktemp("site")
    code = re.search(r"## Your own claims.*?```python\n(.*?)```", README, re.S)
    assert code, "README's 'Your own claims' section has the example"
    (site / "my_gate").mkdir()
    (site / "my_gate" / "__init__.py").write_text("")
    (site / "my_gate" / "privacy.py").write_text(code.group(1))
    info = site / "my_gate-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-gate\nVersion: 0.1\n")
    entry = re.search(r'\[project\.entry-points\."dpo_eval\.families"\]\n(.*?)\n', README).group(1)
    ini = entry.replace('"', "")  # the TOML line as entry_points.txt writes it
    (info / "entry_points.txt").write_text(f"[dpo_eval.families]\n{ini}\n")
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def test_its_option_is_in_the_help(package):
    proc = subprocess.run([sys.executable, "-m", "pytest", "evals", "--help", "-p", "no:cacheprovider"], cwd=ROOT,
                          env={**os.environ, **package}, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0 and "--forbidden-pattern" in proc.stdout and "[privacy]" in proc.stdout


@pytest.mark.slow  # two gates (45 s); the option test above keeps the entry point in CI, the built-in safety
# family's end-to-end run in test_safety keeps a family's section, report and claims
def test_it_gates_is_recorded_reported_and_checked_against_the_baseline(package, tiny_adapter, tmp_path):
    pairs = write_pairs(tmp_path / "pairs.jsonl", 30)
    common = ("--adapter", str(tiny_adapter), "--data", str(pairs), "--eval-cache-dir", str(tmp_path / "cache"),
              "--max-new-tokens", "8", "-k", "installed or regression")
    first = tmp_path / "release" / "results.json"
    proc = run_evals(first, *common, timeout=1200, env=package)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(first.read_text())
    claim = next(c for c in results["claims"] if c["id"] == "answers-have-no-email")
    assert claim["outcome"] == "pass" and claim["gating"] and claim["family"] == "answers-have-no-email"
    assert results["privacy"]["pattern"].startswith("[\\w")
    assert "<h2>Privacy</h2>" in first.with_suffix(".html").read_text()

    now = tmp_path / "candidate" / "results.json"  # a pattern every answer matches: the claim fails, the run too
    proc = run_evals(now, *common, "--forbidden-pattern", "^", "--baseline", str(first), timeout=1200, env=package)
    out = proc.stdout + proc.stderr
    assert proc.returncode == pytest.ExitCode.TESTS_FAILED, out[-3000:]
    claims = {c["id"]: c for c in json.loads(now.read_text())["claims"]}
    assert claims["answers-have-no-email"]["outcome"] == "fail"
    assert claims["still-passes[answers-have-no-email]"]["outcome"] == "fail"
    assert "REGRESSED" in claims["still-passes[answers-have-no-email]"]["message"]
    assert "FAIL  answers-have-no-email" in out and "answers match '^'" in out
