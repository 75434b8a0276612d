"""The gate's outputs on a tiny model, run as a user runs it (`pytest evals`): results.json, the
self-contained HTML report, xdist, and the comparison with a baseline."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Iterator

import pytest
from api_server import Server, prefers_longer
from api_server import judge_server as serve_judge
from evals_cli import run_evals
from tiny import make_adapter, write_pairs

from dpo_eval_core.hardware import choose_dtype
from dpo_eval_core.results import load_results, write_json


def gate(out: Path, adapter: Path, data: Path, cache: Path, *args: str) -> tuple[subprocess.CompletedProcess, Path]:
    """`pytest evals` in a subprocess, as from the repository root; returns the process and results path."""
    results = out / "results.json"
    proc = run_evals(results, "--adapter", str(adapter), "--data", str(data), "--eval-cache-dir", str(cache),
                     "--max-new-tokens", "8", *args, timeout=1200)
    return proc, results


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pairs(tmp_path_factory.mktemp("data") / "pairs.jsonl", 40)


@pytest.fixture(scope="module")
def judge_server() -> Iterator[Server]:
    server = serve_judge(prefers_longer)
    yield server
    server.close()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_adapter: Path, pairs: Path,
         judge_server: Server) -> dict[str, Path]:
    """The same gate without xdist and with -n 2 (cold caches both), every claim family included: the judge
    is a chat-completions server on 127.0.0.1 that prefers the longer answer."""
    out = {}
    judge = ("--judge", judge_server.url, "--judge-model", "judge-7b")
    for name, extra in (("serial", ()), ("xdist", ("-n", "2"))):
        d = tmp_path_factory.mktemp(name)
        proc, results = gate(d, tiny_adapter, pairs, d / "cache", *judge, *extra)
        assert proc.returncode in (0, 1) and results.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
        out[name] = results
    return out


def claims_of(path: Path) -> dict[str, dict]:
    return {c["id"]: c for c in json.loads(path.read_text())["claims"]}


def test_xdist_gives_the_same_verdicts_values_and_measurements(runs):
    serial, xdist = (json.loads(runs[k].read_text()) for k in ("serial", "xdist"))
    assert claims_of(runs["serial"]) == claims_of(runs["xdist"])
    assert len(serial["claims"]) > 200  # every family, 69 features each
    assert serial["features"] == xdist["features"] and serial["rewards"] == xdist["rewards"]
    assert (serial["facts"]["processes"], xdist["facts"]["processes"]) == (1, 2)
    # each worker generated its share once: the model-bound tests shared one worker, so nothing twice
    assert serial["facts"]["computed"] == xdist["facts"]["computed"]


def test_results_json_round_trips_byte_for_byte(runs, tmp_path):
    again = tmp_path / "again.json"
    write_json(again, load_results(runs["serial"]))
    assert again.read_bytes() == runs["serial"].read_bytes()


@pytest.mark.real_cpu  # the gate ran in a subprocess, on this machine's CPU as it is
def test_results_hold_every_per_feature_value_and_the_run_facts(runs):
    data = json.loads(runs["serial"].read_text())
    assert data["schema_version"] == 2 and len(data["features"]) == 69
    assert data["config"]["families"]["forgetting"]["max_forgetting"] == 0.04  # each family's settings
    facts = data["facts"]
    for key in ("base_fingerprint", "adapter_sha256", "libraries", "timings_s", "cache", "wall_s"):
        assert facts[key], key
    assert len(facts["data"]["fingerprint"]) == 64 and facts["data"]["pairs"]["train"] > 0
    assert len(data["rewards"]["margins"]) == data["rewards"]["n"] > 0
    expected = choose_dtype(data["config"]["compute_dtype"], "cpu")  # the dtype that ran, and why, not "auto"
    assert facts["compute"] == {"dtype": expected.dtype, "weights": expected.loads, "reason": expected.reason,
                                "device": "cpu"}
    assert facts["model_key"]["dtype"] == expected.identity
    # the plan printed before the work: a chance per statistical gating claim, and the whole gate's
    plan = facts["plan"]
    assert {c["claim"] for c in plan["claims"]} >= {"reward-accuracy", "reward-margin", "sign-agreement-rate"}
    assert 0.0 <= plan["whole_gate"] <= 1.0 and all(0.0 <= c["chance"] <= 1.0 for c in plan["claims"])


def test_the_judge_claims_come_from_the_server_with_every_verdict_in_the_results(runs, judge_server):
    data = json.loads(runs["serial"].read_text())
    j, claims = data["judge"], claims_of(runs["serial"])
    valid = data["facts"]["answered"]["valid"]
    # each run asked the server once per valid pair and order: two runs, cold caches
    assert j["n"] == valid > 0 and len(judge_server.requests) == 2 * 2 * valid
    assert j["judge"] == f"judge-7b at {judge_server.url}" and len(j["pair_ids"]) == len(j["outcomes"]) == valid
    assert j["unparseable"] == j["inconsistent"] == 0  # a length judge is consistent
    for cid in ("judge-win-rate", "judge-length-controlled-win-rate", "judge-consistency"):
        assert claims[cid]["gating"] is False, cid
    assert claims["judge-consistency"]["passed"] and claims["judge-consistency"]["value"] == 1.0
    assert data["facts"]["computed"]["judge_replies"] == 2 * valid


class Resources(HTMLParser):
    """Every URL the page would fetch when opened: src of any element, link hrefs, object data."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value and (name in ("src", "srcset", "data", "poster") or (tag == "link" and name == "href")):
                self.urls.append(value)


