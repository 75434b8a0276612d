"""The judge: verdict parsing, both orders, the win rate and its length control, and the real HTTP client
against a real chat-completions server on 127.0.0.1 (success, retries, timeouts, bad answers, the cache)."""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest
from api_server import MARK_A, Server, answers_in, judge_server
from hypothesis import given, settings
from hypothesis import strategies as st

from dpo_eval_core.backend import Generation, GenerationSettings, HFBackend
from dpo_eval_core.cache import Cache
from dpo_eval_core.chat import accepts_system
from dpo_eval_core.config import EvalConfig, GateConfig
from dpo_eval_core.data import PreferencePair
from dpo_eval_core.endpoint import ChatEndpoint, EndpointSettings, Reply, base_url
from dpo_eval_core.errors import ConfigError, EndpointError
from dpo_eval_core.families.judge import Settings as JudgeSettings
from dpo_eval_core.families.judge import judge_claims as family_claims
from dpo_eval_core.identity import ModelIdentity
from dpo_eval_core.judge import (
    DEFAULT_TEMPLATE,
    EndpointJudge,
    check_template,
    length_controlled,
    load_template,
    make_judge,
    measure,
    outcome,
    parse_verdict,
    render,
)
from dpo_eval_core.models import attach_adapter, load_base, load_tokenizer, resolve

TEMPLATE = ("default", DEFAULT_TEMPLATE)


def synthetic(tuned: list[str], base: list[str]) -> tuple[list[PreferencePair], dict[str, list[Generation | None]]]:
    pairs = [PreferencePair((("user", f"question {i}"),), "c", "r", "valid") for i in range(len(tuned))]
    gen = lambda texts: [Generation(t, len(t), False) for t in texts]  # noqa: E731
    return pairs, {"tuned": gen(tuned), "base": gen(base)}


class FnJudge:
    """A judge whose reply is a function of the prompt (stands for a model in the statistics tests)."""

    name = "a function"

    def __init__(self, reply: Callable[[str], str]) -> None:
        self.reply, self.asked = reply, 0

    def identity(self) -> dict:
        return {"fn": self.reply.__name__}

    def replies(self, prompts, max_tokens) -> Iterator[tuple[int, Reply]]:
        for i, p in enumerate(prompts):
            self.asked += 1
            yield i, Reply(self.reply(p), None, "stop")


def judge_claims(s, gate: GateConfig, min_judge_consistency: float = 0.5):
    return family_claims(s, gate, min_judge_consistency)


def judged(reply: Callable[[str], str], tuned: list[str], base: list[str], tmp_path: Path, **gate):
    pairs, answers = synthetic(tuned, base)
    s, _ = measure(FnJudge(reply), pairs, answers, TEMPLATE, 16, Cache(tmp_path / "cache"), 0.95, 1000,
                   np.random.default_rng(0))
    return s, {c.id: c for c in judge_claims(s, GateConfig(), **gate)}


# --------------------------------------------------------------------------- verdicts


@pytest.mark.parametrize("reply, verdict", [
    ("[[A]]", "A"), ("[[B]] because it is accurate.", "B"), ("[[C]]", "tie"), ("My verdict: [[ B ]]", "B"),
    ("Verdict: A", "A"), ("The final verdict is **B**.", "B"), ("winner: tie", "tie"), ("B", "B"), ("**A**", "A"),
    ("Tie.", "tie"), ("Assistant B is better.", "B"), ("Assistant A", "A"), ("The winner is a tie", "tie"),
    ("[[A]] ... so overall [[A]]", "A"), ("[B]\nBecause it is shorter.", "B"),
    # a reviewer's cases: a tie said with an article, the verdict first then reasons (as the default
    # template asks), the winner named as an assistant
    ("Verdict: A tie.", "tie"), ("A\nAssistant A answers the question directly; B rambles.", "A"),
    ("Winner: Assistant B", "B"), ("The winner is Assistant A", "A"), ("TIE", "tie"), ("verdict: Tie", "tie"),
])
def test_a_verdict_in_any_usual_form_is_read(reply, verdict):
    assert parse_verdict(reply) == verdict


@pytest.mark.parametrize("reply", [
    "", "I cannot decide.", "Both answers are fine", "A better answer would mention the date.",
    '"[[A]]" if assistant A is better, "[[B]]" if assistant B is better',  # the instructions echoed
    "Assistant A is better. Assistant B is better.", "a", "[[D]]", "[A]\n\nThe answer is: [C]",
])
def test_a_reply_naming_no_verdict_or_two_is_unparseable_not_guessed(reply):
    assert parse_verdict(reply) is None


