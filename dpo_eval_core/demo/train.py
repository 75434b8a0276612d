"""Train a DPO LoRA adapter on the demo base (needs the `train` extra: trl).

    python -m dpo_eval_core.demo.train --out dpo_eval_core/demo/assets/adapter
    python -m dpo_eval_core.demo.train --out ctrl/swapped --swap        # control: preferences reversed
    python -m dpo_eval_core.demo.train --out uf --data ../shared/data/ultrafeedback_pairs.jsonl
    python -m dpo_eval_core.demo.train --out dpo_eval_core/demo/assets/series --checkpoints 4

Trains only on the gate's train split of the data (same seeded split the gate uses),
evaluates on its valid split, and writes the adapter with `training_config.json` and
TRL's final evaluation metrics (`eval_metrics.json`) beside it. With `--checkpoints N` it
writes a training run instead: N evenly spaced `checkpoint-<step>/` directories in the
Trainer's layout (adapter, `trainer_state.json`), the adapter weights stored in bfloat16 to
keep the files small, and no optimizer state.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..config import default_cache_dir
from ..data import PreferencePair, load_pairs
from . import DEMO_BASE_ID, demo_base_dir, demo_data_path, demo_pairs_sha256

RECIPE = {
    "lora": {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0,
             "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
    # sigmoid = DPO; sft adds the NLL of chosen answers (RPO), so that generations take up the chosen style
    # rather than only moving probability away from the rejected one.
    "dpo": {"beta": 0.1, "loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 1.0], "learning_rate": 5e-4, "num_train_epochs": 1, "gradient_checkpointing": False, "per_device_train_batch_size": 8,
            "per_device_eval_batch_size": 8, "max_length": 512, "lr_scheduler_type": "cosine",
            "warmup_steps": 4, "seed": 0},
}


def as_trl_rows(pairs: list[PreferencePair], swap: bool = False) -> list[dict]:
    """Conversational rows in TRL's DPO format; `swap` exchanges chosen and rejected."""
    rows = []
    for p in pairs:
        chosen, rejected = (p.rejected, p.chosen) if swap else (p.chosen, p.rejected)
        rows.append({
            "prompt": [{"role": r, "content": c} for r, c in p.messages],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
        })
    return rows


def train(out: Path, data: str | None, swap: bool, cache_dir: Path, max_samples: int | None,
          checkpoints: int = 0) -> dict:
    """Train the recipe; write the adapter to `out`, or with `checkpoints` N evenly spaced checkpoints."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    torch.manual_seed(RECIPE["dpo"]["seed"])
    cuda = torch.cuda.is_available()  # TRL defaults to bf16 autocast, which is slow and lossy on CPU
    source = data or str(demo_data_path(cache_dir))
    pairs = load_pairs(source, max_samples=max_samples)
    base = demo_base_dir(cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    train_ds = Dataset.from_list(as_trl_rows(list(pairs.split("train")), swap))
    eval_ds = Dataset.from_list(as_trl_rows(list(pairs.split("valid")), swap=False))
    saving = ({"save_strategy": "steps", "save_steps": 1 / checkpoints, "save_only_model": True}
              if checkpoints else {"save_strategy": "no"})
    args = DPOConfig(output_dir=str(out / "_trainer"), logging_steps=5, report_to=[], eval_strategy="no",
                     use_cpu=not cuda, bf16=cuda, **saving, **RECIPE["dpo"])
    trainer = DPOTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                         processing_class=tokenizer, peft_config=LoraConfig(task_type="CAUSAL_LM", **RECIPE["lora"]))
    start = time.time()
    trainer.train()
    metrics = trainer.evaluate()  # on the valid split, with the true (unswapped) preferences
    if checkpoints:
        for saved in sorted((out / "_trainer").glob("checkpoint-*")):
            _keep_checkpoint(saved, out / saved.name)
    else:
        trainer.model.save_pretrained(out, safe_serialization=True)
        _offline_base(out)
    info = {"recipe": RECIPE, "data": data or "demo", "swap": swap, "max_samples": max_samples,
            "checkpoints": checkpoints or None,
            "demo_pairs_sha256": None if data else demo_pairs_sha256(),
            "n_train": len(train_ds), "n_valid": len(eval_ds), "train_seconds": round(time.time() - start, 1)}
    (out / "training_config.json").write_text(json.dumps(info, indent=2) + "\n")
    (out / "eval_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    for name in ("README.md", "_trainer"):
        target = out / name
        if target.is_dir():
            import shutil

            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    return metrics


def _offline_base(adapter: Path) -> None:
    """Point the adapter at the demo base's id, which resolves to the converted demo base offline."""
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = DEMO_BASE_ID
    (adapter / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def _keep_checkpoint(saved: Path, dest: Path) -> None:
    """Copy what a gate reads from a Trainer checkpoint (adapter config, weights in bfloat16, trainer state)."""
    import torch
    from safetensors.torch import load_file, save_file

    dest.mkdir(parents=True, exist_ok=True)
    weights = load_file(saved / "adapter_model.safetensors")
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in weights.items()},
              dest / "adapter_model.safetensors", metadata={"format": "pt"})
    for name in ("adapter_config.json", "trainer_state.json"):
        (dest / name).write_bytes((saved / name).read_bytes())
    _offline_base(dest)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", default=None, help="preference data (default: the demo pairs)")
    parser.add_argument("--swap", action="store_true", help="train on reversed preferences (a control)")
    parser.add_argument("--max-samples", type=int, default=None)
    parser.add_argument("--eval-cache-dir", type=Path, default=default_cache_dir())
    parser.add_argument("--checkpoints", type=int, default=0,
                        help="write N evenly spaced checkpoint-<step>/ directories (a training run) instead of "
                             "one adapter")
    ns = parser.parse_args(argv)
    metrics = train(ns.out, ns.data, ns.swap, ns.eval_cache_dir, ns.max_samples, ns.checkpoints)
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
