"""An OpenAI-compatible chat-completions client: how the gate talks to a judge (or serving engine) server.

The standard library is enough: each request is one small JSON post, and a thread pool bounds how many
are in flight. Transient failures (connection refused or reset, a timeout, 429 and 5xx answers) are
retried with exponential backoff, honouring Retry-After; anything else is an EndpointError that names
the URL, what came back and the fix. Only what the caller passes is sent, and only to `url`.
"""

from __future__ import annotations

import concurrent.futures as cf
import http.client
import json
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal, Mapping, Sequence, TypeVar

from .chat import Message
from .errors import EndpointError


class RequestRefused(EndpointError):
    """The server refused this one request (HTTP 400, 413, 422: a prompt past its context, say): another request
    may still be served, so a caller asking many can count it and go on."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status

class Retokenized(EndpointError):
    """The server scored other tokens than the ids sent: its log-probs cannot stand for the gate's."""


class Unsupported(EndpointError):
    """The server answered, without what was asked for (no prompt log-probs in its reply)."""


T = TypeVar("T")
R = TypeVar("R")
RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
REFUSED_STATUS = frozenset({400, 413, 422})
"""Statuses that refuse one request for what it holds (too long a prompt, a field the server rejects)."""
VALIDATION = re.compile(r"validation error|Input should be|Field required|Extra inputs are not permitted|"
                        r"type_error|value_error", re.IGNORECASE)
"""A body that says the request itself was invalid: some servers (llama-cpp-python's) answer that with a 500,
which is then not a transient fault and not retried."""
MAX_RETRY_AFTER_S = 60.0
ScoringMode = Literal["prompt_logprobs", "echo", "echo_text"]
SCORING_MODES: tuple[ScoringMode, ...] = ("prompt_logprobs", "echo", "echo_text")
"""How a server returns the log-probs of a prompt, in the order they are tried at start: token ids with vLLM's
prompt_logprobs, token ids echoed with logprobs (the legacy completions API), and, for a server that takes only
text (llama-cpp-python's), the text of those ids echoed with logprobs, its tokens checked against the gate's."""


@dataclass(frozen=True, slots=True)
class Tokens:
    """Token ids to score; for a server that takes only text (echo_text), also the text they decode to and each
    token's piece (its text, "" for a special token, whose text a server does not echo), to check that the
    server's tokenization of the text is the gate's, token by token."""

    ids: tuple[int, ...]
    text: str | None = None
    pieces: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class EndpointSettings:
    """Where the server is and how patiently to talk to it."""

    url: str
    """The API's base URL, e.g. http://127.0.0.1:8000/v1 (a trailing /chat/completions is removed)."""
    model: str
    """The served model name requests ask for."""
    key_env: str | None = None
    """Environment variable holding the API key (sent as a bearer token); None sends no key."""
    timeout_s: float = 60.0
    retries: int = 4
    """Tries after the first on a transient failure."""
    concurrency: int = 8
    """Requests in flight at once."""
    backoff_s: float = 1.0
    """The first retry waits this long; each later one twice the one before."""


@dataclass(frozen=True, slots=True)
class Reply:
    """One completion as the server returned it."""

    text: str
    n_tokens: int | None
    """usage.completion_tokens, when the server reports it."""
    finish_reason: str | None
    """'stop' at an end-of-sequence or stop token, 'length' at max_tokens."""
    refused: str | None = None
    """Why the server refused this request (its status and message), where it did; the text is then empty."""


def base_url(url: str) -> str:
    """'http://h:8000/v1/chat/completions/' -> 'http://h:8000/v1'."""
    url = url.rstrip("/")
    for suffix in ("/chat/completions", "/completions"):
        if url.endswith(suffix):
            return url[: -len(suffix)]
    return url


def is_url(spec: str) -> bool:
    return spec.startswith(("http://", "https://"))


