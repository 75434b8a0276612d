"""Bad inputs and faults: each ends in a clear message and a non-zero exit, or a documented recovery.

Exit statuses: 4 = the gate could not run (bad input or environment; the message names the input and
the fix), 1 = it ran and a gating claim failed, 0 = it ran and every gating claim held.
Every case starts from a cache holding an entry and an earlier results file, and checks that both
are byte-for-byte intact afterwards.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from tiny import make_adapter, make_base, make_silent_base

from dpo_eval_core.cache import Cache, make_key

PLUGINS = ["-p", "no:cacheprovider"]  # the dpo-eval plugin comes from its pytest11 entry point
GATE = "import pytest\n" + "".join(f'''
@pytest.mark.claim("{cid}")
def test_{cid.replace("-", "_")}(claim_id, check_claim):
    check_claim(claim_id)
''' for cid in ("adapter-loads", "reward-accuracy", "data-signal", "sign-agreement-rate"))
PROBE_TEST = '''

@pytest.mark.claim("no-nan-logits[*]")
def test_no_nan_logits(claim_id, check_claim):
    check_claim(claim_id)
'''
GOOD = [{"prompt": f"Question {i}?", "chosen": f"Answer {i}.", "rejected": f"Well, um, I guess {i}, maybe, or so."}
        for i in range(16)]
ONLY_LOADS = ["--gate", "gating=adapter-loads"]


@dataclass
class Ctx:
    tmp: Path
    base: Path
    adapter: Path
    cache: Path
    results: Path

    def data(self, rows: list | None = None, name: str = "pairs.jsonl", raw: bytes | None = None) -> str:
        path = self.tmp / name
        if raw is not None:
            path.write_bytes(raw)
        else:
            path.write_text("".join(json.dumps(r) + "\n" for r in (GOOD if rows is None else rows)))
        return str(path)

    def adapter_copy(self, name: str, edit: Callable[[Path], None]) -> str:
        target = self.tmp / name
        shutil.copytree(self.adapter, target)
        edit(target)
        return str(target)

    def args(self, *extra: str, adapter: str | None = None, data: str | None = None) -> list[str]:
        return ["--adapter", adapter or str(self.adapter), "--data", data or self.data(), "--eval-cache-dir",
                str(self.cache), "--results", str(self.results), "--max-new-tokens", "6", *extra]


@pytest.fixture
def ctx(tmp_path: Path, tiny_llama: Path, tiny_adapter: Path) -> Ctx:
    cache = tmp_path / "cache"
    Cache(cache).put("sentinel", make_key("sentinel", {"x": 1}), {"kept": True})
    results = tmp_path / "results.json"
    results.write_text('{"earlier": "run"}\n')
    return Ctx(tmp_path, tiny_llama, tiny_adapter, cache, results)


def snapshot(ctx: Ctx) -> tuple[bytes, bytes]:
    entry = next((ctx.cache / "sentinel").rglob("*.json"))
    return entry.read_bytes(), ctx.results.read_bytes()


def _config_without(key: str) -> Callable[[Path], None]:
    def edit(p: Path) -> None:
        (p / "adapter_config.json").unlink() if key == "*" else None
    return edit


def _set_config(**changes) -> Callable[[Path], None]:
    def edit(p: Path) -> None:
        cfg = json.loads((p / "adapter_config.json").read_text())
        cfg.update(changes)
        (p / "adapter_config.json").write_text(json.dumps(cfg))
    return edit


def _pickle_only(p: Path) -> None:
    (p / "adapter_model.safetensors").rename(p / "adapter_model.bin")


def _no_chat_template(ctx: Ctx) -> str:
    base = ctx.tmp / "notemplate"
    shutil.copytree(ctx.base, base)
    for name in ("chat_template.jinja",):
        (base / name).unlink(missing_ok=True)
    cfg = json.loads((base / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (base / "tokenizer_config.json").write_text(json.dumps(cfg))
    return str(base)


# (id, args builder, exit status, message fragment)
CASES: list[tuple[str, Callable[[Ctx], list[str]], int, str]] = [
    ("missing-fields", lambda c: c.args(data=c.data([{"prompt": "p", "answer": "a"}])), 4, "Found columns: answer"),
    ("empty-fields", lambda c: c.args(data=c.data([{"prompt": "", "chosen": "", "rejected": "r"}] * 3)), 4,
     "dropped empty: 3"),
    ("null-fields", lambda c: c.args(data=c.data([{"prompt": None, "chosen": "c", "rejected": "r"}])), 4,
     "dropped empty: 1"),
    ("non-text-fields", lambda c: c.args(data=c.data([{"prompt": "p", "chosen": 3, "rejected": [1]}])), 4,
     "not_text: 1"),
    ("malformed-jsonl-line", lambda c: c.args(data=c.data(raw=(json.dumps(GOOD[0]) + "\n{oops\n").encode())), 4,
     "line 2 is not valid JSON"),
    ("binary-garbage", lambda c: c.args(data=c.data(raw=bytes(range(256)) * 4)), 4, "not UTF-8 text"),
    ("missing-data-file", lambda c: c.args(data=str(c.tmp / "nope.jsonl")), 4, "file not found"),
    ("unknown-extension", lambda c: c.args(data=c.data(name="pairs.xml")), 4, "unknown extension '.xml'"),
    ("empty-data-file", lambda c: c.args(data=c.data([])), 4, "the dataset is empty"),
    ("chosen-identical-to-rejected", lambda c: c.args(data=c.data([{"prompt": "p", "chosen": "s", "rejected": "s"}])),
     4, "identical: 1"),
    ("columns-name-a-missing-column", lambda c: c.args("--columns", "q=prompt", data=c.data([{"x": 1}])), 4,
     "Found columns: x"),
    ("fewer-pairs-than-statistics-need", lambda c: c.args(data=c.data(GOOD[:4])), 1, "pairs with a difference are needed"),
    ("adapter-dir-missing", lambda c: c.args(adapter=str(c.tmp / "nowhere")), 4, "adapter_config.json"),
    ("adapter-dir-empty", lambda c: c.args(adapter=c.adapter_copy("empty", lambda p: [f.unlink() for f in p.iterdir()])),
     4, "adapter_config.json"),
    ("adapter-pickle-weights-only", lambda c: c.args(adapter=c.adapter_copy("pickled", _pickle_only)), 4,
     "only pickle weights"),
    ("adapter-for-another-base", lambda c: c.args("--base-model", str(make_base(c.tmp / "wide", hidden=96))), 4,
     "does not fit the base"),
    ("adapter-rank-mismatch", lambda c: c.args(adapter=c.adapter_copy("rank", _set_config(r=8))), 4,
     "does not fit the base"),
    ("adapter-target-module-mismatch", lambda c: c.args(adapter=c.adapter_copy("tm", _set_config(
        target_modules=["gate_proj"]))), 1, "first unexpected: base_model.model.model.layers.0.self_attn.q_proj"),
    ("base-model-path-missing", lambda c: c.args("--base-model", str(c.tmp / "no-base")), 4, "directory not found"),
    ("tokenizer-without-chat-template", lambda c: c.args("--base-model", _no_chat_template(c)), 4, "no chat template"),
    ("unknown-quant", lambda c: c.args("--quant", "2bit"), 4, "--quant='2bit' is invalid"),
    ("max-new-tokens-0", lambda c: c.args("--max-new-tokens", "0"), 4, "--max-new-tokens=0 is invalid"),
    ("max-samples-0", lambda c: c.args("--max-samples", "0"), 4, "--max-samples=0 is invalid"),
    ("empty-generation-for-every-prompt", lambda c: c.args(
        adapter=str(make_adapter(make_silent_base(c.tmp / "silent"), c.tmp / "silent-ad"))), 1,
     "answer is empty (the model emitted EOS first)"),
    ("100000-character-answer", lambda c: c.args(*ONLY_LOADS, data=c.data(
        GOOD + [{"prompt": "Long?", "chosen": "Short.", "rejected": "word " * 20000}])), 0, "gate: PASSED"),
    ("non-english-and-emoji", lambda c: c.args(*ONLY_LOADS, data=c.data(
        GOOD + [{"prompt": "¿Qué es el ADN? 🧬", "chosen": "Una molécula. ✅", "rejected": "不知道 🤷"}])), 0,
     "gate: PASSED"),
    ("duplicate-pairs", lambda c: c.args(*ONLY_LOADS, data=c.data(GOOD + GOOD[:3])), 0, "gate: PASSED"),
]


SLOW_CASES = {"100000-character-answer", "non-english-and-emoji", "duplicate-pairs", "adapter-rank-mismatch",
              "tokenizer-without-chat-template", "fewer-pairs-than-statistics-need"}
"""Whole gates on text edge cases (40 s each on 2 cores), and three gates that load the model (25 s each) whose
check CI keeps elsewhere: outside CI's 25 minutes. Duplicates are counted by test_duplicates_are_counted_in_results;
a rank mismatch is refused by the check adapter-for-another-base runs ("does not fit the base"); a tokenizer
without a chat template by test_models' unit test; too few pairs by test_stats (pairs_needed)."""


