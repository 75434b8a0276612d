"""--serve-scoring server: the reward and multiple-choice log-probs from the serving engine (vLLM's
prompt_logprobs, or the legacy API's echo with logprobs), the prompts sent as token ids; against real servers
on 127.0.0.1 answering from the tiny test model, compared with local float32 scoring."""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from api_server import Server, model_server
from hypothesis import given
from hypothesis import strategies as st
from tiny import load_backend

from dpo_eval_core.backend import HFBackend
from dpo_eval_core.config import EvalConfig
from dpo_eval_core.endpoint import _aligned, _echoed, _Retokenized
from dpo_eval_core.errors import ConfigError, EndpointError
from dpo_eval_core.families import forgetting, rewards
from dpo_eval_core.results import run_facts
from dpo_eval_core.run import GateRun
from dpo_eval_core.scoring import SERVE_CHECK, scorer
from dpo_eval_core.texts import served

MCQ = [{"question": f"What is {i} plus {i}?", "choices": [str(2 * i), str(2 * i + 1), f"{i}{i}"], "answer": 0}
       for i in range(8)]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("data")
    rows = [{"prompt": f"Question {i}: what is {i} times {i}?", "chosen": f"{i * i}.",
             "rejected": f"Well, I think it is {i * i}, maybe."} for i in range(30)]
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in MCQ))
    return root / "pairs.jsonl", root / "mc.jsonl"


@pytest.fixture(scope="module")
def backend(tiny_adapter: Path) -> HFBackend:
    return load_backend(tiny_adapter)


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("dpo_eval_core.endpoint.time", SimpleNamespace(sleep=lambda s: None))


def serve(backend: HFBackend, scoring: tuple[str, ...], **kw) -> Server:
    return model_server(backend, {"tiny-lora": True, "tiny-base": False}, "tiny-base", scoring=scoring, **kw)


def run_of(tiny_adapter: Path, data: tuple[Path, Path], cache: Path, server: Server | None = None,
           serve_prompt: str = "local") -> GateRun:
    served = dict(serve_url=server.url, serve_model="tiny-lora", serve_base_model="tiny-base",
                  serve_scoring="server", serve_prompt=serve_prompt) if server else {}
    return GateRun(EvalConfig(adapter=tiny_adapter, data=str(data[0]), cache_dir=cache, max_new_tokens=8,
                              train_answers=0, valid_fraction=0.5, compute_dtype="float32",
                              families={"forgetting": {"sets": (str(data[1]),)}},
                              **served))


CLAIMS = (*(k.id() for k in rewards.FAMILY.kinds), forgetting.KEPT.id("mc"), forgetting.ACCURACY.id("mc"),
          "sign-agreement-rate")
"""The claims a server can compute (the checkpoint and quantization claims need the weights)."""


