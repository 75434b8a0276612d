"""A training run's checkpoints as one series: which adapter directories it holds, in training order, which of
them can be gated, and the refusals that make "which checkpoint ships" a comparison of like with like.

A DPO run under the Hugging Face Trainer writes `checkpoint-<step>/` directories, each with the adapter
(adapter_config.json, adapter_model.safetensors) and `trainer_state.json` (its `global_step`). A series is
those directories, or an explicit list or glob of adapter directories, ordered by `global_step` (by the
number in the directory's name where trainer_state.json is missing or unreadable, and the series says so).
Checkpoints must share the base and the LoRA configuration: a comparison across them is otherwise a
comparison of two different models, so a mixed series is refused naming both sides. A checkpoint without
readable weights is kept in the series as not gated, with the reason: the others are gated, and it cannot
ship.
"""

from __future__ import annotations

import glob
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .errors import CheckpointError
from .models import adapter_weights, read_adapter_config

TRAINER_STATE = "trainer_state.json"
CHECKPOINT_GLOB = "checkpoint-*"
SAME_MODEL = ("peft_type", "base_model_name_or_path", "r", "lora_alpha", "target_modules", "use_dora",
              "modules_to_save")
"""adapter_config.json fields every checkpoint of a series must agree on: the base and the LoRA layout."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One adapter directory of a series."""

    path: Path
    step: int | None
    """Training step: trainer_state.json's global_step, else the number in the name, else None."""
    step_from: str
    """Where `step` came from: 'trainer_state.json', 'name' or 'order given' (no step known)."""
    problem: str | None = None
    """Why this checkpoint cannot be gated (no weights, unreadable config); None when it can."""

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True, slots=True)
class Series:
    """A training run's checkpoints in training order, with what the ordering rests on."""

    checkpoints: tuple[Checkpoint, ...]
    notes: tuple[str, ...] = ()
    """What a reader of the report must know about the order (steps read from names, not the trainer)."""

    @property
    def gated(self) -> tuple[Checkpoint, ...]:
        """The checkpoints that can be gated (readable adapter and weights)."""
        return tuple(c for c in self.checkpoints if c.problem is None)


def is_series(adapter: str | Path) -> bool:
    """Whether --adapter names a series (a run directory with checkpoint-* inside, or a glob) rather than one
    adapter directory."""
    path = Path(adapter).expanduser()
    if glob.has_magic(str(adapter)):
        return True
    return path.is_dir() and not (path / "adapter_config.json").is_file() and any(_checkpoint_dirs(path))


def find_series(adapter: str | Path | Sequence[str | Path]) -> Series:
    """The series --adapter names: a run directory (its checkpoint-* directories), a glob, or a list of adapter
    directories. Raises CheckpointError naming the input and the fix when it holds no checkpoint, when two
    checkpoints claim one step, or when checkpoints differ in base or LoRA configuration."""
    dirs = _expand(adapter)
    checkpoints = [_checkpoint(d) for d in dirs]
    notes = [f"{c.name}: step {c.step} read from the directory's name ({c.step_from})" for c in checkpoints
             if c.step_from.startswith("name")]
    if any(c.step is None for c in checkpoints):
        notes.append("no step is known for " + ", ".join(c.name for c in checkpoints if c.step is None)
                     + ": the series keeps the order given")
    else:
        checkpoints.sort(key=lambda c: c.step)  # type: ignore[arg-type, return-value]
        for a, b in zip(checkpoints, checkpoints[1:]):
            if a.step == b.step:
                raise CheckpointError(f"--adapter {adapter}: {a.path} and {b.path} are both step {a.step}: they "
                                      f"are not one training run. Gate each run on its own (one run directory, or "
                                      f"a glob that matches one run).")
    _check_same_model([c for c in checkpoints if c.problem is None])
    return Series(tuple(checkpoints), tuple(notes))


def _checkpoint_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.glob(CHECKPOINT_GLOB) if p.is_dir())


def _expand(adapter: str | Path | Sequence[str | Path]) -> list[Path]:
    if not isinstance(adapter, (str, Path)):
        dirs = [Path(a).expanduser() for a in adapter]
        missing = [str(d) for d in dirs if not d.is_dir()]
        if missing:
            raise CheckpointError(f"--adapter: {', '.join(missing)}: directory not found. List adapter directories "
                                  f"(each written by PeftModel.save_pretrained or a Trainer checkpoint).")
    elif glob.has_magic(str(adapter)):
        dirs = sorted(Path(p) for p in glob.glob(str(Path(adapter).expanduser())) if Path(p).is_dir())
    else:
        root = Path(adapter).expanduser()
        if not root.is_dir():
            raise CheckpointError(f"--adapter {adapter}: directory not found.")
        dirs = [root] if (root / "adapter_config.json").is_file() else _checkpoint_dirs(root)
    if not dirs:
        raise CheckpointError(f"--adapter {adapter}: no adapter and no {CHECKPOINT_GLOB} directories in it. Point "
                              f"--adapter at a training run's output directory (the Trainer's output_dir, with "
                              f"save_strategy set), at one adapter directory, or at a glob of adapter directories.")
    return dirs


def _checkpoint(path: Path) -> Checkpoint:
    """One directory: its step (trainer_state.json, else its name) and whether it can be gated."""
    problem = None
    try:
        read_adapter_config(path)
        adapter_weights(path)
    except CheckpointError as e:
        problem = str(e)
    named = re.search(r"(\d+)(?!.*\d)", path.name)
    state = path / TRAINER_STATE
    if state.is_file():
        try:
            step = json.loads(state.read_text(encoding="utf-8"))["global_step"]
            if isinstance(step, int) and not isinstance(step, bool) and step >= 0:
                return Checkpoint(path, step, TRAINER_STATE, problem)
            why = f"its global_step is {step!r}, not a step count"
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
            why = f"unreadable ({type(e).__name__}: {e}); re-save it or delete it to order by name"
        if named is None:
            raise CheckpointError(f"{state}: {why}, and the directory's name holds no step. Fix the file, or "
                                  f"rename the directory checkpoint-<step>.")
        return Checkpoint(path, int(named.group(1)), f"name: {TRAINER_STATE} {why}", problem)
    if named is None:
        return Checkpoint(path, None, "order given", problem)
    return Checkpoint(path, int(named.group(1)), f"name: no {TRAINER_STATE}", problem)


def _same_model_fields(path: Path) -> dict[str, Any]:
    config = read_adapter_config(path)
    out = {k: config.get(k) for k in SAME_MODEL}
    if isinstance(out["target_modules"], list):
        out["target_modules"] = sorted(out["target_modules"])
    return out


def _check_same_model(checkpoints: Sequence[Checkpoint]) -> None:
    if not checkpoints:
        return
    first = _same_model_fields(checkpoints[0].path)
    for c in checkpoints[1:]:
        other = _same_model_fields(c.path)
        differ = [k for k in SAME_MODEL if other[k] != first[k]]
        if differ:
            what = "; ".join(f"{k}: {first[k]!r} in {checkpoints[0].path}, {other[k]!r} in {c.path}" for k in differ)
            raise CheckpointError(f"--adapter: the checkpoints are not one model ({what}). A series compares "
                                  f"checkpoints of one training run: gate each base or LoRA configuration as its "
                                  f"own series.")