@settings(max_examples=50, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_characters="[]"), max_size=80),
       st.text(alphabet=st.characters(blacklist_characters="[]"), max_size=80), st.sampled_from("ABC"))
def test_a_bracketed_verdict_wins_whatever_surrounds_it(before, after, letter):
    assert parse_verdict(f"{before}[[{letter}]]{after}") == {"A": "A", "B": "B", "C": "tie"}[letter]


@pytest.mark.parametrize("first, second, expected", [
    ("A", "B", "win"), ("B", "A", "loss"), ("tie", "tie", "tie"), ("A", "A", "inconsistent"),
    ("B", "B", "inconsistent"), ("A", "tie", "inconsistent"), (None, "B", "unparseable"),
])
def test_a_verdict_counts_only_when_both_orders_agree(first, second, expected):
    # tuned is A in the first order and B in the second: "A then B" is the same preference twice
    assert outcome(first, second) == expected


def test_placeholders_are_filled_in_one_pass_and_braces_in_answers_stay():
    out = render("Q: {question} | A: {answer_a} | B: {answer_b}", "{answer_b}?", "x = {1}", "{question}")
    assert out == "Q: {answer_b}? | A: x = {1} | B: {question}"


def test_a_template_missing_a_placeholder_is_refused_with_the_missing_name(tmp_path):
    with pytest.raises(ConfigError, match=r"Missing: \{answer_b\}"):
        check_template("{question} {answer_a}", "t.txt")
    (tmp_path / "t.txt").write_text("Q {question}\nA {answer_a}\nB {answer_b}\n")
    assert load_template(tmp_path / "t.txt") == (str(tmp_path / "t.txt"), "Q {question}\nA {answer_a}\nB {answer_b}\n")
    with pytest.raises(ConfigError, match="--judge-template"):
        JudgeSettings(source="base", template=tmp_path / "missing.txt")


# --------------------------------------------------------------------------- the statistics


def test_a_judge_that_always_answers_a_has_no_consistent_verdict_and_a_win_rate_of_exactly_half(tmp_path):
    def always_a(prompt: str) -> str:
        return "[[A]]"

    s, claims = judged(always_a, [f"tuned {i}" for i in range(40)], [f"base {i}" for i in range(40)], tmp_path)
    # every pair: tuned wins when shown first, loses when shown second -> inconsistent -> a tie (0.5)
    assert (s.wins, s.losses, s.ties, s.inconsistent) == (0, 0, 0, 40)
    assert s.win_rate == 0.5 and s.consistency == 0.0 and s.first_position == 1.0
    assert s.win_ci[0] < 0.5 < s.win_ci[1]  # 40 ties: a rate of 0.5 with a real interval, not [0.5, 0.5]
    assert not claims["judge-consistency"].passed and "use a stronger judge" in claims["judge-consistency"].message
    assert not claims["judge-win-rate"].passed
    assert claims["judge-length-controlled-win-rate"].inconclusive  # every tuned answer is longer: no fit


def prefers_longer(sd: float) -> Callable[[str], str]:
    """A judge that prefers the longer answer with probability sigmoid(3 tanh(d / sd)), d the length difference,
    its coin seeded by the two answers (not their order), so it gives the same verdict in both orders."""
    def longer(prompt: str) -> str:
        a, b = answers_in(prompt)
        x, y = sorted((a, b))
        coin = int(hashlib.sha256((x + y).encode()).hexdigest()[:8], 16) / 16 ** 8
        winner = x if coin < 1 / (1 + math.exp(-3 * math.tanh((len(x) - len(y)) / sd))) else y
        return "[[A]]" if winner == a else "[[B]]"
    return longer


def test_a_judge_that_prefers_the_longer_answer_gives_a_high_raw_but_an_even_length_controlled_rate(tmp_path):
    rng = np.random.default_rng(1)
    base_len = rng.integers(100, 400, 400)
    diff = rng.normal(150, 120, 400).round().astype(int)  # tuned is longer in about 89% of pairs
    tuned = [f"t{i} " + "x" * max(1, int(n + d)) for i, (n, d) in enumerate(zip(base_len, diff))]
    base = [f"b{i} " + "x" * int(n) for i, n in enumerate(base_len)]
    d = np.array([len(t) - len(b) for t, b in zip(tuned, base)])
    s, claims = judged(prefers_longer(float(d.std())), tuned, base, tmp_path)
    lc = s.length_control
    assert s.consistency == 1.0 and s.win_rate > 0.8  # raw: far from 0.5, all of it length
    assert lc.value is not None and abs(lc.value - 0.5) < 0.08 and lc.slope > 2
    assert lc.ci[0] < 0.5 < lc.ci[1]
    assert claims["judge-win-rate"].passed and not claims["judge-length-controlled-win-rate"].passed