@pytest.mark.parametrize("build,status,fragment", [
    pytest.param(b, s, f, id=i, marks=[pytest.mark.slow] * (i in SLOW_CASES)) for i, b, s, f in CASES])
def test_fault_ends_in_a_clear_message_and_leaves_cache_and_results_intact(pytester, ctx, build, status, fragment):
    before = snapshot(ctx)
    pytester.makepyfile(test_gate=GATE)
    result = pytester.runpytest_subprocess(*PLUGINS, *build(ctx))
    out = result.stdout.str() + result.stderr.str()
    assert result.ret == status, out[-3000:]
    assert fragment in out, out[-3000:]
    assert "Traceback" not in out
    entry, results = snapshot(ctx)
    assert entry == before[0]
    if status != 0:  # a failing or aborted run never leaves a passing verdict behind; aborted ones write nothing
        assert results == before[1] or json.loads(results)["claims"]
        if status == 4:
            assert results == before[1]
            assert "_pytest" not in out and "dpo-eval: " in result.stderr.str()  # one format, none of pytest's


def test_a_stop_under_xdist_is_exit_4_with_the_reason_not_a_crash_or_a_failed_claim(pytester, ctx):
    """An adapter for another base, found once workers run: the run ends as the serial one does."""
    before = snapshot(ctx)
    pytester.makepyfile(test_gate=GATE)
    wide = str(make_base(ctx.tmp / "wide", hidden=96))
    result = pytester.runpytest_subprocess(*PLUGINS, "-n", "2", *ctx.args("--base-model", wide))
    out = result.stdout.str() + result.stderr.str()
    assert result.ret == 4, out[-3000:]
    assert "does not fit the base" in result.stderr.str() and "INTERNALERROR" not in out and "_pytest" not in out
    assert " failed" not in result.stdout.str().splitlines()[-1]
    assert snapshot(ctx) == before


