"""The compute dtype: what `auto` picks and why, and that scoring never sums in low precision.

The equality tests against TRL and lm-evaluation-harness pin float32 on both sides. bfloat16 against
float32 on real pairs is measured, not asserted, here: on the 600-pair UltraFeedback gate it moved
reward margins by up to 0.375 and flipped 3 of 109 pairs (docs/performance.md), which is why `auto`
keeps float32 verdicts (tests/test_precision.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dpo_eval_core.config import EvalConfig
from dpo_eval_core.hardware import choose_dtype, cpu_bf16_features
from dpo_eval_core.run import GateRun


@pytest.mark.parametrize("features", [
    pytest.param({"_is_amx_tile_supported": True, "_is_avx512_bf16_supported": True}, id="amx"),
    pytest.param({"_is_amx_tile_supported": False, "_is_avx512_bf16_supported": True}, id="avx512-bf16"),
    pytest.param({"_is_amx_tile_supported": False, "_is_avx512_bf16_supported": False}, id="neither"),
])
def test_auto_on_cpu_runs_bfloat16_with_float32_verdicts_only_where_the_cpu_multiplies_it(monkeypatch, features):
    for name, value in features.items():
        monkeypatch.setattr(torch.cpu, name, lambda v=value: v)
    choice = choose_dtype("auto", "cpu")
    names = [n for n, f in (("AMX", "_is_amx_tile_supported"), ("AVX512-BF16", "_is_avx512_bf16_supported"))
             if features[f]]
    if names:  # the pass in bfloat16 over float32 weights, the near ties again in float32
        assert (choice.dtype, choice.loads, choice.cast) == ("bfloat16", "float32", "bfloat16")
        assert f"({', '.join(names)};" in choice.reason and "float32 verdicts" in choice.reason
        assert choice.identity != "bfloat16"  # a pass on cast weights is cached apart from a bfloat16-weights one
    else:
        assert (choice.dtype, choice.loads, choice.cast) == ("float32", "float32", None)
        assert choice.reason.startswith("auto: float32 on CPU")
    assert torch.backends.cpu.get_cpu_capability() in choice.reason


@pytest.mark.parametrize(("capability", "quant", "expected"), [
    pytest.param((9, 0), "4bit", ("bfloat16", "float32"), id="hopper-4bit-float32-verdicts"),
    pytest.param((9, 0), "none", ("bfloat16", "bfloat16"), id="hopper-full-bfloat16-weights"),
    pytest.param((8, 0), "8bit", ("bfloat16", "float32"), id="ampere-8bit-float32-verdicts"),
    pytest.param((7, 5), "4bit", ("float32", "float32"), id="turing"),
])
def test_auto_on_cuda_follows_the_compute_capability(monkeypatch, capability, quant, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "a test GPU")
    choice = choose_dtype("auto", "cuda:1", quant)
    assert (choice.dtype, choice.loads) == expected and "a test GPU" in choice.reason
    assert f"{capability[0]}.{capability[1]}" in choice.reason
    if expected == ("bfloat16", "bfloat16"):  # says what float32 verdicts would cost, and how to ask for them
        assert "bfloat16 verdicts" in choice.reason and "--compute-dtype float32" in choice.reason


def test_an_explicit_dtype_is_kept_and_says_so():
    assert choose_dtype("float16", "cpu").dtype == "float16"
    assert choose_dtype("float32", "cuda").reason == "--compute-dtype float32"


def test_the_config_resolves_auto_through_the_same_choice():
    cfg = EvalConfig(device="cpu")
    assert cfg.resolved_dtype == choose_dtype("auto", "cpu").dtype == cfg.dtype_choice.dtype
    assert EvalConfig(device="cpu", compute_dtype="float32").resolved_dtype == "float32"


@pytest.mark.real_cpu
def test_this_machine_reports_what_the_auto_choice_uses():
    """Not a tautology: the CPU this suite runs on must agree with /proc/cpuinfo where Linux has one."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = [line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")] if cpuinfo.is_file() else []
    if not lines:
        pytest.skip("no /proc/cpuinfo flags here")
    flags = lines[0].split()
    assert ("AVX512-BF16" in cpu_bf16_features()) == ("avx512_bf16" in flags)
    assert ("AMX" in cpu_bf16_features()) == ("amx_tile" in flags)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_log_probs_are_summed_in_float64_from_float32_log_softmax_whatever_the_model_runs_in(tiny_adapter, dtype):
    """Per completion, the gate's sum equals a float64 sum of float32 log-softmax values of the same logits:
    no low-precision softmax and no bfloat16 accumulation over hundreds of tokens."""
    from dpo_eval_core.backend import HFBackend, right_pad, target_sums
    from dpo_eval_core.chat import accepts_system
    from dpo_eval_core.models import attach_adapter, load_base, load_tokenizer, resolve

    spec = resolve(EvalConfig(adapter=tiny_adapter))
    tok = load_tokenizer(spec.base)
    model, _ = attach_adapter(load_base(spec.base, "none", dtype, "cpu"), spec)
    backend = HFBackend(model, tok, system_ok=accepts_system(tok), device="cpu")
    rows = backend.scored_rows([(("user", f"Question {i}?"),) for i in range(4)],
                               [f"An answer {'that goes on ' * 20 * i}." for i in range(4)])
    ids, mask = right_pad([p + c for p, c in rows], tok.pad_token_id, "cpu")
    targets = [(len(p), len(p) + len(c)) for p, c in rows]
    with torch.inference_mode():
        ours = target_sums(model, ids, mask, targets)
        logits = model(input_ids=ids, attention_mask=mask).logits
    assert logits.dtype == getattr(torch, dtype)
    logp = logits.float().log_softmax(-1).double()
    expected = [float(sum(logp[r, t - 1, ids[r, t]] for t in range(s, e))) for r, (s, e) in enumerate(targets)]
    assert max(e - s for s, e in targets) > 200
    assert ours == pytest.approx(expected, rel=1e-6, abs=1e-4)


@pytest.mark.parametrize(("dtype", "loads"), [pytest.param("bfloat16", ["float32"], id="bf16-gate-loads-an-fp32-reference"),
                                              pytest.param("float32", [], id="fp32-gate-is-its-own-reference"),
                                              pytest.param("auto", [], id="bf16-pass-gate-lends-its-fp32-weights")])
def test_quantization_probes_compare_against_a_float32_reference_whatever_the_gate_runs_in(
        tiny_adapter, tmp_path, monkeypatch, dtype, loads):
    """On CPU the reference the variants are compared with is float32 ("full precision, unmerged"), never the
    gate's bfloat16 model; a gate whose weights are float32 (float32 itself, or auto's bfloat16 passes on a
    CPU that multiplies bfloat16) lends its own model instead of loading a second copy."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    from tiny import write_pairs

    from dpo_eval_core import quantization as Q

    loaded: list[str] = []
    real = Q.load_adapted
    monkeypatch.setattr(Q, "load_adapted", lambda spec, quant, d, *a, **k: (loaded.append(d), real(spec, quant, d, *a,
                                                                                                  **k))[1])
    run = GateRun(EvalConfig(adapter=tiny_adapter, data=str(write_pairs(tmp_path / "p.jsonl", 12)), device="cpu",
                             compute_dtype=dtype, cache_dir=tmp_path / "cache"))
    assert next(run.model.backend.model.parameters()).dtype == getattr(torch, run.cfg.dtype_choice.loads)
    from dpo_eval_core.families.quantization import reference_probe

    probe = reference_probe(run)
    assert loaded == loads and probe.finite
