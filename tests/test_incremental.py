"""A new adapter on the same data and cache recomputes exactly what depends on the adapter."""

from __future__ import annotations

import pytest

import dataclasses
import json
from pathlib import Path

from tiny import make_adapter

from dpo_eval_core.cache import Cache
from dpo_eval_core.config import EvalConfig
from dpo_eval_core.families.alignment import feature_stats
from dpo_eval_core.quantization import VARIANTS
from dpo_eval_core.run import GateRun


def whole_gate(cfg: EvalConfig) -> GateRun:
    run = GateRun(cfg, cache=Cache(cfg.cache_dir))
    run.all_claims(quantization=True)
    run.free()
    return run


@pytest.mark.slow  # every claim of the tiny model, quantization probes included, computed twice (260 s on 2 cores); test_compare's second-adapter test keeps the incremental path in CI
def test_new_adapter_recomputes_tuned_answers_their_features_policy_logps_and_probes_only(
        tmp_path: Path, tiny_llama: Path, tiny_adapter: Path) -> None:
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Question {i}?", "chosen": f"Answer {i}.",
                                        "rejected": f"Well, um, I guess {i}, maybe."}) + "\n" for i in range(12)))
    cfg = EvalConfig(adapter=tiny_adapter, data=str(data), cache_dir=tmp_path / "cache", max_new_tokens=6,
                     device="cpu")
    cold = whole_gate(cfg)
    n_prompts, n_valid = len(cold.pairs.pairs), len(list(cold.pairs.split("valid")))
    assert cold.computed["generations_tuned"] == cold.computed["generations_base"] == n_prompts
    assert cold.computed["logps"] == 4 * n_valid  # policy and reference, chosen and rejected

    assert not any(whole_gate(cfg).computed.values())  # the same adapter again: nothing

    other = make_adapter(tiny_llama, tmp_path / "other", seed=7)
    new = whole_gate(dataclasses.replace(cfg, adapter=other))
    seen = {t for p in cold.pairs.pairs for t in (p.chosen, p.rejected)}
    seen |= {g.text for role in ("tuned", "base") for g in cold.answers[role]}
    new_texts = {g.text for g in new.answers["tuned"]} - seen
    assert new.computed == {"generations_tuned": n_prompts, "generations_base": 0, "feature_rows": len(new_texts),
                            "logps": 2 * n_valid, "quantization_variants": sum(not v.cuda for v in VARIANTS)}
    assert new_texts, "the other adapter must answer differently for this test to bite"



def test_train_answers_bound_the_generations_and_change_no_claim(tmp_path: Path, tiny_adapter: Path) -> None:
    """Train answers feed only the report's train-side tuned-base averages: answering 3 train prompts
    instead of all of them generates fewer answers and gives every claim the same verdict and value."""
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Question {i}?", "chosen": f"Answer {i}.",
                                        "rejected": f"Well, um, I guess {i}, maybe."}) + "\n" for i in range(30)))
    cfg = EvalConfig(adapter=tiny_adapter, data=str(data), cache_dir=tmp_path / "cache", max_new_tokens=6,
                     device="cpu", train_answers=3)
    few = GateRun(cfg)
    claims_few = {c.id: (c.passed, c.value) for c in few.all_claims()}
    n_valid, n_train = len(few.pairs.split("valid")), len(few.pairs.split("train"))
    assert n_train > 3 and few.computed["generations_tuned"] == few.computed["generations_base"] == n_valid + 3
    assert sum(g is not None for g in few.answers["tuned"]) == n_valid + 3
    assert max(s.n_train_answered for s in feature_stats(few)) <= 3
    every = GateRun(dataclasses.replace(cfg, train_answers=None))
    assert {c.id: (c.passed, c.value) for c in every.all_claims()} == claims_few
    assert every.computed["generations_tuned"] == n_train - 3  # the valid and the 3 train answers were cached
    assert few.pairs.answered(3, 0) == every.pairs.answered(3, 0)  # the same train prompts every run