def test_a_judge_that_prefers_the_tuned_answer_at_any_length_passes_both_win_rates(tmp_path):
    def knows_good(prompt: str) -> str:
        a, b = answers_in(prompt)
        return "[[A]]" if a.startswith("good") else "[[B]]" if b.startswith("good") else "[[C]]"

    rng = np.random.default_rng(2)
    tuned = ["good " + "y" * int(n) for n in rng.integers(10, 300, 60)]
    base = ["poor " + "y" * int(n) for n in rng.integers(10, 300, 60)]
    s, claims = judged(knows_good, tuned, base, tmp_path)
    assert s.win_rate == 1.0 and s.consistency == 1.0
    assert claims["judge-win-rate"].passed and claims["judge-length-controlled-win-rate"].passed
    assert claims["judge-length-controlled-win-rate"].value > 0.95


def test_when_the_tuned_answer_is_always_longer_length_control_says_it_cannot_tell(tmp_path):
    def always_tuned(prompt: str) -> str:
        a, _ = answers_in(prompt)
        return "[[A]]" if a.startswith("tuned") else "[[B]]"

    s, claims = judged(always_tuned, [f"tuned {'z' * (i + 5)}" for i in range(20)], ["base"] * 20, tmp_path)
    c = claims["judge-length-controlled-win-rate"]
    assert s.win_rate == 1.0 and c.inconclusive and not c.passed and "longer in 20 and not longer in 0" in c.message


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from([0.0, 0.5, 1.0]), min_size=8, max_size=40),
       st.lists(st.integers(-300, 300), min_size=40, max_size=40))
def test_the_length_controlled_rate_lies_in_zero_one_inside_its_interval(y, d):
    d = np.array(d[:len(y)], dtype=float)
    lc = length_controlled(np.array(y), d, 0.95, 200, np.random.default_rng(0))
    if lc.value is None:
        assert min((d > 0).sum(), (d <= 0).sum()) < max(5, math.ceil(0.1 * len(y)))
    else:
        assert 0 <= lc.ci[0] <= lc.ci[1] <= 1 and 0 < lc.value < 1


def test_the_judge_settings_are_validated_before_anything_runs():
    with pytest.raises(ConfigError, match="--judge-model"):
        EvalConfig(families={"judge": {"source": "http://127.0.0.1:8000/v1"}})
    with pytest.raises(ConfigError, match="--judge-model"):
        EvalConfig(families={"judge": {"source": "base", "model": "gpt"}})
    with pytest.raises(ConfigError, match="--judge-concurrency"):
        EvalConfig(families={"judge": {"source": "base", "concurrency": 0}})
    with pytest.raises(ConfigError, match="min_judge_consistency"):
        EvalConfig(families={"judge": {"min_judge_consistency": 1.5}})


# --------------------------------------------------------------------------- a real server


@pytest.fixture
def server() -> Iterator[Server]:
    def prefers_good(prompt: str) -> str:
        if MARK_A not in prompt:
            return "?"
        a, b = answers_in(prompt)
        return "[[A]] it is right." if a.startswith("good") else "[[B]] it is right." if b.startswith("good") else "?"

    s = judge_server(prefers_good)
    yield s
    s.close()


def endpoint(url: str, model: str = "judge-7b", **kw) -> ChatEndpoint:
    return ChatEndpoint(EndpointSettings(url, model, **{"timeout_s": 5.0, "retries": 2, "backoff_s": 0.01, **kw}))


