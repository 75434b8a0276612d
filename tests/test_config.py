"""Configuration: validation names the option and what is allowed; gate settings merge by precedence."""

from __future__ import annotations

from pathlib import Path

import pytest

from dpo_eval_core.config import EvalConfig, GateConfig, family_settings, load_gate_file, merge_tables, parse_columns
from dpo_eval_core.errors import ConfigError
from dpo_eval_core.hardware import choose_dtype
from dpo_eval_core.results import console_summary


def test_defaults_are_valid_and_frozen():
    cfg = EvalConfig()
    with pytest.raises(AttributeError):
        cfg.quant = "4bit"  # type: ignore[misc]
    assert cfg.resolved_dtype == choose_dtype("auto", "cpu").dtype and not cfg.on_cuda


def merged(*tables: tuple[dict, str]) -> tuple[GateConfig, dict, list[str]]:
    gate, families, notes = GateConfig(), family_settings(), []
    for table, source in tables:
        gate, families, more = merge_tables(gate, families, table, source)
        notes += more
    return gate, dict(families), notes


def test_gate_file_then_command_line_override(tmp_path):
    path = tmp_path / "gate.toml"
    path.write_text("alpha = 0.01\ngating = ['reward-accuracy']\n[alignment]\nmin_agreement = 0.7\n")
    gate, families, notes = merged((load_gate_file(path), str(path)), ({"alpha": "0.02"}, "--gate"))
    assert (gate.alpha, families["alignment"].min_agreement, gate.gating) == (0.02, 0.7, ("reward-accuracy",))
    assert gate.gates("reward-accuracy") and not gate.gates("data-signal[n_tokens]") and not notes


def test_a_family_setting_is_set_by_its_table_or_by_family_dot_key():
    _, families, _ = merged(({"forgetting": {"max_forgetting": 0.05}}, "gate.toml"),
                            ({"judge.min_judge_consistency": "0.6"}, "--gate"))
    assert families["forgetting"].max_forgetting == 0.05 and families["judge"].min_judge_consistency == 0.6


def test_a_flat_key_of_a_family_setting_is_still_read_with_a_deprecation_note():
    _, families, notes = merged(({"max_forgetting": 0.05, "min_signal_features": 9}, "pyproject.toml"))
    assert families["forgetting"].max_forgetting == 0.05 and families["data-signal"].min_signal_features == 9
    assert len(notes) == 2 and "[tool.dpo_eval.forgetting] max_forgetting" in notes[0]
    _, _, notes = merged(({"max_forgetting": "0.05"}, "--gate"), ({"max_kl": 0.5}, "gate.toml"))
    assert "write it as --gate forgetting.max_forgetting=..." in notes[0] and "[quantization] max_kl" in notes[1]


def test_an_unknown_family_setting_names_the_family_and_its_settings():
    with pytest.raises(ConfigError, match="a setting of the forgetting family: sets, columns"):
        merged(({"forgetting.max_forgeting": "0.1"}, "--gate"))
    with pytest.raises(ConfigError, match="families: checkpoint, quantization"):
        merged(({"max_forgeting": "0.1"}, "--gate"))


def test_family_settings_validate_their_values():
    with pytest.raises(ConfigError, match="--mcq-shots=-1 is invalid"):
        EvalConfig(families={"forgetting": {"shots": -1}})
    with pytest.raises(ConfigError, match="names of installed claim families"):
        EvalConfig(families={"forgeting": {}})


def test_per_feature_claims_gate_only_when_their_family_is_named_with_a_star():
    assert GateConfig().gates("data-signal") and not GateConfig().gates("data-signal[n_tokens]")
    assert GateConfig(gating=("data-signal[*]",)).gates("data-signal[n_tokens]")


def test_pyproject_table_is_read(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[tool.dpo_eval]\nmin_signal_features = 9\n")
    assert load_gate_file(tmp_path / "pyproject.toml") == {"min_signal_features": 9}


@pytest.mark.parametrize("overrides,fragment", [
    ({"alpha": "2"}, "gate.alpha=2.0 is invalid"),
    ({"n_bootstrap": "10"}, "gate.n_bootstrap=10 is invalid"),
    ({"data-signal.min_signal_features": "1.5"}, "a value of type int"),
    ({"correction": "holm"}, "expected one of none, bh, bonferroni"),
], ids=["alpha-range", "bootstrap-too-few", "int-expected", "unknown-correction"])
def test_bad_gate_values_name_the_key(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment):
        merged((overrides, "--gate"))


def test_columns_parse_and_reject_unknown_targets():
    assert parse_columns("q=prompt, good=chosen") == (("q", "prompt"), ("good", "chosen"))
    with pytest.raises(ConfigError, match="TARGET one of chosen, conversations, prompt, question, rejected, system"):
        parse_columns("q=query")


def test_gating_plus_adds_to_the_default_and_a_replaced_list_says_what_it_left_out():
    default = GateConfig().gating
    added, _, _ = merge_tables(GateConfig(), family_settings(), {"gating+": "judge-win-rate"}, "--gate")
    assert added.gating == (*default, "judge-win-rate")
    assert added.gating_record()["left_out"] == [] and added.gating_record()["added"] == ["judge-win-rate"]
    replaced, _, _ = merge_tables(GateConfig(), family_settings(), {"gating": "judge-win-rate"}, "--gate")
    record = replaced.gating_record()
    assert record["replaced"] and record["entries"] == 1 and record["left_out"] == list(default)
    assert not GateConfig().gating_record()["replaced"]


def test_a_replaced_gating_list_is_said_in_the_summary():
    record = merge_tables(GateConfig(), family_settings(), {"gating": "adapter-loads"}, "--gate")[0].gating_record()
    lines = console_summary({"facts": {"gating": record}, "claims": []}, Path("results.json"), {}, None)
    assert f"gating: 1 entry, replaced the default {record['default_entries']}; left out: " in "\n".join(lines)