def fetched_urls(html: str) -> list[str]:
    parser = Resources()
    parser.feed(html)
    css = re.findall(r"<style[^>]*>(.*?)</style>", html, re.S | re.I)
    return parser.urls + [u for block in css for u in re.findall(r"(?:url\(|@import\s+)[\"']?([^\"')\s;]+)", block)]


@pytest.mark.parametrize("name", ["serial", "xdist"])
@pytest.mark.real_cpu
def test_html_report_is_one_file_with_the_claim_table_and_embedded_plots(runs, name):
    report = runs[name].with_suffix(".html")
    html = report.read_text()
    resources = fetched_urls(html)
    assert resources and all(r.startswith("data:") for r in resources), [r[:80] for r in resources
                                                                         if not r.startswith("data:")]
    assert html.count("data:image/png;base64,") == 3  # feature effects, sign agreement, reward margins
    for column in ("Claim", "Value", "Threshold", "Uncertainty", "Verdict"):
        assert f'data-column-type="{column.lower()}"' in html
    # the rows live in the report's embedded JSON; each carries its claim cells
    assert "col-claim" in html and "reward-accuracy" in html and "sign-agreement-rate" in html
    for fact in ("Run facts", "weights sha256", "fingerprint", "transformers", "recomputed",
                 choose_dtype("auto", "cpu").reason.split(";")[0],
                 "Judge: tuned vs base answers", "length-controlled win rate", "reply, base shown first"):
        assert fact in html, fact


def test_html_report_off_with_p_no_html_still_gates(runs, tiny_adapter, pairs, tmp_path):
    """`-p no:html` turns the report off (the gate's pytest-html hooks are optional), nothing else."""
    proc, results = gate(tmp_path, tiny_adapter, pairs, runs["serial"].parent / "cache", "-k",
                         "checkpoint", "-p", "no:html")  # the warm cache: only the report is in question
    assert proc.returncode == 0 and "INTERNALERROR" not in proc.stdout + proc.stderr, proc.stdout[-3000:]
    assert "3 passed" in proc.stdout and results.is_file() and not results.with_suffix(".html").exists()


def test_pytest_on_the_unit_tests_writes_no_report(tmp_path):
    """Only a session that records gate claims writes results.json and the report."""
    (tmp_path / "test_x.py").write_text("def test_x():\n    pass\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "test_x.py", "-p", "no:cacheprovider",  # plugin: pytest11
                           "--results", "results.json"], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout
    assert not (tmp_path / "results.json").exists() and not (tmp_path / "results.html").exists()


@pytest.mark.real_cpu
def test_the_console_summary_says_what_was_judged_what_blocks_what_was_not_checked_and_where(runs, tiny_adapter,
                                                                                             pairs, tmp_path):
    proc, results = gate(tmp_path, tiny_adapter, pairs, runs["serial"].parent / "cache", "-k",
                         "rewards or forgetting or regression or judge")
    out = proc.stdout
    summary = out[out.index("dpo-eval gate"):]
    doc = json.loads(results.read_text())
    judged = next(line for line in summary.splitlines() if line.startswith("judged: "))
    assert f"adapter {tiny_adapter}" in judged and f"data {pairs}" in judged and f"{choose_dtype('auto', 'cpu').identity} on cpu" in judged
    assert f"({doc['facts']['data']['pairs']['train']} train, {doc['facts']['data']['pairs']['valid']} valid" in judged
    blocking = [c for c in doc["claims"] if c["gating"] and c["outcome"] in ("fail", "inconclusive")]
    assert blocking and proc.returncode == 1 and f"gate: FAILED on {len(blocking)} claim" in summary
    for c in blocking:  # each with its value and threshold
        assert f"  {c['id']}: {c['outcome']}, value " in summary and f"threshold {c['threshold']}" in summary
    # one test per skipped claim family: still-passes and the three not-lower rates, the three judge claims, the two
    # forgetting families; xfailed claims are not "not checked"
    assert ("not checked: no --baseline given (2 tests); no --judge given (3 tests); no --mcq given (2 tests)"
            in summary), summary
    assert f"results.json: {results}" in summary and f"report: {results.with_suffix('.html')}" in summary
    assert "wall time " in summary