def test_verdicts_come_from_the_server_and_a_warm_run_asks_it_nothing(server, tmp_path, monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-test")
    pairs, answers = synthetic([f"good {i}" for i in range(12)], [f"poor {i}" for i in range(12)])
    judge = EndpointJudge(endpoint(server.url + "/chat/completions/", key_env="MY_JUDGE_KEY", concurrency=4))
    cache = Cache(tmp_path / "cache")
    s, asked = measure(judge, pairs, answers, TEMPLATE, 16, cache, 0.95, 500, np.random.default_rng(0))
    assert asked == 24 and len(server.requests) == 24 and (s.wins, s.n, s.win_rate) == (12, 12, 1.0)
    sent = server.requests[0]
    assert sent["auth"] == "Bearer sk-test" and sent["body"]["temperature"] == 0.0
    assert sent["body"]["max_tokens"] == 16 and sent["body"]["model"] == "judge-7b"
    prompts = {r["body"]["messages"][0]["content"] for r in server.requests}
    assert prompts == {render(DEFAULT_TEMPLATE, f"question {i}", *ab) for i in range(12)
                       for ab in ((f"good {i}", f"poor {i}"), (f"poor {i}", f"good {i}"))}  # only these, both orders
    again, asked = measure(judge, pairs, answers, TEMPLATE, 16, Cache(tmp_path / "cache"), 0.95, 500,
                           np.random.default_rng(0))
    assert asked == 0 and len(server.requests) == 24 and again == s


def test_a_500_is_retried_and_then_succeeds(server):
    server.script = [500, 503]
    assert endpoint(server.url).chat((("user", "A: good 1 B: poor"),), 8) == "?"
    assert len(server.requests) == 3


def test_a_slow_reply_times_out_and_is_retried_then_a_server_that_stays_slow_is_an_error(server):
    server.script, server.slow_s = ["slow"], 1.0
    start = time.perf_counter()
    assert endpoint(server.url, timeout_s=0.3).chat((("user", "hi"),), 8) == "?"
    assert len(server.requests) == 2 and time.perf_counter() - start < 1.0 + 0.5
    server.script = ["slow"] * 3
    with pytest.raises(EndpointError, match=r"failed 2 times, last: no answer within 0.3 s"):
        endpoint(server.url, timeout_s=0.3, retries=1).chat((("user", "hi"),), 8)


def test_a_body_that_is_not_json_is_an_error_naming_the_url_and_what_came_back(server):
    server.script = ["malformed"]
    with pytest.raises(EndpointError, match=r"/v1/chat/completions answered HTTP 200 with a body that is not JSON: "
                                            r"'<html>not the API</html>'.*ending in /v1"):
        endpoint(server.url).chat((("user", "hi"),), 8)


def test_an_unparseable_verdict_is_counted_and_its_pair_left_out_never_guessed(server, tmp_path):
    pairs, answers = synthetic(["good 1", "meh 2", "good 3"], ["poor 1", "meh 2b", "poor 3"])  # pair 2: reply "?"
    s, _ = measure(EndpointJudge(endpoint(server.url)), pairs, answers, TEMPLATE, 16, Cache(tmp_path), 0.95, 500,
                   np.random.default_rng(0))
    assert (s.n, s.unparseable, s.wins, s.verdicts["unparseable"], s.win_rate) == (3, 1, 2, 2, 1.0)
    win = {c.id: c for c in judge_claims(s, GateConfig())}["judge-win-rate"]
    assert win.n == 2 and "1 pairs left out: a reply named no verdict (2 of 6 replies;" in win.message
    assert sum(s.unparseable_shown_first.values()) == 2


def test_a_request_the_server_refuses_is_counted_as_unparseable_and_the_run_goes_on(server, tmp_path):
    pairs, answers = synthetic([f"good {i}" for i in range(4)], [f"poor {i}" for i in range(4)])
    server.script = [400]  # one prompt past the judge's context, say
    s, asked = measure(EndpointJudge(endpoint(server.url, concurrency=1)), pairs, answers, TEMPLATE, 16,
                       Cache(tmp_path), 0.95, 500, np.random.default_rng(0))
    assert asked == 8 and (s.unparseable, s.wins, s.refused) == (1, 3, 1)
    win = judge_claims(s, GateConfig())[0]
    assert "1 requests refused by the server, e.g. POST" in win.message and "HTTP 400" in win.message


def test_unparseable_replies_cut_at_the_budget_say_to_raise_it(tmp_path):
    def respond(route: str, body: dict) -> dict:
        return {"choices": [{"index": 0, "finish_reason": "length",
                             "message": {"role": "assistant", "content": "Let me compare the two answers ca"}}]}

    s_ = Server(respond, [{"id": "judge-7b"}])
    try:
        pairs, answers = synthetic(["good 1", "good 2"], ["poor 1", "poor 2"])
        s, _ = measure(EndpointJudge(endpoint(s_.url)), pairs, answers, TEMPLATE, 16, Cache(tmp_path), 0.95, 500,
                       np.random.default_rng(0))
    finally:
        s_.close()
    assert s.cut_unparseable == 4
    assert "stopped at the reply budget: raise --judge-max-tokens" in judge_claims(s, GateConfig())[0].message


def test_a_500_that_is_a_request_validation_error_is_not_retried(server):
    server.script = ["invalid"]
    with pytest.raises(EndpointError, match=r"HTTP 500 with a request validation error.*not retried"):
        endpoint(server.url).generate([1, 2, 3], max_tokens=4)
    assert len(server.requests) == 1


def test_a_connection_broken_mid_body_is_retried_like_a_reset(server):
    server.script = ["truncated"]
    assert endpoint(server.url).chat((("user", "hi"),), 8) == "?"
    assert len(server.requests) == 2


def test_a_model_the_server_does_not_serve_is_refused_at_start_with_what_it_serves(server):
    with pytest.raises(EndpointError, match=r"does not serve the model 'gpt-5'; it serves 'judge-7b'. Fix --judge"):
        endpoint(server.url, model="gpt-5").check("--judge-model")
    endpoint(server.url).check("--judge-model")


def test_a_server_that_is_down_is_an_error_after_the_retries(server):
    url = server.url
    server.close()
    with pytest.raises(EndpointError, match=r"GET http://127.0.0.1:\d+/v1/models failed 3 times.*Start the server"):
        endpoint(url).check("--judge-model")


def test_an_interrupted_judge_run_keeps_the_replies_it_got_and_resumes(server, tmp_path):
    pairs, answers = synthetic([f"good {i}" for i in range(5)], [f"poor {i}" for i in range(5)])
    server.script = ["ok"] * 4 + [401]  # a refusal of the key is not retried: it stops the run after four replies
    judge = EndpointJudge(endpoint(server.url, concurrency=1))
    with pytest.raises(EndpointError, match="HTTP 401"):
        measure(judge, pairs, answers, TEMPLATE, 16, Cache(tmp_path), 0.95, 500, np.random.default_rng(0))
    first = len(server.requests)  # four replies, the refusal, and any sent before it was seen (all kept)
    assert 5 <= first <= 10
    s, asked = measure(judge, pairs, answers, TEMPLATE, 16, Cache(tmp_path), 0.95, 500, np.random.default_rng(0))
    assert asked == 10 - (first - 1) and s.wins == 5 and len(server.requests) == first + asked


def test_the_base_url_is_found_whatever_the_user_pastes():
    for url in ("http://h:8000/v1", "http://h:8000/v1/", "http://h:8000/v1/chat/completions"):
        assert base_url(url) == "http://h:8000/v1"


# --------------------------------------------------------------------------- local judges


def test_the_base_as_judge_is_the_gate_model_with_the_adapter_off(tiny_adapter, tmp_path):
    spec = resolve(EvalConfig(adapter=tiny_adapter))
    tok = load_tokenizer(spec.base)
    model, _ = attach_adapter(load_base(spec.base, "none", "float32", "cpu"), spec)
    backend = HFBackend(model, tok, system_ok=accepts_system(tok), device="cpu")
    gate = ModelIdentity("b", "adapter-digest", "none", "float32", "cpu", "t")
    cfg = EvalConfig(adapter=tiny_adapter, batch_size=4, max_new_tokens=8)
    judge = make_judge(JudgeSettings(source="base"), cfg, spec, lambda: backend, gate, Cache(tmp_path), None, lambda: None)
    assert judge.identity()["local"]["adapter"] is None
    prompts = ["Which is better? [[A]] or [[B]]", "Say [[B]]"]
    replies = dict(judge.replies(prompts, 6))
    expected = backend.generate([(("user", p),) for p in prompts], adapter=False,
                                settings=GenerationSettings(max_new_tokens=6, batch_size=4, batch_tokens=512))
    assert [replies[0].text, replies[1].text] == [g.text for g in expected]


def test_another_local_judge_loads_only_when_a_reply_is_missing_after_freeing_the_gate_model(
        tiny_adapter, tiny_mistral, tmp_path):
    spec = resolve(EvalConfig(adapter=tiny_adapter))
    freed = []
    cfg = EvalConfig(adapter=tiny_adapter, batch_size=4)
    js = JudgeSettings(source=str(tiny_mistral))
    gate = ModelIdentity("b", "a", "none", "float32", "cpu", "t")

    def gate_backend():
        raise AssertionError("the gate's model is not the judge")

    pairs, answers = synthetic(["one", "two"], ["uno", "dos"])
    for run in range(2):
        judge = make_judge(js, cfg, spec, gate_backend, gate, Cache(tmp_path), None, lambda: freed.append(run))
        s, asked = measure(judge, pairs, answers, TEMPLATE, 4, Cache(tmp_path), 0.95, 200, np.random.default_rng(0))
        assert (asked, s.n) == ((4, 2) if run == 0 else (0, 2))
    assert freed == [0, 0]  # freed before the judge loaded and after it finished; the warm run loaded nothing