def many(call: Callable[[T], R], items: Sequence[T], concurrency: int) -> Iterator[tuple[int, R]]:
    """(index, call(item)) as each result arrives, at most `concurrency` calls at once. The first failure cancels
    what has not started and is raised once the calls in flight have returned (their results are yielded first,
    so the caller keeps everything that arrived)."""
    pool = cf.ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="dpo-eval-endpoint")
    error: BaseException | None = None
    try:
        futures = {pool.submit(call, item): i for i, item in enumerate(items)}
        for future in cf.as_completed(futures):
            if future.cancelled():
                continue
            if (exc := future.exception()) is not None:
                error = error or exc
                for f in futures:  # nothing new starts; results in flight still arrive and are kept
                    f.cancel()
                continue
            yield futures[future], future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if error is not None:
        raise error


class ChatEndpoint:
    """One served model behind an OpenAI-compatible API."""

    def __init__(self, settings: EndpointSettings) -> None:
        self.settings = settings
        self.url = base_url(settings.url)
        key = None
        if settings.key_env:
            key = os.environ.get(settings.key_env)
        self._headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}

    def identity(self) -> dict[str, str]:
        """What makes two endpoints answer alike, for cache keys: the URL and the served model (never the key)."""
        return {"url": self.url, "model": self.settings.model}

    def models(self) -> list[str] | None:
        """The served model names (GET /models); None when the server does not list them (404)."""
        cards = self.model_cards()
        return None if cards is None else list(cards)

    def model_cards(self) -> dict[str, dict[str, Any]] | None:
        """The served models by name with what the server says of each (vLLM: `root`, the weights it loaded,
        and `parent`, the base of a LoRA module); None when the server does not list them (404)."""
        try:
            body = self._request("GET", "/models", None)
        except _NotFound:
            return None
        try:
            return {str(m["id"]): dict(m) for m in body["data"]}
        except (KeyError, TypeError):
            raise EndpointError(f"{self.url}/models answered {_snippet(body)}, not a model list ({{'data': [{{'id': "
                                f"...}}]}}). Check that the URL is the server's OpenAI-compatible base URL "
                                f"(ending in /v1).") from None

    def check(self, option: str) -> None:
        """Raise EndpointError unless the server is up and serves settings.model (when it lists its models)."""
        names = self.models()
        if names is not None and self.settings.model not in names:
            raise EndpointError(f"{self.url} does not serve the model {self.settings.model!r}; it serves "
                                f"{', '.join(map(repr, names)) or 'nothing'}. Fix {option}.")

    def chat(self, messages: Sequence[Message], max_tokens: int) -> str:
        """The reply to one conversation, greedy (temperature 0)."""
        return self.generate(messages, max_tokens=max_tokens).text

    def generate(self, prompt: Sequence[Message] | Sequence[int], *, max_tokens: int, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int | None = None) -> Reply:
        """One completion: chat messages through /chat/completions (the server applies its chat template),
        or prompt token ids through /completions (the prompt exactly as given, no template)."""
        chat = bool(prompt) and not isinstance(prompt[0], int)
        body: dict[str, Any] = {"model": self.settings.model, "max_tokens": max_tokens, "temperature": temperature,
                                "top_p": top_p, **({"seed": seed} if seed is not None else {})}
        if chat:
            body["messages"] = [{"role": r, "content": c} for r, c in prompt]  # type: ignore[misc]
        else:
            body["prompt"] = list(prompt)
        route = "/chat/completions" if chat else "/completions"
        reply = self._request("POST", route, body)
        try:
            choice = reply["choices"][0]
            text = choice["message"]["content"] if chat else choice["text"]
            usage = reply.get("usage") or {}
        except (KeyError, IndexError, TypeError, AttributeError):
            where = "choices[0].message.content" if chat else "choices[0].text"
            raise EndpointError(f"{self.url}{route} answered {_snippet(reply)}, which has no {where}. Check that "
                                f"the server speaks the OpenAI {route.strip('/')} API.") from None
        n = usage.get("completion_tokens")
        return Reply("" if text is None else str(text), int(n) if isinstance(n, int) else None,
                     choice.get("finish_reason"))

    def prompt_logprobs(self, prompt: Tokens, mode: ScoringMode, start: int = 1) -> list[float]:
        """log p(ids[j] | ids[:j]) for j = start .. len(ids) - 1 from the server, the sequence scored as sent:
        its token ids with `prompt_logprobs` (vLLM's extension: one entry per prompt token, keyed by token id) or
        `echo` (the legacy completions API: the prompt echoed with its token log-probs, as lm-evaluation-harness
        asks), or its text with `echo_text`, the echoed tokens checked piece by piece against the gate's. A
        server that scored other tokens than those sent (it retokenized, or cut the prompt) is refused."""
        ids = prompt.ids
        body: dict[str, Any] = {"model": self.settings.model, "max_tokens": 1, "temperature": 0.0,
                                "prompt": prompt.text if mode == "echo_text" else list(ids)}
        body.update({"prompt_logprobs": 0} if mode == "prompt_logprobs" else {"echo": True, "logprobs": 1})
        reply = self._request("POST", "/completions", body)
        try:
            choice = reply["choices"][0]
            if mode == "prompt_logprobs":
                entries = choice["prompt_logprobs"]
                if len(entries) != len(ids) or any(str(t) not in e for t, e in zip(ids[1:], entries[1:])):
                    raise _Retokenized(f"scored {len(entries)} prompt tokens for the {len(ids)} token ids sent")
                return [float(_logprob(e[str(t)])) for t, e in zip(ids[start:], entries[start:])]
            logprobs = choice["logprobs"]
            values = logprobs["token_logprobs"]
            if mode == "echo":
                if not len(ids) <= len(values) <= len(ids) + 1:  # the prompt, then at most the one token generated
                    raise _Retokenized(f"scored {len(values)} prompt tokens for the {len(ids)} token ids sent")
                return [float(v) for v in values[start:len(ids)]]
            assert prompt.pieces is not None, "echo_text scores Tokens with their pieces"
            return _echoed(prompt.pieces, logprobs, int(reply["usage"]["completion_tokens"]), start)
        except _Retokenized as e:
            raise Retokenized(f"{self.url}/completions, asked for {self.settings.model!r}, {e}, so its log-probs "
                              f"cannot stand for the gate's tokens. Serve the model with the base's tokenizer from a "
                              f"server that returns prompt log-probs token by token (vLLM), or score locally "
                              f"(--serve-scoring local).") from None
        except (KeyError, IndexError, TypeError, ValueError, AttributeError):
            where = {"prompt_logprobs": "choices[0].prompt_logprobs", "echo": "choices[0].logprobs.token_logprobs",
                     "echo_text": "choices[0].logprobs.tokens and token_logprobs, and usage.completion_tokens"}[mode]
            raise Unsupported(f"{self.url}/completions answered {_snippet(reply)}, which has no {where} for the "
                              f"prompt. Score locally (--serve-scoring local).") from None

    def scoring_mode(self, probe: Tokens, start: int = 1) -> ScoringMode:
        """How this server returns prompt log-probs (of probe.ids[start:]), found with one small request each, in
        SCORING_MODES' order; an EndpointError naming what is missing and the option that avoids it."""
        tried = []
        for mode in SCORING_MODES:
            try:
                self.prompt_logprobs(probe, mode, start)
                return mode
            except RequestRefused as e:
                tried.append(f"{mode}: HTTP {e.status}")
            except Unsupported as e:
                tried.append(f"{mode}: {str(e)[:160]}")
        raise Unsupported(f"{self.url} returns no log-probs of a prompt for {self.settings.model!r} (tried "
                          f"{'; '.join(tried)}). The reward and multiple-choice claims need them: serve the model "
                          f"with vLLM (prompt_logprobs), or with a server whose /completions echoes log-probs "
                          f"(llama-cpp-python: load the model with logits_all), or score locally "
                          f"(--serve-scoring local).")

    def chat_many(self, conversations: Sequence[Sequence[Message]], max_tokens: int) -> Iterator[tuple[int, str]]:
        """(index, reply) as each reply arrives (see `many`)."""
        return self.many(lambda c: self.chat(c, max_tokens), conversations)

    def many(self, call: Callable[[T], R], items: Sequence[T]) -> Iterator[tuple[int, R]]:
        """(index, call(item)) as each result arrives, at most settings.concurrency requests in flight (`many`)."""
        return many(call, items, self.settings.concurrency)

    def _request(self, method: str, path: str, body: Any) -> Any:
        """JSON in, JSON out, transient failures retried with backoff."""
        s, url = self.settings, self.url + path
        data = None if body is None else json.dumps(body).encode("utf-8")
        last = ""
        for attempt in range(s.retries + 1):
            wait = s.backoff_s * 2 ** attempt
            request = urllib.request.Request(url, data=data, method=method, headers=self._headers)
            try:
                with urllib.request.urlopen(request, timeout=s.timeout_s) as response:
                    raw = response.read()
            except urllib.error.HTTPError as e:
                text = e.read().decode("utf-8", "replace")
                if e.code == 404 and method == "GET":
                    raise _NotFound() from None
                if e.code in RETRY_STATUS and VALIDATION.search(text):
                    raise RequestRefused(f"{method} {url} answered HTTP {e.code} with a request validation error: "
                                         f"{text[:300]!r}. The server rejected what was sent; that is not a "
                                         f"transient fault, so it is not retried.", e.code) from None
                if e.code in REFUSED_STATUS:
                    raise RequestRefused(f"{method} {url} answered HTTP {e.code}: {text[:300]!r}. " + _fix(e.code),
                                         e.code) from None
                if e.code not in RETRY_STATUS:
                    raise EndpointError(f"{method} {url} answered HTTP {e.code}: {text[:300]!r}. "
                                        + _fix(e.code)) from None
                last = f"HTTP {e.code}: {text[:200]!r}"
                wait = max(wait, _retry_after(e.headers.get("Retry-After")))
            except (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError,
                    http.client.IncompleteRead) as e:  # a body cut off mid-way is retried like a reset
                reason = getattr(e, "reason", e)
                last = (f"no answer within {s.timeout_s:g} s" if isinstance(reason, (socket.timeout, TimeoutError))
                        else f"{reason}")
            else:
                try:
                    return json.loads(raw)
                except ValueError:
                    raise EndpointError(f"{method} {url} answered HTTP 200 with a body that is not JSON: "
                                        f"{raw[:200].decode('utf-8', 'replace')!r}. Check that the URL is the "
                                        f"server's OpenAI-compatible base URL (ending in /v1).") from None
            if attempt < s.retries:
                time.sleep(wait)
        raise EndpointError(f"{method} {url} failed {s.retries + 1} times, last: {last}. Start the server or fix "
                            f"its URL; for a slow server raise the timeout or lower the concurrency.")


