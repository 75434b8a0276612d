"""--serve-url: answers from an OpenAI-compatible server (as vLLM serves a base and its LoRA modules),
through the real client, against a real server on 127.0.0.1 that answers from the tiny test model."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import pytest
from api_server import Server, model_server
from tiny import load_backend

from dpo_eval_core.backend import HFBackend
from dpo_eval_core.config import EvalConfig
from dpo_eval_core.errors import ConfigError, EndpointError
from dpo_eval_core.run import GateRun
from dpo_eval_core.texts import served


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    rows = [{"prompt": f"Question {i}: what is {i} times {i}?", "chosen": f"{i * i}.",
             "rejected": f"Well, I think it is {i * i}, maybe."} for i in range(30)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def backend(tiny_adapter: Path) -> HFBackend:
    return load_backend(tiny_adapter)


@pytest.fixture
def server(backend: HFBackend) -> Iterator[Server]:
    s = model_server(backend, {"tiny-lora": True, "tiny-base": False}, "tiny-base")
    yield s
    s.close()


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries without the waits between them (the endpoint's clock only; the server's 'slow' still sleeps)."""
    monkeypatch.setattr("dpo_eval_core.endpoint.time", SimpleNamespace(sleep=lambda s: None))


def run_of(tiny_adapter: Path, pairs: Path, cache: Path, server: Server | None = None, **kw) -> GateRun:
    serve = dict(serve_url=server.url, serve_model="tiny-lora", serve_base_model="tiny-base") if server else {}
    # float32: the test server answers from the tiny model in float32, and equality needs the same dtype
    return GateRun(EvalConfig(adapter=tiny_adapter, data=str(pairs), cache_dir=cache, max_new_tokens=12,
                              train_answers=4, compute_dtype="float32", **{**serve, **kw}))


