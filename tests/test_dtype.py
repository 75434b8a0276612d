"""The compute dtype: what `auto` picks and why, and that bfloat16 keeps the reward verdicts of float32.

The equality tests against TRL and lm-evaluation-harness pin float32 on both sides; this file states
how far bfloat16 may move a reward margin on real pairs and checks it on the demo's adapter and pairs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dpo_eval_core import claims as C
from dpo_eval_core.cache import Cache
from dpo_eval_core.config import EvalConfig, GateConfig, default_cache_dir
from dpo_eval_core.demo import local_bases, with_demo_defaults
from dpo_eval_core.gate import GateRun
from dpo_eval_core.hardware import choose_dtype, cpu_bf16_features

RELATIVE, ABSOLUTE = 0.02, 0.01
"""bfloat16 keeps 8 bits of mantissa: each weight and activation is rounded by up to 2**-9 relative,
and a margin is a difference of four sums over tens of tokens. Measured on the demo's 64 valid pairs
(2 cores, AVX512-BF16): the largest |margin(bf16) - margin(fp32)| is well inside 2% of |margin| + 0.01."""


@pytest.mark.parametrize(("features", "expected"), [
    pytest.param({"_is_amx_tile_supported": True, "_is_avx512_bf16_supported": True}, "bfloat16", id="amx"),
    pytest.param({"_is_amx_tile_supported": False, "_is_avx512_bf16_supported": True}, "bfloat16",
                 id="avx512-bf16"),
    pytest.param({"_is_amx_tile_supported": False, "_is_avx512_bf16_supported": False}, "float32",
                 id="neither"),
])
def test_auto_picks_bfloat16_on_cpus_that_multiply_it_natively(monkeypatch, features, expected):
    for name, value in features.items():
        monkeypatch.setattr(torch.cpu, name, lambda v=value: v)
    choice = choose_dtype("auto", "cpu")
    assert choice.dtype == expected
    assert ("AMX" in choice.reason) == features["_is_amx_tile_supported"] or expected == "float32"
    assert choice.reason.startswith("auto: ") and torch.backends.cpu.get_cpu_capability() in choice.reason


@pytest.mark.parametrize(("capability", "expected"), [
    pytest.param((9, 0), "bfloat16", id="hopper"), pytest.param((8, 0), "bfloat16", id="ampere"),
    pytest.param((7, 5), "float32", id="turing"),
])
def test_auto_on_cuda_follows_the_compute_capability(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "a test GPU")
    choice = choose_dtype("auto", "cuda:1")
    assert choice.dtype == expected and "a test GPU" in choice.reason
    assert f"{capability[0]}.{capability[1]}" in choice.reason


def test_an_explicit_dtype_is_kept_and_says_so():
    assert choose_dtype("float16", "cpu").dtype == "float16"
    assert choose_dtype("float32", "cuda").reason == "--compute-dtype float32"


def test_the_config_resolves_auto_through_the_same_choice():
    cfg = EvalConfig(device="cpu")
    assert cfg.resolved_dtype == choose_dtype("auto", "cpu").dtype == cfg.dtype_choice.dtype
    assert EvalConfig(device="cpu", compute_dtype="float32").resolved_dtype == "float32"


def test_this_machine_reports_what_the_auto_choice_uses():
    """Not a tautology: the CPU this suite runs on must agree with /proc/cpuinfo where Linux has one."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = [line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")] if cpuinfo.is_file() else []
    if not lines:
        pytest.skip("no /proc/cpuinfo flags here")
    flags = lines[0].split()
    assert ("AVX512-BF16" in cpu_bf16_features()) == ("avx512_bf16" in flags)
    assert ("AMX" in cpu_bf16_features()) == ("amx_tile" in flags)


@pytest.fixture(scope="module")
def demo_rewards(tmp_path_factory):
    """The demo adapter's rewards on the demo's valid pairs, once per dtype (one model in memory at a time)."""
    out = {}
    for dtype in ("float32", "bfloat16"):
        cfg = with_demo_defaults(EvalConfig(compute_dtype=dtype, device="cpu",
                                            cache_dir=tmp_path_factory.mktemp(dtype)))
        run = GateRun(cfg, cache=Cache(cfg.cache_dir, enabled=False), local_bases=local_bases(default_cache_dir()))
        out[dtype] = run.reward_summary
        run.free()
    return out


def test_bfloat16_margins_stay_within_tolerance_of_float32_on_real_pairs(demo_rewards):
    fp32, bf16 = demo_rewards["float32"], demo_rewards["bfloat16"]
    assert fp32.pair_ids == bf16.pair_ids and fp32.n >= 50
    m32, m16 = np.array(fp32.margins), np.array(bf16.margins)
    diff = np.abs(m16 - m32)
    worst = int(np.argmax(diff - RELATIVE * np.abs(m32)))
    assert np.all(diff <= RELATIVE * np.abs(m32) + ABSOLUTE), (
        f"pair {fp32.pair_ids[worst]}: margin {m32[worst]:.4f} in float32, {m16[worst]:.4f} in bfloat16")
    assert not np.allclose(m16, m32, rtol=0, atol=1e-7), "both runs used the same dtype"


def test_bfloat16_gives_the_same_reward_accuracy_and_verdicts(demo_rewards):
    fp32, bf16 = demo_rewards["float32"], demo_rewards["bfloat16"]
    assert fp32.correct == bf16.correct and fp32.correct_per_token == bf16.correct_per_token
    verdicts = {dtype: {c.id: c.outcome for c in C.rewards(s, GateConfig())} for dtype, s in demo_rewards.items()}
    assert verdicts["float32"] == verdicts["bfloat16"] and len(verdicts["float32"]) == 3


@pytest.mark.parametrize(("dtype", "loads"), [pytest.param("bfloat16", ["float32"], id="bf16-gate-loads-an-fp32-reference"),
                                              pytest.param("float32", [], id="fp32-gate-is-its-own-reference")])
def test_quantization_probes_compare_against_a_float32_reference_whatever_the_gate_runs_in(
        tiny_adapter, tmp_path, monkeypatch, dtype, loads):
    """On CPU the reference the variants are compared with is float32 ("full precision, unmerged"), never the
    gate's bfloat16 model; a float32 gate lends its own model instead of loading a second copy."""
    from tiny import write_pairs

    from dpo_eval_core import quantization as Q

    loaded: list[str] = []
    real = Q.load_adapted
    monkeypatch.setattr(Q, "load_adapted", lambda spec, quant, d, *a, **k: (loaded.append(d), real(spec, quant, d, *a,
                                                                                                  **k))[1])
    run = GateRun(EvalConfig(adapter=tiny_adapter, data=str(write_pairs(tmp_path / "p.jsonl", 12)), device="cpu",
                             compute_dtype=dtype, cache_dir=tmp_path / "cache"))
    assert next(run.model.backend.model.parameters()).dtype == getattr(torch, dtype)
    probe = run.reference_probe
    assert loaded == loads and probe.finite