class _Retokenized(Exception):
    """What the server scored instead of the tokens sent."""


def _aligned(pieces: Sequence[str], tokens: Sequence[str], values: Sequence[float | None], start: int) -> list[float]:
    """The server's log-probs of pieces[start:], its echoed (tokens, values) matched to the gate's pieces
    (`_matched`); a token asked for without a value is _Retokenized."""
    at = _matched(pieces, tokens)
    got = [values[k] if k >= 0 else None for k in at[start:]]
    if (missing := sum(v is None for v in got)):
        raise _Retokenized(f"gave no log-prob for {missing} of the {len(pieces) - start} tokens asked")
    return [float(v) for v in got]  # type: ignore[arg-type]


def _matched(pieces: Sequence[str], tokens: Sequence[str]) -> list[int]:
    """For each of the gate's pieces, the index of the server's echoed token for it (-1: none), matched from the
    end: equal pieces pair up; a special token of the gate's ("") may have none (llama.cpp lists no entry for its
    BOS token id, which starts the text or follows text, as in "\n<|im_start|>"). Any other difference, or an
    extra token, is _Retokenized."""
    at, j = [-1] * len(pieces), len(tokens) - 1
    for i in range(len(pieces) - 1, -1, -1):
        if j >= 0 and str(tokens[j]).replace("\ufffd", "") == pieces[i]:
            at[i], j = j, j - 1
        elif pieces[i]:
            got = "".join(map(str, tokens[max(0, j - 3):j + 1]))
            raise _Retokenized(f"split the text into other tokens ({got!r} where the gate has "
                               f"{''.join(pieces[max(0, i - 3):i + 1])!r})")
    if j >= 0:
        raise _Retokenized(f"scored {j + 1} more tokens than the {len(pieces)} of the gate")
    return at