@pytest.fixture(scope="module")
def local_answers(tiny_adapter: Path, pairs: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return run_of(tiny_adapter, pairs, tmp_path_factory.mktemp("local")).answers


@pytest.mark.parametrize("prompt", ["local", "server"])
def test_served_answers_equal_local_greedy_generation_and_a_second_run_is_all_cache(
        prompt, server, local_answers, tiny_adapter, pairs, tmp_path):
    run = run_of(tiny_adapter, pairs, tmp_path, server, serve_prompt=prompt)
    assert run.answers == local_answers and run.loaded is None  # no model loaded here for the answers
    asked = sum(g is not None for r in ("tuned", "base") for g in run.answers[r])
    probes = [r for r in server.requests if r["body"]["max_tokens"] == 1]  # one per served name, before the work
    assert len(probes) == 2 and len(server.requests) == asked + 2 and run.computed == {"generations_tuned": asked // 2,
                                                              "generations_base": asked // 2}
    route = "/v1/completions" if prompt == "local" else "/v1/chat/completions"
    assert {r["path"] for r in server.requests} == {route} and {r["body"]["model"] for r in server.requests} == {
        "tiny-lora", "tiny-base"}
    assert all(r["body"]["temperature"] == 0.0 and r["body"]["max_tokens"] == 12 for r in server.requests
               if r not in probes)
    again = run_of(tiny_adapter, pairs, tmp_path, server, serve_prompt=prompt)
    assert again.answers == local_answers and len(server.requests) == asked + 2  # a warm run asks nothing
    assert again.computed == {"generations_tuned": 0, "generations_base": 0}


def test_served_answers_never_come_from_local_ones_in_the_cache(server, tiny_adapter, pairs, tmp_path):
    run_of(tiny_adapter, pairs, tmp_path).answers  # noqa: B018  local answers, same cache
    served = run_of(tiny_adapter, pairs, tmp_path, server)
    assert served.computed == {} and served.answers and served.computed["generations_tuned"] > 0
    assert len(server.requests) == served.computed["generations_tuned"] + served.computed["generations_base"] + 2


def test_a_503_mid_run_and_a_timeout_are_retried_and_the_answers_stay_the_same(server, local_answers, tiny_adapter,
                                                                               pairs, tmp_path):
    server.script, server.slow_s = ["ok", "ok", 503, "slow", "ok", 503], 1.0
    run = run_of(tiny_adapter, pairs, tmp_path, server, serve_timeout=0.3, serve_concurrency=1)
    assert run.answers == local_answers
    assert len(server.requests) == sum(g is not None for r in ("tuned", "base") for g in run.answers[r]) + 3 + 2


def test_an_interrupted_run_keeps_the_answers_it_received_and_resumes(server, local_answers, tiny_adapter, pairs,
                                                                     tmp_path):
    server.script = ["ok"] * 6 + [400]  # a refusal is not retried: the run stops after the probe and five answers
    with pytest.raises(EndpointError, match="HTTP 400"):
        _ = run_of(tiny_adapter, pairs, tmp_path, server, serve_concurrency=1).answers
    first = len(server.requests)
    run = run_of(tiny_adapter, pairs, tmp_path, server, serve_concurrency=1)
    assert run.answers == local_answers
    total = sum(g is not None for r in ("tuned", "base") for g in run.answers[r])
    assert len(server.requests) - first == total - (first - 2) + 2  # what was not received before, and two probes


@pytest.mark.parametrize("kw, message", [
    (dict(serve_model="gpt-4o"), r"does not serve 'gpt-4o' \(--serve-model\); it serves 'tiny-lora', 'tiny-base'"),
    (dict(serve_base_model="llama"), r"does not serve 'llama' \(--serve-base-model\)"),
    (dict(serve_model="tiny-base", serve_base_model="tiny-lora"), r"'tiny-base' is served as a model of its own"),
], ids=["unknown-adapter-name", "unknown-base-name", "base-named-as-the-adapter"])
def test_wrong_served_names_are_refused_at_start_naming_what_the_server_serves(kw, message, server, tiny_adapter,
                                                                              pairs, tmp_path):
    with pytest.raises(EndpointError, match=message):
        served(run_of(tiny_adapter, pairs, tmp_path, server, **kw))
    assert server.requests == []  # nothing was generated


def test_an_adapter_of_another_base_is_refused(backend, tiny_adapter, pairs, tmp_path):
    s = model_server(backend, {"tiny-lora": True, "tiny-base": False}, "tiny-base",
                     {"tiny-lora": {"parent": "other-base"}})
    try:
        with pytest.raises(EndpointError, match="is an adapter of 'other-base', not of --serve-base-model"):
            served(run_of(tiny_adapter, pairs, tmp_path, s))
    finally:
        s.close()


def test_a_server_that_is_down_at_start_is_a_clear_error(server, tiny_adapter, pairs, tmp_path):
    url = server.url
    server.close()
    cfg = dataclasses.replace(run_of(tiny_adapter, pairs, tmp_path).cfg, serve_url=url, serve_model="tiny-lora",
                              serve_base_model="tiny-base")
    with pytest.raises(EndpointError, match=r"GET http://127.0.0.1:\d+/v1/models failed 5 times.*Start the server"):
        served(GateRun(cfg))


def test_serving_options_are_checked_together():
    with pytest.raises(ConfigError, match="--serve-model"):
        EvalConfig(serve_url="http://127.0.0.1:8000/v1", serve_base_model="base")
    with pytest.raises(ConfigError, match="the adapter's served name, not the base's"):
        EvalConfig(serve_url="http://127.0.0.1:8000/v1", serve_model="m", serve_base_model="m")
    with pytest.raises(ConfigError, match="--serve-model"):
        EvalConfig(serve_model="m")
    from dpo_eval_core.families.comparison import other

    served = EvalConfig(serve_url="http://127.0.0.1:8000/v1", serve_model="m", serve_base_model="b", families={
        "comparison": {"compare": Path(__file__).parents[1] / "dpo_eval_core" / "demo" / "assets" / "adapter"}})
    with pytest.raises(ConfigError, match="--compare.*no value with --serve-url"):
        other(GateRun(served))  # refused before any model loads (the plugin asks at collection)
