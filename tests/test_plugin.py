"""The pytest plugin end to end: start-up errors name the option and the fix, claims become verdicts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny import write_pairs

_UNUSABLE_CUDA = "cuda:99" if torch.cuda.is_available() else "cuda"
"""A CUDA device this machine cannot use: any on a CPU-only torch, an index past the GPUs on a CUDA one."""
PLUGINS = ["-p", "no:cacheprovider"]  # the dpo-eval plugin comes from its pytest11 entry point
GATE_TEST = """
import pytest

@pytest.mark.claim("adapter-loads")
def test_adapter_loads(claim_id, check_claim):
    check_claim(claim_id)
"""


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(*PLUGINS, *args)


@pytest.fixture
def pairs_file(tmp_path: Path) -> Path:
    return write_pairs(tmp_path / "pairs.jsonl", 24)


@pytest.mark.parametrize("args,fragment", [
    (["--max-samples", "0"], "--max-samples=0 is invalid: expected a positive integer"),
    (["--quant", "3bit"], "--quant='3bit' is invalid: expected one of none, 8bit, 4bit"),
    (["--max-new-tokens", "0"], "--max-new-tokens=0 is invalid"),
    (["--valid-fraction", "1.5"], "--valid-fraction=1.5 is invalid"),
    (["--device", "tpu"], "--device='tpu' is invalid: expected auto, cpu, cuda or cuda:N"),
    (["--batch-size", "many"], "--batch-size='many' is invalid: expected an integer"),
    (["--gate", "rewards.betta=1"], "--gate: rewards.betta='1' is invalid: expected a setting of the rewards family: "
     "min_reward_accuracy, beta, reward_tie_tolerance, max_reward_accuracy_drop, max_margin_drop. Did you mean 'beta'?"),
    (["--device", _UNUSABLE_CUDA], f"--device='{_UNUSABLE_CUDA}' is invalid: expected "),
    (["--columns", "q:prompt"], "--columns='q:prompt' is invalid"),
    (["--gate", "alhpa=0.1"], "--gate: alhpa='0.1' is invalid: expected a gate setting (alpha"),
    (["--gate", "gating=reward-acuracy,data-signal"], "gate.gating='reward-acuracy' is invalid: expected a claim id "
     "or family[*] of the installed claim families. Did you mean 'reward-accuracy'"),
], ids=["max-samples-0", "unknown-quant", "max-new-tokens-0", "valid-fraction", "device", "batch-size",
        "misspelt-family-setting", "cuda-this-torch-cannot-use", "columns", "unknown-gate-key",
        "misspelt-gating-claim"])
def test_invalid_options_stop_at_start_up_naming_option_and_allowed(pytester, args, fragment):
    """One format: `dpo-eval: <what> is invalid: expected ... <fix>` as the only stderr line, nothing of pytest's."""
    result = run(pytester, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = [line for line in result.stderr.lines if line.strip()]
    assert len(err) == 1 and err[0].startswith("dpo-eval: ") and fragment in err[0], err
    assert "Traceback" not in result.stderr.str() + result.stdout.str()


def test_cuda_on_a_torch_that_cannot_use_it_is_exit_4_before_any_claim_runs(pytester, tiny_adapter, pairs_file):
    """The persona's CPU-only torch with --device cuda: one message with the fix, no claim reported failed."""
    pytester.makepyfile(test_gate=GATE_TEST)
    result = run(pytester, "--adapter", str(tiny_adapter), "--data", str(pairs_file), "--device", _UNUSABLE_CUDA,
                 "-k", "adapter")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "failed" not in result.stdout.str() and "passed" not in result.stdout.str()
    fix = "install a CUDA build" if not torch.backends.cuda.is_built() else (
        "No GPU is visible" if not torch.cuda.is_available() else "Pick a GPU this process sees")
    assert fix in result.stderr.str()


def test_your_adapter_without_data_is_refused_rather_than_gated_on_the_demo_pairs(pytester, tiny_adapter):
    pytester.makepyfile(test_gate=GATE_TEST)
    result = run(pytester, "--adapter", str(tiny_adapter))
    err = result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--data=None is invalid: expected your preference data with --adapter" in err and "--data demo" in err
    assert "Traceback" not in err + result.stdout.str()


def test_adapter_directory_without_config_is_a_usage_error(pytester, tmp_path):
    (tmp_path / "ckpt").mkdir()
    result = run(pytester, "--adapter", str(tmp_path / "ckpt"), "--data", "demo")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "adapter_config.json" in result.stderr.str() and "PeftModel.save_pretrained" in result.stderr.str()


def test_4bit_with_float16_compute_on_cpu_warns_of_the_nan_trap(pytester):
    pytester.makepyfile(test_x="def test_x(): pass")
    result = run(pytester, "--quant", "4bit", "--compute-dtype", "float16", "--device", "cpu")
    assert result.ret == 0
    assert "known NaN trap" in result.stdout.str()


@pytest.mark.parametrize("data,fragment", [
    ("missing.jsonl", "file not found"),
    ("data.txt", "unknown extension '.txt'"),
    ("nocols.jsonl", "Found columns: a, q"),
    ("empty.jsonl", "the dataset is empty"),
], ids=["missing-file", "unknown-extension", "missing-columns", "empty-dataset"])
def test_bad_data_stops_before_any_model_loads(pytester, tmp_path, tiny_adapter, data, fragment):
    (tmp_path / "data.txt").write_text("x")
    (tmp_path / "nocols.jsonl").write_text('{"q": "x", "a": "y"}\n')
    (tmp_path / "empty.jsonl").write_text("")
    pytester.makepyfile(test_gate=GATE_TEST)
    result = run(pytester, "--adapter", str(tiny_adapter), "--data", str(tmp_path / data))
    out = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert fragment in out and "Traceback" not in out
    assert "Loading weights" not in out


def test_gate_on_a_tiny_model_passes_loading_and_writes_results(pytester, tmp_path, tiny_adapter, pairs_file):
    pytester.makepyfile(test_gate=GATE_TEST + """
@pytest.mark.claim("reward-margin")
def test_reward_margin(claim_id, check_claim):
    check_claim(claim_id)
""")
    results = tmp_path / "results.json"
    result = run(pytester, "--adapter", str(tiny_adapter), "--data", str(pairs_file), "--results", str(results),
                 "--eval-cache-dir", str(tmp_path / "cache"), "--gate", "gating=adapter-loads", "-rxs")
    out = result.stdout.str()
    assert "dpo-eval gate" in out
    assert "PASS  adapter-loads" in out
    data = json.loads(results.read_text())
    ids = {c["id"]: c for c in data["claims"]}
    assert ids["adapter-loads"]["passed"] and ids["adapter-loads"]["gating"]
    assert not ids["reward-margin"]["gating"]  # not gating here: reported, never turns the run red
    assert result.ret == 0
    assert data["facts"]["data"]["pairs"]["train"] + data["facts"]["data"]["pairs"]["valid"] == 24
    assert data["config"]["gate"]["gating"] == ["adapter-loads"]


@pytest.mark.parametrize("keyword,selected", [
    ("reward-margin", ["test_margin"]), ("checkpoint", ["test_loads"]), ("rewards", ["test_margin"]),
    ("not rewards", ["test_loads"])], ids=["claim-id", "family", "other-family", "not-family"])
def test_k_selects_gate_tests_by_claim_id_and_family(pytester, keyword, selected):
    pytester.makepyfile(test_gate="""
import pytest

@pytest.mark.claim("adapter-loads")
def test_loads(claim_id, check_claim):
    check_claim(claim_id)

@pytest.mark.claim("reward-margin")
def test_margin(claim_id, check_claim):
    check_claim(claim_id)
""")
    result = run(pytester, "--collect-only", "-q", "-k", keyword)
    assert [line.split("::")[1] for line in result.outlines if "::" in line] == selected
