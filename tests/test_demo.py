"""The bundled demo: deterministic pairs with a real style difference, an adapter really trained by
DPO on the gate's train split only, and the gate run end to end on it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from evals_cli import run_evals

from dpo_eval_core.data import load_pairs
from dpo_eval_core.demo import (
    DEMO_ADAPTER_DIR,
    DEMO_SERIES_DIR,
    DEMO_SWAPPED_DIR,
    demo_pairs,
    demo_pairs_sha256,
)
from dpo_eval_core.demo.pairs import write_demo_pairs


def test_demo_pairs_are_deterministic_many_and_distinct():
    rows = demo_pairs()
    assert rows == demo_pairs() and len(rows) >= 300
    assert len({r["prompt"] + r["system"] for r in rows}) == len(rows)
    assert all(len(r["chosen"]) < len(r["rejected"]) for r in rows)  # the style difference: concise vs rambling


def test_demo_adapter_was_trained_on_these_pairs_and_only_their_train_split(tmp_path):
    info = json.loads((DEMO_ADAPTER_DIR / "training_config.json").read_text())
    assert info["demo_pairs_sha256"] == demo_pairs_sha256()
    ps = load_pairs(str(write_demo_pairs(tmp_path / "d.jsonl")))  # the gate's default split
    assert (info["n_train"], info["n_valid"]) == (ps.counts()["train"], ps.counts()["valid"])


def test_the_demo_series_is_the_demo_recipes_own_training_run_saved_four_times():
    from safetensors.torch import load_file

    from dpo_eval_core.series import find_series

    series = find_series(DEMO_SERIES_DIR)
    assert [c.step for c in series.gated] == [10, 20, 30, 37] and not series.notes  # steps from trainer_state.json
    info = json.loads((DEMO_SERIES_DIR / "training_config.json").read_text())
    assert info["checkpoints"] == 4 and info["demo_pairs_sha256"] == demo_pairs_sha256()
    assert info["recipe"] == json.loads((DEMO_ADAPTER_DIR / "training_config.json").read_text())["recipe"]
    last = load_file(DEMO_SERIES_DIR / "checkpoint-37" / "adapter_model.safetensors")
    final = load_file(DEMO_ADAPTER_DIR / "adapter_model.safetensors")
    assert set(last) == set(final) and all(v.dtype == torch.bfloat16 for v in last.values())  # small files
    for k, v in final.items():  # the run ends at the bundled adapter (measured: 0.18% at most, bfloat16's rounding)
        assert float((last[k].float() - v).norm() / v.norm()) < 0.01, k
    first = load_file(DEMO_SERIES_DIR / "checkpoint-10" / "adapter_model.safetensors")
    assert any(not torch.equal(first[k], last[k]) for k in last)  # the checkpoints are steps of one run


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_the_demo_series_is_gated_on_the_demo_data_and_the_session_gates_the_checkpoint_it_names(tmp_path, workers):
    proc, claims = run_gate(tmp_path, "--adapter", "demo-series", *SMALL, "--gate", "gating=reward-margin",
                            "-k", "reward_margin", "--looks", str(tmp_path / "looks.json"), *workers)
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-3000:]  # decided, not refused
    results = json.loads((tmp_path / "results.json").read_text())
    series = results["series"]
    assert [c["step"] for c in series["checkpoints"]] == [10, 20, 30, 37] and series["tail"] == pytest.approx(0.025 / 4)
    shipped = series["chosen"] or "checkpoint-37"  # none shipping: the session gates the latest
    assert Path(results["facts"]["adapter"]).parts[-4:] == (DEMO_SERIES_DIR / shipped).parts[-4:]
    assert results["facts"]["data"]["source"].endswith("demo_pairs.jsonl")  # the demo's own pairs by default
    assert f"series: {series['chosen']} ships" in proc.stdout if series["chosen"] else "no checkpoint can ship" in proc.stdout
    assert claims["reward-margin"]["outcome"] == next(c for c in series["checkpoints"]
                                                      if c["name"] == shipped)["outcomes"]["reward-margin"]


def test_demo_adapter_is_really_dpo_trained():
    metrics = json.loads((DEMO_ADAPTER_DIR / "eval_metrics.json").read_text())
    assert metrics["eval_rewards/accuracies"] >= 0.8 and metrics["eval_rewards/margins"] > 0
    cfg = json.loads((DEMO_ADAPTER_DIR / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "dpo-eval/demo-base" and (DEMO_ADAPTER_DIR /
                                                                        "adapter_model.safetensors").is_file()


def run_gate(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess,
                                                                                     dict]:
    results = tmp_path / "results.json"
    proc = run_evals(results, *args, env=env)
    assert results.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, {c["id"]: c for c in json.loads(results.read_text())["claims"]}


SMALL = ("--max-samples", "16", "--max-new-tokens", "48", "--mcq-max-questions", "12")


@pytest.fixture(scope="module")
def demo_small(tmp_path_factory: pytest.TempPathFactory, worker_id: str
               ) -> tuple[subprocess.CompletedProcess, dict, Path]:
    """The demo gate on 16 pairs per split, quantization left out: the CI-sized end-to-end run. It runs once
    per session: xdist workers share it through a lock in their common temp folder (pytest-xdist's recipe;
    xdist_group marks cannot do it on pytest >= 9.2, pytest-xdist#1386)."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    root = root if worker_id == "master" else root.parent
    tmp = root / "demo-small"
    with FileLock(str(root / "demo-small.lock")):
        done = tmp / "process.json"
        if not done.is_file():
            tmp.mkdir(exist_ok=True)
            proc, _ = run_gate(tmp, *SMALL, "-k", "not quantization", "--junitxml", str(tmp / "junit.xml"),
                               env={"GITHUB_STEP_SUMMARY": str(tmp / "summary.md")})
            done.write_text(json.dumps({"args": proc.args, "returncode": proc.returncode, "stdout": proc.stdout,
                                        "stderr": proc.stderr}))
        ran = json.loads(done.read_text())
    proc = subprocess.CompletedProcess(ran["args"], ran["returncode"], ran["stdout"], ran["stderr"])
    results = tmp / "results.json"
    return proc, {c["id"]: c for c in json.loads(results.read_text())["claims"]}, results


def test_demo_gate_end_to_end_on_a_small_sample_offline(demo_small):
    """The whole chain on the real demo model: load, generate, 69 features, statistics, rewards."""
    proc, claims, _ = demo_small
    for cid in ("adapter-loads", "adapter-changes-model", "tokenizer-ready", "reward-accuracy", "reward-margin",
                "data-signal"):
        assert claims[cid]["passed"], (cid, claims[cid]["message"])
    assert "sign-agreement-rate" in claims and len([c for c in claims if c.startswith("tuned-differs[")]) == 69
    assert proc.returncode in (0, 1), proc.stdout[-3000:]


def test_demo_gate_asks_its_arc_sample_in_cloze_form_and_reports_forgetting(demo_small):
    """The demo brings 200 ARC-Easy questions (--mcq-max-questions 12 here): tuned and base from the one model,
    cloze prompts, gated on acc_norm; on 12 questions the claim cannot be decided and says so."""
    _, claims, results = demo_small
    held, acc = claims["no-forgetting[arc_easy_sample]"], claims["mcq-accuracy[arc_easy_sample]"]
    assert held["gating"] and not acc["gating"] and held["n"] == acc["n"] == 12
    assert "(Tango, paired)" in held["message"] and "acc_norm tuned" in acc["message"]
    assert held["outcome"] in ("inconclusive", "fail") and held["outcome"] != "pass"  # 12 questions show no bound
    summary = json.loads(results.read_text())["forgetting"]["arc_easy_sample"]
    assert summary["n"] == 12 and summary["settings"] == {"format": "cloze", "prompt": "chat", "shots": 0,
                                                          "max_questions": 12, "metric": "acc_norm"}
    assert summary["lost"] + summary["gained"] == sum(t != b for t, b in zip(summary["tuned_right"],
                                                                              summary["base_right"]))
    report = results.with_suffix(".html").read_text()
    assert "Forgetting: multiple-choice accuracy" in report and "arc_easy_sample" in report


def test_junit_xml_carries_every_claims_value_threshold_interval_n_and_gating(demo_small):
    """CI dashboards read JUnit XML: each gate test's properties hold its claim."""
    import xml.etree.ElementTree as ET

    _, claims, results = demo_small
    cases = ET.parse(results.parent / "junit.xml").getroot().iter("testcase")
    props = [{p.get("name"): p.get("value") for p in case.iter("property")} for case in cases]
    by_id = {p["claim_id"]: p for p in props if "claim_id" in p}
    assert set(by_id) == set(claims)
    margin = by_id["reward-margin"]
    assert float(margin["claim_value"]) == pytest.approx(claims["reward-margin"]["value"])
    assert float(margin["claim_ci_low"]) == pytest.approx(claims["reward-margin"]["ci"][0])
    assert float(margin["claim_ci_low"]) > 0
    assert (margin["claim_threshold"], margin["claim_n"], margin["claim_gating"]) == ("CI low > 0", "16", "True")
    assert json.loads(margin["dpo_eval_claim"])["message"] == claims["reward-margin"]["message"]


def test_the_gate_writes_a_markdown_table_of_gating_claims_to_the_github_job_summary(demo_small):
    _, claims, results = demo_small
    summary = (results.parent / "summary.md").read_text()
    gating = [cid for cid, c in claims.items() if c["gating"] and c["applicable"]]
    assert summary.startswith("### dpo-eval gate: ") and all(f"| `{cid}` |" in summary for cid in gating)
    assert "| `data-signal[" not in summary  # per-feature claims do not gate by default


@pytest.mark.slow  # two more demo gate runs (240 s); test_report's zeroed-adapter and own-baseline tests keep --baseline in CI
def test_ci_baseline_scenario_swapped_preferences_regress_same_adapter_does_not(demo_small, tmp_path):
    """CI gates a new adapter against the last release's results.json: an adapter trained on
    reversed preferences fails the regression claims, naming them; the released adapter fails none."""
    _, _, baseline = demo_small
    proc, claims = run_gate(tmp_path / "swapped", *SMALL, "--baseline", str(baseline), "--data", "demo", "--adapter",
                            str(DEMO_SWAPPED_DIR), "-k", "regression")
    assert proc.returncode == 1, proc.stdout[-3000:]
    for cid in ("still-passes[reward-accuracy]", "still-passes[reward-margin]", "not-lower[reward-accuracy]"):
        assert not claims[cid]["passed"] and "REGRESSED" in claims[cid]["message"], (cid, claims[cid]["message"])
        assert f"FAIL  {cid}" in proc.stdout
    assert claims["still-passes[adapter-loads]"]["passed"]

    # the released adapter again: nothing regresses; on 16 pairs "not lower by 2 points" cannot be shown, which
    # fails the run by default and warns with inconclusive = warn
    proc, claims = run_gate(tmp_path / "same", *SMALL, "--baseline", str(baseline), "-k", "regression", "--gate",
                            "inconclusive=warn")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert not any(c["outcome"] == "fail" for c in claims.values())
    assert claims["not-lower[reward-accuracy]"]["outcome"] == "inconclusive"


@pytest.mark.slow
def test_full_demo_gate_passes(tmp_path):
    """README's first command on a fresh machine: the demo adapter's first look (the session's small demo runs
    are other looks at it, so this one keeps a ledger of its own)."""
    proc, claims = run_gate(tmp_path, "--looks", str(tmp_path / "looks.json"))
    assert proc.returncode == 0, proc.stdout[-5000:]


@pytest.mark.slow  # the 16-pair validity run in CI gates the zero control on the demo too
def test_zero_adapter_on_the_demo_base_scores_zero_rewards_and_fails(tmp_path):
    from dpo_eval_core.demo.controls import zero_adapter

    zero = zero_adapter(DEMO_ADAPTER_DIR, tmp_path / "zero")
    proc, claims = run_gate(tmp_path, "--adapter", str(zero), "--data", "demo", "--max-samples", "8", "-k",
                            "rewards or changes_the_model")
    assert proc.returncode == 1
    acc, margin = claims["reward-accuracy"], claims["reward-margin"]
    assert (acc["value"], margin["value"], acc["passed"], margin["passed"]) == (0.0, 0.0, False, False)
    assert "every reward is exactly 0" in acc["message"]
    assert not claims["adapter-changes-model"]["passed"]


def test_tampered_demo_weights_are_converted_again(tmp_path, monkeypatch):
    from dpo_eval_core.demo import base

    calls = []

    def fake_convert(src, target):
        target.mkdir(parents=True, exist_ok=True)
        (target / "model.safetensors").write_bytes(b"weights")
        (target / base.MARKER).write_text(json.dumps({"weights_sha256": base.sha256_file(target / "model.safetensors")}))
        calls.append(target)

    monkeypatch.setattr(base, "_convert", fake_convert)
    monkeypatch.setattr(base, "gguf_path", lambda: Path("unused.gguf"))
    target = base.demo_base_dir(tmp_path)
    assert base.demo_base_dir(tmp_path) == target and len(calls) == 1  # verified, reused
    (target / "model.safetensors").write_bytes(b"tampered")
    with pytest.warns(UserWarning, match="does not match the digest"):
        base.demo_base_dir(tmp_path)
    assert len(calls) == 2