def _echoed(pieces: Sequence[str], logprobs: Mapping[str, Any], generated: int, start: int) -> list[float]:
    """The log-probs of pieces[start:] from an echo of their text that went on to generate `generated` tokens
    (usage.completion_tokens; asked for 1). The generated token is listed last, and at temperature 0 it is the
    likeliest by the server's own numbers (where it gives top_logprobs): otherwise the values are not those of
    their tokens. llama-cpp-python lists no entry for a generated token that is its BOS id; its values are right
    only where it left out the text's first token as its BOS, so only then is an echo without the generated
    token taken."""
    tokens, values, top = logprobs["tokens"], logprobs["token_logprobs"], logprobs.get("top_logprobs")
    echoed = len(tokens) - generated
    try:
        got = _aligned(pieces, tokens[:echoed], values[:echoed], start)
    except _Retokenized as e:
        if generated != 1:
            raise
        try:  # the generated token may have no entry
            if _matched(pieces, tokens)[0] >= 0:
                raise e
            return _aligned(pieces, tokens, values, start)
        except _Retokenized:
            raise e from None
    if generated == 1 and top and top[-1] and values[-1] < max(top[-1].values()) - 1e-3:
        raise _Retokenized("returned log-probs that are not those of its tokens: the token it generated at "
                           "temperature 0 is not the likeliest by its own numbers")
    return got


