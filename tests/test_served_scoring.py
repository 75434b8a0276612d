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
from tiny import load_backend

from dpo_eval_core.backend import HFBackend
from dpo_eval_core.config import EvalConfig
from dpo_eval_core.errors import ConfigError, EndpointError
from dpo_eval_core.families import forgetting, rewards
from dpo_eval_core.run import GateRun
from dpo_eval_core.scoring import scorer
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


def serve(backend: HFBackend, scoring: tuple[str, ...]) -> Server:
    return model_server(backend, {"tiny-lora": True, "tiny-base": False}, "tiny-base", scoring=scoring)


def run_of(tiny_adapter: Path, data: tuple[Path, Path], cache: Path, server: Server | None = None) -> GateRun:
    served = dict(serve_url=server.url, serve_model="tiny-lora", serve_base_model="tiny-base",
                  serve_scoring="server") if server else {}
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


@pytest.mark.parametrize("mode", ["prompt_logprobs", "echo"])
def test_served_log_probs_equal_local_float32_and_no_local_model_is_loaded(mode, backend, local, tiny_adapter, data,
                                                                          tmp_path):
    server = serve(backend, (mode,))
    try:
        run = run_of(tiny_adapter, data, tmp_path, server)
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
        with pytest.raises(EndpointError, match="retokenized or cut the prompt"):
            scorer(run_of(tiny_adapter, data, tmp_path, server))
    finally:
        server.close()


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
        seen = run.stages["serve check"]
        assert seen["pairs"] == 3 and seen["worst_difference"] < 1e-4 and run.loaded is not None

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
