"""The gate inside training: a real DPOTrainer run of a few steps on the tiny model, saving every step, with
GateCallback measuring the reward claims at each save on the model in memory (no reload), logging them where
every `report_to` integration reads, writing them beside each checkpoint, and the series run afterwards
reusing all of it from the cache."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from tiny import write_pairs

from dpo_eval_core import models as M
from dpo_eval_core.cache import Cache
from dpo_eval_core.config import EvalConfig
from dpo_eval_core.data import load_pairs
from dpo_eval_core.demo.train import as_trl_rows
from dpo_eval_core.errors import CheckpointError
from dpo_eval_core.series import find_series
from dpo_eval_core.training import gate_series

STEPS = 3


def train(base: Path, out: Path, data: Path, cache: Path, loads: list,
          report_to: tuple[str, ...] = ()) -> tuple[object, list[dict]]:
    """DPOTrainer with a LoRA config, saving every step, the callback added; returns the trainer and what its
    integrations were handed (every trainer.log reaches on_log, which TensorBoard, W&B, MLflow and Neptune use)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from dpo_eval.trl import GateCallback

    torch.manual_seed(0)
    pairs = load_pairs(str(data), valid_fraction=0.5)
    logged: list[dict] = []

    class Integration(TrainerCallback):  # what a report_to integration receives
        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001, ANN003
            logged.append(dict(logs or {}, step=state.global_step))

    args = DPOConfig(output_dir=str(out), max_steps=STEPS, save_strategy="steps", save_steps=1, logging_steps=1,
                     per_device_train_batch_size=4, learning_rate=5e-3, report_to=list(report_to), use_cpu=True,
                     bf16=False,
                     beta=0.1, max_length=None, seed=0)
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(base), args=args,
                         processing_class=AutoTokenizer.from_pretrained(base),
                         train_dataset=Dataset.from_list(as_trl_rows(list(pairs.split("train")))),
                         peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                task_type="CAUSAL_LM"),
                         callbacks=[Integration()])
    trainer.add_callback(GateCallback(trainer, data, cache_dir=cache, device="cpu", compute_dtype="float32",
                                      valid_fraction=0.5))
    load = M.load_gate_model
    M.load_gate_model = lambda *a, **k: loads.append(a) or load(*a, **k)  # type: ignore[assignment]
    try:
        trainer.train()
    finally:
        M.load_gate_model = load  # type: ignore[assignment]
    return trainer, logged


def test_a_dpo_run_logs_the_gates_values_at_every_save_and_the_series_reuses_them(tiny_llama, tmp_path):
    data, cache, out = write_pairs(tmp_path / "pairs.jsonl", 32), tmp_path / "cache", tmp_path / "run"
    loads: list = []
    trainer, logged = train(tiny_llama, out, data, cache, loads)
    assert not loads  # the model in memory was gated: nothing reloaded
    gated = [row for row in logged if "dpo_eval/reward-accuracy" in row]
    assert [row["step"] for row in gated] == list(range(1, STEPS + 1))
    assert all({"dpo_eval/reward-accuracy-per-token", "dpo_eval/reward-margin"} <= set(row) for row in gated)
    assert trainer.model.training  # the callback gave the model back in training mode
    written = {}
    for step in range(1, STEPS + 1):
        record = json.loads((out / f"checkpoint-{step}" / "dpo_eval.json").read_text())
        written[step] = {c["id"]: c["value"] for c in record["claims"]}
        assert written[step]["reward-margin"] == pytest.approx(gated[step - 1]["dpo_eval/reward-margin"])
    assert len({w["reward-margin"] for w in written.values()}) == STEPS  # each save its own adapter

    series_cache = Cache(cache)
    result = gate_series(EvalConfig(adapter=out, data=str(data), device="cpu", compute_dtype="float32",
                                    cache_dir=cache, valid_fraction=0.5), find_series(out), cache=series_cache,
                         claims=("reward-accuracy", "reward-accuracy-per-token", "reward-margin"))
    assert "logp" not in series_cache.stats()["misses"]  # every log-prob came from the callback's cache
    for g in result.gated:
        assert g.values["reward-margin"] == pytest.approx(written[g.checkpoint.step]["reward-margin"], rel=1e-5)


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed (it is "
                    "no dependency of dpo-eval: the values reach every report_to integration through trainer.log)")
def test_the_values_reach_a_tensorboard_event_file(tiny_llama, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    _, logged = train(tiny_llama, out, write_pairs(tmp_path / "pairs.jsonl", 32), tmp_path / "cache", [],
                      report_to=("tensorboard",))
    [events] = {f.parent for f in out.rglob("events.out.tfevents.*")}
    board = EventAccumulator(str(events))
    board.Reload()
    margins = {e.step: e.value for e in board.Scalars("train/dpo_eval/reward-margin")}
    assert sorted(margins) == list(range(1, STEPS + 1))
    assert margins == pytest.approx({row["step"]: row["dpo_eval/reward-margin"] for row in logged
                                     if "dpo_eval/reward-margin" in row}, rel=1e-6)


def test_a_model_without_an_adapter_is_refused_naming_the_fix(tmp_path):
    from dpo_eval.trl import gate_in_memory

    with pytest.raises(CheckpointError, match="peft_config=LoraConfig"):
        gate_in_memory(EvalConfig(data=str(write_pairs(tmp_path / "p.jsonl", 8))), object(), tmp_path, ())
