"""`pytest evals -k data_signal --data prefs.jsonl`: the check a team runs on its preference data before
training. It loads no model and no tokenizer, generates nothing, and its verdicts equal the full run's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dpo_eval_core.cache import Cache
from dpo_eval_core.config import EvalConfig
from dpo_eval_core.run import GateRun

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """Chosen answers short and plain, rejected ones long and hedged: several features differ."""
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({
        "prompt": f"What is item {i}?", "chosen": f"Item {i} is a thing.",
        "rejected": f"Well, honestly, I think that item {i} might perhaps be, more or less, some kind of thing, "
                    f"maybe, although I am not entirely sure about it at all."}) + "\n" for i in range(40)))
    return path


REFUSE = """
import transformers

def refuse(*args, **kwargs):
    raise AssertionError("a model or tokenizer was loaded")

for auto in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
    auto.from_pretrained = refuse
"""


@pytest.mark.slow  # a full gate and a data-only gate (110 s); the data-signal claims stay in the demo run in CI
def test_data_signal_alone_loads_no_model_and_agrees_with_the_full_run(tmp_path, data, tiny_adapter):
    """(No pytester fixture here: on teardown it unloads every module the test imported, and this test
    imports spaCy, whose compiled registries cannot be imported twice in one process.)"""
    full = GateRun(EvalConfig(adapter=tiny_adapter, data=str(data), cache_dir=tmp_path / "full", max_new_tokens=4,
                              device="cpu"), cache=Cache(tmp_path / "full"))
    expected = {c.id: (c.passed, c.value, c.message) for c in full.all_claims() if c.id.startswith("data-signal")}
    full.free()
    assert full.computed["generations_tuned"] > 0  # the full run did answer: its features had four roles

    (tmp_path / "refuse_models.py").write_text(REFUSE)  # loaded with -p: any model or tokenizer load fails the run
    results = tmp_path / "results.json"
    result = subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "evals"), "-k", "data_signal", "-p",
                             "refuse_models", "-p", "no:cacheprovider", "--adapter", str(tiny_adapter), "--data",
                             str(data), "--results", str(results), "--eval-cache-dir", str(tmp_path / "data-only")],
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)}, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    doc = json.loads(results.read_text())
    got = {c["id"]: (c["passed"], c["value"], c["message"]) for c in doc["claims"]}
    assert len(got) == 70 and got == expected
    assert "model_key" not in doc["facts"] and "load" not in doc["facts"]["timings_s"]
    assert doc["facts"]["computed"] == {"feature_rows": 80}  # 40 chosen + 40 rejected texts
