"""The gate inside training: a `transformers.TrainerCallback` (for TRL's DPOTrainer, or any Trainer of a PEFT
model) that gates each checkpoint as the Trainer saves it.

    trainer = DPOTrainer(..., args=DPOConfig(save_strategy="steps", save_steps=50, report_to=["tensorboard"]))
    trainer.add_callback(GateCallback(trainer, data="valid.jsonl"))

At each save it measures the claims asked for (by default the implicit-reward claims, which only score) on the
model in memory: no reload and no second copy of the base, the reference being the base with the adapter
disabled. Their values go through `trainer.log`, so every `report_to` integration (TensorBoard, W&B, MLflow,
Neptune) receives them as `dpo_eval/<claim id>`, and the checkpoint's claims are written beside it
(`dpo_eval.json`). Everything is cached under the checkpoint's weights digest, in the cache the gate uses, so
`pytest evals --adapter output_dir/` afterwards reuses it.

What it logs is monitoring, not a verdict: training-time looks are kept in a ledger inside each checkpoint, not
the gate's, and the checkpoint to ship is chosen by the series run, which accounts for choosing among every
checkpoint (training.py).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Sequence

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from . import models as M
from .cache import atomic_write_text
from .claims import Claim
from .config import EvalConfig
from .errors import CheckpointError
from .families.rewards import ACCURACY, MARGIN, PER_TOKEN
from .results import claim_record
from .run import GateRun

REWARD_CLAIMS = tuple(k.id() for k in (ACCURACY, PER_TOKEN, MARGIN))
RESULTS = "dpo_eval.json"
"""The checkpoint's claims, written beside its weights."""
LOOKS = "dpo_eval_looks.json"


class GateCallback(TrainerCallback):  # type: ignore[misc]
    """Gate every checkpoint the Trainer saves (or every `every` saves) on `claims`, logging their values."""

    def __init__(self, trainer: Any, data: str | Path, *, claims: Sequence[str] = REWARD_CLAIMS, every: int = 1,
                 **options: Any) -> None:
        """`options` are EvalConfig fields as the gate takes them (cache_dir, quant, compute_dtype, base_model,
        valid_fraction, ...): give the gate run afterwards the same ones, or it computes afresh."""
        if every < 1:
            raise CheckpointError(f"GateCallback(every={every}): expected a positive number of saves between gates.")
        self.trainer, self.claims, self.every, self.saves = trainer, tuple(claims), every, 0
        self.config = EvalConfig(data=str(data), **options)  # options are checked now, not at the first save

    def on_save(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.saves += 1
        if (self.saves - 1) % self.every:
            return
        checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        claims = gate_in_memory(self.config, model, checkpoint, self.claims)
        self.trainer.log({f"dpo_eval/{c.id}": float(c.value) for c in claims if c.value is not None})
        records = [claim_record(c, True) for c in claims]
        atomic_write_text(checkpoint / RESULTS, json.dumps({"step": state.global_step, "claims": records},
                                                           indent=2, allow_nan=False) + "\n")


def gate_in_memory(cfg: EvalConfig, model: Any, checkpoint: Path, claim_ids: Sequence[str]) -> list[Claim]:
    """`claim_ids` of the adapter just saved to `checkpoint`, measured on `model` (its PeftModel in memory), in eval
    mode for the duration (dropout off), the mode it was in restored after."""
    if model is None or not hasattr(model, "peft_config"):
        raise CheckpointError(f"GateCallback at {checkpoint}: the Trainer's model is {type(model).__name__}, not a "
                              f"PEFT model. Train a LoRA adapter (DPOTrainer(..., peft_config=LoraConfig(...)) or a "
                              f"PeftModel) to gate it during training.")
    device = str(next(model.parameters()).device)
    cfg = dataclasses.replace(cfg, adapter=checkpoint, device=device, looks=checkpoint / LOOKS)
    run = GateRun(cfg)
    run.loaded = M.in_memory(model, run.spec, cfg, run.tokenizer, run.system_ok)
    training = model.training
    model.eval()
    try:
        return [c for cid in claim_ids if (c := run.claim(cid)) is not None]
    finally:
        model.train(training)
