"""A training run as a series: its checkpoints found and put in training order (the trainer's step, else the
name's, said so), the ones without weights kept as not gated, and the inputs that are not one run refused with
both sides named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpo_eval_core.errors import CheckpointError
from dpo_eval_core.models import ADAPTER_WEIGHTS
from dpo_eval_core.series import find_series, is_series

LORA = {"peft_type": "LORA", "base_model_name_or_path": "base/x", "r": 8, "lora_alpha": 16,
        "target_modules": ["q_proj", "v_proj"]}


def checkpoint(root: Path, name: str, step: int | None = None, *, weights: bool = True, state: str | None = None,
               **config: object) -> Path:
    """A Trainer-style checkpoint directory: adapter config, weights, trainer_state.json (`state` overrides)."""
    d = root / name
    d.mkdir(parents=True)
    (d / "adapter_config.json").write_text(json.dumps({**LORA, **config}))
    if weights:
        (d / ADAPTER_WEIGHTS).write_bytes(b"\0")
    if state is not None:
        (d / "trainer_state.json").write_text(state)
    elif step is not None:
        (d / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    return d


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.integers(0, 10**6), min_size=1, max_size=8, unique=True), data=st.data())
def test_checkpoints_come_in_training_order_whatever_their_names_sort_as(tmp_path_factory, steps, data):
    root = tmp_path_factory.mktemp("run")
    with_state = data.draw(st.lists(st.booleans(), min_size=len(steps), max_size=len(steps)))
    for step, state in zip(steps, with_state):
        checkpoint(root, f"checkpoint-{step}", step if state else None)
    series = find_series(root)
    assert [c.step for c in series.checkpoints] == sorted(steps)
    assert len(series.notes) == sum(not s for s in with_state)  # every step read from a name is said so
    assert is_series(root) and series.gated == series.checkpoints


def test_the_trainers_step_wins_over_the_name(tmp_path):
    checkpoint(tmp_path, "checkpoint-900", 100)  # renamed, say: the trainer's record decides
    checkpoint(tmp_path, "checkpoint-200", 200)
    assert [c.name for c in find_series(tmp_path).checkpoints] == ["checkpoint-900", "checkpoint-200"]


@pytest.mark.parametrize("state", ["{not json", json.dumps({"epoch": 1.0}), json.dumps({"global_step": "ten"})],
                         ids=["broken-json", "no-global-step", "step-not-a-number"])
def test_an_unreadable_trainer_state_orders_by_name_and_says_why(tmp_path, state):
    checkpoint(tmp_path, "checkpoint-30", state=state)
    checkpoint(tmp_path, "checkpoint-20", 20)
    series = find_series(tmp_path)
    assert [c.step for c in series.checkpoints] == [20, 30]
    assert len(series.notes) == 1 and "checkpoint-30" in series.notes[0] and "trainer_state.json" in series.notes[0]


def test_an_unreadable_trainer_state_without_a_step_in_the_name_is_refused_with_the_fix(tmp_path):
    checkpoint(tmp_path / "run", "final", state="{")
    with pytest.raises(CheckpointError, match=r"final/trainer_state.json.*rename the directory checkpoint-<step>"):
        find_series([tmp_path / "run" / "final"])


def test_a_checkpoint_without_weights_stays_in_the_series_as_not_gated(tmp_path):
    checkpoint(tmp_path, "checkpoint-10", 10)
    checkpoint(tmp_path, "checkpoint-20", 20, weights=False)
    series = find_series(tmp_path)
    assert [c.step for c in series.checkpoints] == [10, 20]
    assert [c.step for c in series.gated] == [10]
    assert ADAPTER_WEIGHTS in series.checkpoints[1].problem


@pytest.mark.parametrize("field,value", [("base_model_name_or_path", "base/y"), ("r", 16),
                                         ("target_modules", ["q_proj"])], ids=["other-base", "other-rank",
                                                                               "other-modules"])
def test_checkpoints_of_another_model_are_refused_naming_both(tmp_path, field, value):
    a = checkpoint(tmp_path, "checkpoint-10", 10)
    b = checkpoint(tmp_path, "checkpoint-20", 20, **{field: value})
    with pytest.raises(CheckpointError, match=field) as e:
        find_series(tmp_path)
    assert str(a) in str(e.value) and str(b) in str(e.value)


def test_target_modules_in_another_order_are_the_same_model(tmp_path):
    checkpoint(tmp_path, "checkpoint-10", 10)
    checkpoint(tmp_path, "checkpoint-20", 20, target_modules=["v_proj", "q_proj"])
    assert len(find_series(tmp_path).gated) == 2


def test_two_runs_in_one_glob_are_refused(tmp_path):
    checkpoint(tmp_path / "run-a", "checkpoint-10", 10)
    checkpoint(tmp_path / "run-b", "checkpoint-10", 10)
    with pytest.raises(CheckpointError, match="both step 10"):
        find_series(str(tmp_path / "run-*" / "checkpoint-*"))


def test_a_glob_and_a_list_are_series_too_and_one_adapter_is_a_series_of_one(tmp_path):
    a, b = checkpoint(tmp_path, "adapter-b", 5), checkpoint(tmp_path, "adapter-a", 7)
    assert [c.path for c in find_series(str(tmp_path / "adapter-*")).checkpoints] == [a, b]
    assert [c.path for c in find_series([b, a]).checkpoints] == [a, b]
    assert not is_series(a) and [c.step for c in find_series(a).checkpoints] == [5]


def test_names_without_steps_keep_the_order_given_and_say_so(tmp_path):
    a, b = checkpoint(tmp_path, "late"), checkpoint(tmp_path, "early")
    series = find_series([a, b])
    assert [c.path for c in series.checkpoints] == [a, b] and "order given" in series.notes[-1]


@pytest.mark.parametrize("make", [lambda p: p.mkdir(), lambda p: None], ids=["empty-dir", "missing"])
def test_a_directory_with_no_adapter_and_no_checkpoints_names_the_fix(tmp_path, make):
    make(tmp_path / "out")
    with pytest.raises(CheckpointError, match="out"):
        find_series(tmp_path / "out")