def test_duplicates_are_counted_in_results(pytester, ctx):
    pytester.makepyfile(test_gate=GATE)
    pytester.runpytest_subprocess(*PLUGINS, *ctx.args(*ONLY_LOADS, data=ctx.data(GOOD + GOOD[:3])))
    assert json.loads(ctx.results.read_text())["facts"]["data"]["dropped"]["duplicate"] == 3


FAULTS = """
import errno, math, os

import dpo_eval_core.features as features

cache, fault = os.environ["FAULT_CACHE"], os.environ["FAULT"]
if fault == "nan-features":
    features.feature_rows = lambda texts, *a, **k: ([{f: math.nan for f in features.FEATURE_NAMES} for _ in texts], 0)
elif fault == "cuda-oom":  # what torch raises when a quantization probe's model does not fit the GPU
    import torch

    import dpo_eval_core.quantization as quantization

    def out_of_memory(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity "
                                     "of 23.64 GiB of which 1.12 GiB is free. Of the allocated memory 21.9 GiB ...")

    quantization.cached_measurement = out_of_memory
else:  # root ignores chmod, so the write call itself fails, as a read-only or full disk would
    real = os.replace

    def replace(src, dst, *a, **k):
        if str(dst).startswith(cache):
            raise OSError(int(fault), os.strerror(int(fault)))
        return real(src, dst, *a, **k)

    os.replace = replace
"""
"""A -p plugin for the subprocess runs below: in-process runs would unload spaCy's compiled registries."""


def run_with_fault(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ctx: Ctx, fault: str):
    pytester.makepyfile(test_gate=GATE, faults=FAULTS)
    monkeypatch.setenv("FAULT_CACHE", str(ctx.cache))
    monkeypatch.setenv("FAULT", fault)
    return pytester.runpytest_subprocess("-p", "faults", *PLUGINS, *ctx.args())