@pytest.fixture(scope="module")
def local(tiny_adapter: Path, data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> GateRun:
    run = run_of(tiny_adapter, data, tmp_path_factory.mktemp("local"))
    for cid in CLAIMS:
        run.claim(cid)
    return run


@pytest.mark.parametrize("mode", ["prompt_logprobs", pytest.param("echo", marks=pytest.mark.slow),  # 15 s each;
                                  pytest.param("echo_text", marks=pytest.mark.slow)])  # their parsing: unit tests below
def test_served_log_probs_equal_local_float32_and_no_local_model_is_loaded(mode, backend, local, tiny_adapter, data,
                                                                          tmp_path):
    server = serve(backend, (mode,))  # echo_text: a text-only server, as llama-cpp-python's
    try:
        run = run_of(tiny_adapter, data, tmp_path, server, serve_prompt="server" if mode == "echo_text" else "local")
        claims = {cid: run.claim(cid) for cid in CLAIMS}
    finally:
        server.close()
    assert run.loaded is None  # rewards, multiple choice and answers all came from the server
    assert scorer(run)[0].mode == mode
    mine, theirs = rewards.reward_summary(run), rewards.reward_summary(local)
    assert mine.pair_ids == theirs.pair_ids and mine.n == theirs.n > 0
    np.testing.assert_allclose(mine.margins, theirs.margins, rtol=0, atol=1e-4)
    print(f"served ({mode}) vs local float32 reward margins on {mine.n} pairs: largest |difference| "
          f"{np.max(np.abs(np.subtract(mine.margins, theirs.margins))):.2e}")
    assert mine.correct == theirs.correct and mine.correct_per_token == theirs.correct_per_token
    a, b = forgetting.summary(run, "mc"), forgetting.summary(local, "mc")
    assert (a.question_ids, a.tuned_right, a.base_right) == (b.question_ids, b.tuned_right, b.base_right)
    assert (a.tuned_norm, a.base_norm) == (b.tuned_norm, b.base_norm)  # acc_norm too, question by question
    for cid in CLAIMS:
        assert (claims[cid].outcome, claims[cid].n) == (local.claim(cid).outcome, local.claim(cid).n), cid


def test_a_server_without_prompt_log_probs_is_refused_naming_what_is_missing(backend, tiny_adapter, data, tmp_path):
    server = serve(backend, ())
    try:
        run = run_of(tiny_adapter, data, tmp_path, server)
        with pytest.raises(EndpointError, match="returns no log-probs of a prompt.*--serve-scoring local"):
            scorer(run)
    finally:
        server.close()
    assert run.loaded is None


def test_a_server_that_scores_other_tokens_than_those_sent_is_refused(backend, tiny_adapter, data, tmp_path):
    server = serve(backend, ("prompt_logprobs",))
    real = server.respond

    def retokenizing(route: str, body: dict) -> dict:  # drops the prompt's first token, as a retokenizer may
        out = real(route, body)
        if body.get("prompt_logprobs") is not None:
            out["choices"][0]["prompt_logprobs"] = out["choices"][0]["prompt_logprobs"][1:]
        return out

    server.respond = retokenizing
    try:
        with pytest.raises(EndpointError, match=r"scored \d+ prompt tokens for the \d+ token ids sent, so its "
                                                r"log-probs cannot stand"):
            scorer(run_of(tiny_adapter, data, tmp_path, server))
    finally:
        server.close()


def test_a_text_only_server_whose_log_probs_are_a_token_off_is_refused(backend, tiny_adapter, data, tmp_path):
    # llama-cpp-python reads each echoed token's value from the logits row of its own index, right only when the
    # text starts with the model's BOS, which it leaves out; here no token counts as BOS, so every value is a row
    # off and the token generated falls off the end.
    server = serve(backend, ("echo_text",), echo_bos=-1)
    try:
        with pytest.raises(EndpointError, match=r"(split the text into other tokens|generated at temperature 0 is not "
                                                r"the likeliest).*so its log-probs cannot stand for the gate's tokens"):
            scorer(run_of(tiny_adapter, data, tmp_path, server, serve_prompt="server"))
    finally:
        server.close()


def test_a_text_only_server_is_refused_token_id_prompts_at_start_naming_the_option(backend, tiny_adapter, data,
                                                                                   tmp_path):
    server = serve(backend, ("echo_text",))
    try:
        with pytest.raises(EndpointError, match=r"takes no token-id prompts on /v1/completions for 'tiny-(lora|base)'"
                                                r".*validation error.*Pass --serve-prompt server"):
            _ = run_of(tiny_adapter, data, tmp_path, server).answers
    finally:
        server.close()
    assert len(server.requests) == 1  # the one-token probe, nothing else


def test_a_503_while_scoring_is_retried_and_the_log_probs_stay_the_same(backend, local, tiny_adapter, data,
                                                                      tmp_path):
    server = serve(backend, ("prompt_logprobs",))
    try:
        run = run_of(tiny_adapter, data, tmp_path, server)
        scorer(run)  # the probes
        server.script = ["ok"] * 5 + [503, 503, "ok", 503]
        summary = rewards.reward_summary(run)
    finally:
        server.close()
    assert not server.script  # every scripted failure was served, mid-run
    np.testing.assert_allclose(summary.margins, rewards.reward_summary(local).margins, rtol=0, atol=1e-4)


@pytest.mark.parametrize("names", [dict(serve_model="tiny-lora-v2"), dict(serve_base_model="base")],
                         ids=["adapter name", "base name"])
def test_a_wrong_served_name_is_refused_before_scoring_or_loading(names, backend, tiny_adapter, data, tmp_path):
    server = serve(backend, ("prompt_logprobs",))
    try:
        run = GateRun(dataclasses.replace(run_of(tiny_adapter, data, tmp_path, server).cfg, **names))
        with pytest.raises(EndpointError, match=r"does not serve '(tiny-lora-v2|base)'.*it serves 'tiny-lora', "
                                                r"'tiny-base'"):
            scorer(run)
    finally:
        server.close()
    assert run.loaded is None and not server.requests  # asked only for its model list


@given(st.lists(st.tuples(st.sampled_from(["", "a", " b", "\n"]), st.booleans()), min_size=2, max_size=30),
       st.integers(1, 29), st.data())
def test_echoed_tokens_align_with_the_gates_and_anything_else_is_refused(tokens, start, data):
    # (piece, listed): a special token's piece is "", and a server may list no entry for it (llama.cpp's BOS id,
    # which starts the text or follows text: "\n<|im_start|>"; an unlisted "" right after a listed "" could not be
    # told apart from it)
    start = min(start, len(tokens) - 1)
    tokens = [(p, listed or bool(p) or (i > 0 and not tokens[i - 1][0])) for i, (p, listed) in enumerate(tokens)]
    pieces = [p for p, _ in tokens]
    values = [float(-i) for i in range(len(tokens))]
    kept = [i for i, (p, listed) in enumerate(tokens) if p or listed]
    echoed, echoed_values = [pieces[i] for i in kept], [values[i] for i in kept]
    if all(i in kept for i in range(start, len(tokens))):
        assert _aligned(pieces, echoed, echoed_values, start) == values[start:]
    else:  # a token asked for has no entry
        with pytest.raises(_Retokenized, match="gave no log-prob"):
            _aligned(pieces, echoed, echoed_values, start)
    words = [j for j, p in enumerate(echoed) if p]
    if words:  # the server split the text otherwise: one of its tokens is not the gate's
        j = data.draw(st.sampled_from(words))
        other = echoed[:j] + [echoed[j] + "x"] + echoed[j + 1:]
        with pytest.raises(_Retokenized, match="split the text into other tokens"):
            _aligned(pieces, other, echoed_values, start)
    with pytest.raises(_Retokenized, match="more tokens than"):  # a token the gate does not have
        _aligned(pieces, ["z", *echoed], [0.0, *echoed_values], start)


def test_an_echo_without_its_generated_bos_is_taken_only_where_the_server_left_out_the_first_token():
    pieces = ["", "a", "b"]  # the gate's BOS, then two tokens of text; the server generated its BOS id next
    right = {"tokens": ["a", "b"], "token_logprobs": [None, -1.5], "top_logprobs": None}
    assert _echoed(pieces, right, generated=1, start=2) == [-1.5]
    off = {"tokens": ["", "a", "b"], "token_logprobs": [None, -0.1, -7.0], "top_logprobs": None}  # BOS not left out
    with pytest.raises(_Retokenized, match="split the text into other tokens"):
        _echoed(pieces, off, generated=1, start=2)


def test_server_scoring_needs_a_server():
    with pytest.raises(ConfigError, match="--serve-scoring='server' is invalid"):
        EvalConfig(serve_scoring="server")


def test_a_warm_served_run_asks_the_server_nothing_for_log_probs(backend, tiny_adapter, data, tmp_path):
    server: Server = serve(backend, ("prompt_logprobs",))
    try:
        rewards.reward_summary(run_of(tiny_adapter, data, tmp_path, server))
        before = len(server.requests)
        again = run_of(tiny_adapter, data, tmp_path, server)
        rewards.reward_summary(again)
    finally:
        server.close()
    scored = [r for r in server.requests[before:] if "prompt_logprobs" in r["body"]]
    assert len(scored) == 2 and again.computed["logps"] == 0  # the two start-up probes, and nothing else


# --------------------------------------------------------------------------- replicas


@pytest.fixture(scope="module")
def second_backend(tiny_adapter: Path) -> HFBackend:
    """Another copy of the tiny model: a replica has a model of its own (the adapter state is per model)."""
    return load_backend(tiny_adapter)


def replicated(tiny_adapter: Path, data: tuple[Path, Path], cache: Path, servers: list[Server]) -> GateRun:
    cfg = run_of(tiny_adapter, data, cache, servers[0]).cfg
    return GateRun(dataclasses.replace(cfg, serve_url=",".join(s.url for s in servers), serve_concurrency=2))


def served_work(run: GateRun) -> None:
    """Everything the server can do for a run: answers, rewards, multiple choice."""
    _ = run.answers
    rewards.reward_summary(run)
    forgetting.summary(run, "mc")


def test_two_replicas_share_the_load_and_agree_with_one_server(backend, second_backend, local, tiny_adapter, data,
                                                               tmp_path):
    servers = [serve(backend, ("prompt_logprobs",)), serve(second_backend, ("prompt_logprobs",))]
    try:
        run = replicated(tiny_adapter, data, tmp_path, servers)
        served_work(run)
    finally:
        for s in servers:
            s.close()
    counts = [len(s.requests) for s in servers]
    print(f"two replicas, requests answered: {counts}")
    assert min(counts) > 0.25 * sum(counts) and run.loaded is None
    np.testing.assert_allclose(rewards.reward_summary(run).margins, rewards.reward_summary(local).margins, atol=1e-4)
    report = {r["url"]: r for r in served(run)["tuned"].endpoint.report()}
    assert all(r["down"] is None for r in report.values())


def test_a_replica_killed_mid_run_leaves_the_other_to_finish_and_a_re_run_computes_nothing(
        backend, second_backend, local, tiny_adapter, data, tmp_path):
    servers = [serve(backend, ("prompt_logprobs",)), serve(second_backend, ("prompt_logprobs",))]
    doomed, real = servers[0], servers[0].respond

    def dies_after_ten(route: str, body: dict) -> dict:
        if len(doomed.requests) == 10:
            threading.Thread(target=doomed.close).start()  # the server goes away: later requests are refused
        return real(route, body)

    doomed.respond = dies_after_ten
    try:
        run = replicated(tiny_adapter, data, tmp_path, servers)
        served_work(run)
        down = {r["url"]: r["down"] for role in ("tuned", "base") for r in served(run)[role].endpoint.report()}
        assert down[doomed.url] is not None and down[servers[1].url] is None, down
        assert rewards.reward_summary(run).margins == pytest.approx(rewards.reward_summary(local).margins, abs=1e-4)
        again = replicated(tiny_adapter, data, tmp_path, servers)
        served_work(again)
    finally:
        for s in servers:
            s.close()
    assert not any(again.computed.values()), again.computed  # everything received before was kept


# --------------------------------------------------------------------------- --serve-check


def test_the_parity_check_passes_a_faithful_server_and_stops_a_wrong_one(backend, tiny_adapter, data, tmp_path):
    server = serve(backend, ("prompt_logprobs",))
    real = server.respond
    try:
        run = GateRun(dataclasses.replace(run_of(tiny_adapter, data, tmp_path, server).cfg, serve_check=3))
        scorer(run)
        seen = run.stages.computed(SERVE_CHECK)
        assert seen["pairs"] == 3 and seen["worst_difference"] < 1e-4 and run.loaded is not None
        assert run_facts(run)["model_work"]["local_model"] == "loaded: --serve-check 3 scored pairs locally too"

        def off_by_a_little(route: str, body: dict) -> dict:  # another model: every token 0.5 nat less likely
            out = real(route, body)
            for entry in out["choices"][0].get("prompt_logprobs") or []:
                for v in (entry or {}).values():
                    v["logprob"] -= 0.5
            return out

        server.respond = off_by_a_little
        wrong = GateRun(dataclasses.replace(run.cfg, cache_dir=tmp_path / "other"))
        with pytest.raises(EndpointError, match=r"--serve-check 3: the server's (policy|reference) log-prob.*tolerance "
                                                r"2% of \|log-prob\| \+ 1 nat"):
            scorer(wrong)
    finally:
        server.close()


def test_the_parity_check_needs_server_scoring():
    with pytest.raises(ConfigError, match="--serve-check=2 is invalid"):
        EvalConfig(serve_check=2)