def _logprob(entry: Any) -> float:
    """A prompt_logprobs entry: {"logprob": x, ...} (vLLM) or the number itself."""
    return entry["logprob"] if isinstance(entry, dict) else entry


class _NotFound(Exception):
    """GET of an optional route answered 404."""


def _retry_after(value: str | None) -> float:
    try:
        return min(float(value), MAX_RETRY_AFTER_S) if value else 0.0
    except ValueError:
        return 0.0


def _fix(code: int) -> str:
    if code in (401, 403):
        return "The server refused the key: set the environment variable named by the key option."
    if code == 404:
        return "Check the URL (the server's base URL, ending in /v1) and the served model name."
    if code in REFUSED_STATUS:
        return "The server refused this request (a prompt past its context length, often): see its message."
    return "Check the served model name and the server's log."


def _snippet(obj: Any) -> str:
    return repr(json.dumps(obj)[:200])


class Replicas:
    """One served model behind several servers (replicas of the same engine): each request goes to the live
    replica with the fewest requests in flight, at most `concurrency` in flight on each. A replica that stops
    answering (a fault that outlasted its retries) is left out for the rest of the run, with the reason, and
    the request goes to another; a request the server refused for what it holds (RequestRefused) is not sent
    elsewhere. The run stops only when no replica is left. With one URL it behaves as that ChatEndpoint."""

    def __init__(self, endpoints: Sequence[ChatEndpoint]) -> None:
        if not endpoints:
            raise ValueError("Replicas: at least one endpoint")
        self.endpoints, self.settings = list(endpoints), endpoints[0].settings
        self.url = endpoints[0].url if len(endpoints) == 1 else ", ".join(e.url for e in endpoints)
        self.answered = [0] * len(endpoints)
        self.down: dict[int, str] = {}
        self._in_flight = [0] * len(endpoints)
        self._ready = threading.Condition()

    def identity(self) -> dict[str, Any]:
        """The URL (the sorted URLs of several replicas: they serve the same weights) and the served model."""
        urls = sorted(e.url for e in self.endpoints)
        return {"url": urls[0] if len(urls) == 1 else urls, "model": self.settings.model}

    def report(self) -> list[dict[str, Any]]:
        """Per replica: its URL, the requests it answered, and why it was left out (None while live)."""
        return [{"url": e.url, "answered": self.answered[i], "down": self.down.get(i)}
                for i, e in enumerate(self.endpoints)]

    def call(self, fn: Callable[[ChatEndpoint], R]) -> R:
        """fn(a live replica), on another replica when that one stops answering."""
        while True:
            with self._ready:
                while True:
                    live = [i for i in range(len(self.endpoints)) if i not in self.down]
                    if not live:
                        raise EndpointError("every replica stopped answering: " + "; ".join(
                            f"{self.endpoints[i].url}: {why}" for i, why in sorted(self.down.items())))
                    free = [i for i in live if self._in_flight[i] < self.settings.concurrency]
                    if free:
                        i = min(free, key=lambda k: (self._in_flight[k], k))
                        self._in_flight[i] += 1
                        break
                    self._ready.wait()
            try:
                out = fn(self.endpoints[i])
            except (RequestRefused, Retokenized, Unsupported):
                raise
            except EndpointError as e:
                with self._ready:
                    self.down.setdefault(i, str(e)[:300])
                continue
            finally:
                with self._ready:
                    self._in_flight[i] -= 1
                    self._ready.notify_all()
            with self._ready:
                self.answered[i] += 1
            return out

    def model_cards(self) -> dict[str, dict[str, Any]] | None:
        """The served models of the replicas that answer (a replica down at start is left out, with the reason);
        refused when the live replicas disagree on what a name is (other weights behind the same name)."""
        cards: dict[str, dict[str, Any]] | None = None
        for i, endpoint in enumerate(self.endpoints):
            try:
                mine = endpoint.model_cards()
            except EndpointError as e:
                self.down[i] = str(e)[:300]
                continue
            if cards is not None and mine is not None and any(
                    cards.get(n, {}).get("root") != c.get("root") for n, c in mine.items() if n in cards):
                raise EndpointError(f"the replicas {self.endpoints[0].url} and {endpoint.url} serve different weights "
                                    f"under the same names ({_snippet(cards)} vs {_snippet(mine)}): give --serve-url "
                                    f"the replicas of one deployment.")
            cards = mine if cards is None else cards
        if len(self.down) == len(self.endpoints):
            raise EndpointError("no replica answered: " + "; ".join(f"{self.endpoints[i].url}: {why}"
                                                                    for i, why in sorted(self.down.items())))
        return cards

    def generate(self, prompt: Sequence[Message] | Sequence[int], **kw: Any) -> Reply:
        return self.call(lambda e: e.generate(prompt, **kw))

    def prompt_logprobs(self, prompt: Tokens, mode: ScoringMode, start: int = 1) -> list[float]:
        return self.call(lambda e: e.prompt_logprobs(prompt, mode, start))

    def scoring_mode(self, probe: Tokens, start: int = 1) -> ScoringMode:
        """The way every live replica returns prompt log-probs (refused when they differ)."""
        modes = {}
        for i, endpoint in enumerate(self.endpoints):
            if i in self.down:
                continue
            try:
                modes[endpoint.url] = endpoint.scoring_mode(probe, start)
            except (Unsupported, Retokenized, RequestRefused):
                raise
            except EndpointError as e:  # this replica stopped answering: the others score
                self.down.setdefault(i, str(e)[:300])
        if not modes:
            raise EndpointError("every replica stopped answering: " + "; ".join(
                f"{self.endpoints[i].url}: {why}" for i, why in sorted(self.down.items())))
        if len(set(modes.values())) > 1:
            raise EndpointError(f"the replicas return prompt log-probs in different ways ({modes}): give --serve-url "
                                f"the replicas of one deployment.")
        return next(iter(modes.values()))

    def many(self, call: Callable[[T], R], items: Sequence[T]) -> Iterator[tuple[int, R]]:
        """As ChatEndpoint.many, with every replica's concurrency in flight."""
        return many(call, items, self.settings.concurrency * len(self.endpoints))