@pytest.mark.parametrize("err", [errno.EROFS, errno.ENOSPC], ids=["read-only-cache-dir", "disk-full"])
def test_unwritable_cache_stops_with_the_fix_and_keeps_entries(pytester, ctx, monkeypatch, err):
    before = snapshot(ctx)
    result = run_with_fault(pytester, monkeypatch, ctx, str(err))
    out = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "cannot write the cache entry" in out and "--no-cache" in out and os.strerror(err) in out
    assert snapshot(ctx) == before
    assert not list(ctx.cache.rglob("*.tmp"))


def test_out_of_memory_in_the_probes_ends_in_exit_4_with_the_phase_the_memory_and_the_options(pytester, ctx,
                                                                                              monkeypatch):
    pytester.makepyfile(test_gate=GATE + PROBE_TEST, faults=FAULTS)
    monkeypatch.setenv("FAULT_CACHE", str(ctx.cache))
    monkeypatch.setenv("FAULT", "cuda-oom")
    result = pytester.runpytest_subprocess("-p", "faults", *PLUGINS, *ctx.args())
    out = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR, out[-3000:]
    assert "out of memory while quantization" in out and "(2.00 GiB asked, 1.12 GiB free)" in out
    for option in ("--quant 4bit", "--batch-tokens", "--batch-size", '-k "not quantization"'):
        assert option in out
    assert "Traceback" not in out


def test_features_nan_for_every_row_fail_the_data_claims(pytester, ctx, monkeypatch):
    result = run_with_fault(pytester, monkeypatch, ctx, "nan-features")
    out = result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert "0 of 69 features differ" in out


@pytest.mark.slow  # two gates at once on 2 cores (66 s)
def test_two_runs_sharing_one_cache_at_once_agree(ctx, tmp_path):
    test_file = tmp_path / "runs" / "test_gate.py"
    test_file.parent.mkdir()
    test_file.write_text(GATE)
    procs = []
    for k in range(2):
        args = ctx.args("--results", str(tmp_path / f"r{k}.json"))
        procs.append(subprocess.Popen([sys.executable, "-m", "pytest", str(test_file), *PLUGINS, "-q", *args],
                                      cwd=test_file.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    codes = [p.wait(timeout=600) for p in procs]
    assert codes[0] == codes[1] and codes[0] in (0, 1)
    claims = [{c["id"]: (c["passed"], c["value"]) for c in json.loads((tmp_path / f"r{k}.json").read_text())["claims"]}
              for k in range(2)]
    assert claims[0] == claims[1]
    assert Cache(ctx.cache).get("sentinel", make_key("sentinel", {"x": 1})) == {"kept": True}


GATE_MCQ = '''import pytest


@pytest.mark.claim("no-forgetting[*]")
def test_no_forgetting(claim_id, check_claim):
    check_claim(claim_id)
'''
MCQ = [{"question": f"What is {i} plus {i}?", "choices": [str(2 * i), str(2 * i + 1)], "answer": 0} for i in range(6)]


@pytest.mark.parametrize("mcq_args, status, fragment", [
    pytest.param(lambda c: ["--mcq", str(c.tmp / "nope.jsonl")], 4, "nope.jsonl: file not found", id="missing-file"),
    pytest.param(lambda c: ["--mcq", c.data([{"stem": "Q?", "options": "a|b"}], name="bad.jsonl")], 4,
                 "no multiple-choice columns. Found columns: options, stem", id="no-choice-columns"),
    pytest.param(lambda c: ["--mcq", c.data(MCQ, name="mc.jsonl"), "--mcq-shots", "2"], 4,
                 "--mcq-shots 2: ", id="shots-without-a-dev-split"),
    pytest.param(lambda c: ["--mcq-format", "essay"], 4, "--mcq-format='essay' is invalid", id="unknown-format"),
    pytest.param(lambda c: [], 0, "SKIPPED", id="no-mcq-skips-naming-the-option"),
    pytest.param(lambda c: ["--mcq", c.data(MCQ, name="mc.jsonl")], 0, "PASS  no-forgetting[mc]", id="a-set"),
])
def test_multiple_choice_inputs_end_in_a_clear_message(pytester, ctx, mcq_args, status, fragment):
    pytester.makepyfile(test_gate=GATE_MCQ)
    result = pytester.runpytest_subprocess(*PLUGINS, *ctx.args(*mcq_args(ctx)), "-rs")
    out = result.stdout.str() + result.stderr.str()
    assert result.ret == status, out[-3000:]
    assert fragment in out and "Traceback" not in out, out[-3000:]
    if fragment == "SKIPPED":
        assert "no --mcq given: pass a multiple-choice set" in out
