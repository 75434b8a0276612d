"""Configuration: validation names the option and what is allowed; gate settings merge by precedence."""

from __future__ import annotations

import pytest

from dpo_eval_core.config import EvalConfig, GateConfig, load_gate_file, parse_columns
from dpo_eval_core.errors import ConfigError
from dpo_eval_core.hardware import choose_dtype


def test_defaults_are_valid_and_frozen():
    cfg = EvalConfig()
    with pytest.raises(AttributeError):
        cfg.quant = "4bit"  # type: ignore[misc]
    assert cfg.resolved_dtype == choose_dtype("auto", "cpu").dtype and not cfg.on_cuda


def test_gate_file_then_command_line_override(tmp_path):
    path = tmp_path / "gate.toml"
    path.write_text("alpha = 0.01\nmin_agreement = 0.7\ngating = ['reward-accuracy']\n")
    gate = GateConfig().merged(load_gate_file(path), str(path)).merged({"alpha": "0.02"}, "--gate")
    assert (gate.alpha, gate.min_agreement, gate.gating) == (0.02, 0.7, ("reward-accuracy",))
    assert gate.gates("reward-accuracy") and not gate.gates("data-signal[n_tokens]")


def test_per_feature_claims_gate_only_when_their_family_is_named_with_a_star():
    assert GateConfig().gates("data-signal") and not GateConfig().gates("data-signal[n_tokens]")
    assert GateConfig(gating=("data-signal[*]",)).gates("data-signal[n_tokens]")


def test_pyproject_table_is_read(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[tool.dpo_eval]\nmin_signal_features = 9\n")
    assert load_gate_file(tmp_path / "pyproject.toml") == {"min_signal_features": 9}


@pytest.mark.parametrize("overrides,fragment", [
    ({"alpha": "2"}, "gate.alpha=2.0 is invalid"),
    ({"n_bootstrap": "10"}, "gate.n_bootstrap=10 is invalid"),
    ({"min_signal_features": "1.5"}, "a value of type int"),
    ({"correction": "holm"}, "expected one of none, bh, bonferroni"),
], ids=["alpha-range", "bootstrap-too-few", "int-expected", "unknown-correction"])
def test_bad_gate_values_name_the_key(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment):
        GateConfig().merged(overrides, "--gate")


def test_columns_parse_and_reject_unknown_targets():
    assert parse_columns("q=prompt, good=chosen") == (("q", "prompt"), ("good", "chosen"))
    with pytest.raises(ConfigError, match="TARGET one of chosen, prompt, question, rejected, system"):
        parse_columns("q=query")