def test_a_long_claim_id_gets_a_line_of_its_own_so_the_columns_hold():
    from dpo_eval_core.results import ID_WIDTH, console_summary

    long_id = "quantized-agrees[4bit-nf4-bf16-cuda]"
    claims = [{"id": cid, "gating": True, "applicable": True, "outcome": "pass", "passed": True, "value": 1.0,
               "threshold": "t", "message": "fine", "n_needed": None} for cid in ("adapter-loads", long_id)]
    lines = console_summary({"facts": {}, "claims": claims}, Path("r.json"), {}, None)
    assert len(long_id) > ID_WIDTH and f"        PASS  {long_id}" in lines
    message_column = lines[lines.index(f"        PASS  {long_id}") + 1].index("fine")
    short = next(line for line in lines if "adapter-loads" in line)
    assert short.index("fine") == message_column  # the message starts in the same column either way


# ------------------------------------------------------------------ baseline


def test_same_adapter_against_its_own_baseline_regresses_nowhere_and_says_what_it_cannot_show(runs, tiny_adapter,
                                                                                                pairs, tmp_path):
    proc, results = gate(tmp_path, tiny_adapter, pairs, runs["serial"].parent / "cache", "--baseline",
                         str(runs["serial"]), "-k", "regression", "--gate", "inconclusive=warn")
    claims = claims_of(results)
    regression = {k: c for k, c in claims.items() if k.startswith(("still-passes[", "not-lower["))}
    assert proc.returncode == 0, proc.stdout[-3000:]  # inconclusive = warn: what cannot be shown only warns
    assert len(regression) >= 10 and not any(c["outcome"] == "fail" for c in regression.values())
    # the same answers on a handful of valid pairs cannot show a 2-point bound: the claim says how many would,
    # with 80% power at the next look's one-sided 0.0025 (n > ((2.807 + 0.842)(1 + 1/n))^2 x 0.98 / 0.02: 655):
    # the run is the release's first look, since a baseline and a judge are not data (the release had a judge)
    same = regression["not-lower[reward-accuracy]"]
    assert same["outcome"] == "inconclusive" and same["n_needed"] == 655 and same["value"] == 0.0
    assert json.loads(results.read_text())["facts"]["look"]["number"] == 1
    assert "InconclusiveClaim" in proc.stdout and "could not be shown" in proc.stdout


def test_a_zeroed_adapter_fails_the_regression_claims_naming_what_regressed(runs, tiny_llama, pairs, tmp_path):
    zero = make_adapter(tiny_llama, tmp_path / "zero", init="zero")
    proc, results = gate(tmp_path, zero, pairs, runs["serial"].parent / "cache", "--baseline",
                         str(runs["serial"]), "-k", "regression")
    claims = claims_of(results)
    assert proc.returncode == 1
    for cid in ("still-passes[adapter-changes-model]", "not-lower[reward-accuracy]"):
        assert claims[cid]["outcome"] == "fail" and "REGRESSED" in claims[cid]["message"], cid
    assert "FAILED evals/test_regression.py::test_gating_claim_still_passes[adapter-changes-model]" in proc.stdout
    assert claims["still-passes[adapter-loads]"]["passed"]


@pytest.mark.parametrize("change,fragment", [
    ("data", "it gated other data or another split"),
    ("seed", "it gated other data or another split"),
    ("base", "it was made on another base"),
], ids=["other-data", "other-split", "other-base"])
def test_a_baseline_of_other_data_or_base_is_refused_with_the_reason(runs, tiny_adapter, tiny_mistral, pairs, tmp_path,
                                                                     change, fragment):
    adapter, data, extra = tiny_adapter, pairs, []
    if change == "data":
        data = tmp_path / "fewer.jsonl"
        data.write_text("".join(pairs.read_text().splitlines(keepends=True)[:30]))
    elif change == "seed":
        extra = ["--seed", "1"]
    else:
        adapter = make_adapter(tiny_mistral, tmp_path / "mistral-adapter")
    proc, results = gate(tmp_path, adapter, data, tmp_path / "cache", "--baseline", str(runs["serial"]), *extra)
    out = proc.stdout + proc.stderr
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, out[-3000:]
    assert "Refused, not compared" in out and fragment in out and "Traceback" not in out
    assert not results.exists()


def test_without_baseline_the_regression_tests_skip_with_the_reason(runs, tiny_adapter, pairs, tmp_path):
    proc, _ = gate(tmp_path, tiny_adapter, pairs, runs["serial"].parent / "cache", "-k", "regression", "-rs")
    assert proc.returncode == 0
    n_regression_tests = 2  # still-passes and not-lower, each one test that names what is missing
    assert "no --baseline given" in proc.stdout and f"{n_regression_tests} skipped" in proc.stdout


def test_without_a_judge_the_judge_tests_skip_with_the_reason(runs, tiny_adapter, pairs, tmp_path):
    proc, _ = gate(tmp_path, tiny_adapter, pairs, runs["serial"].parent / "cache", "-k", "judge", "-rs")
    assert proc.returncode == 0 and "3 skipped" in proc.stdout and "no --judge given" in proc.stdout, proc.stdout[-2000:]
