"""OpenAI-compatible servers on 127.0.0.1 for the tests: the real HTTP clients talk to them.

`Server` speaks the API and plays scripted faults; `judge_server` answers chat completions with a
function of the prompt (a judge); `model_server` answers from a loaded Hugging Face model with and
without its adapter, as vLLM serves a base and its LoRA modules. Run as a script it serves the demo (or
any adapter) that way, for end-to-end runs by hand:

    python tests/api_server.py [--adapter ckpt/] [--port 8000]
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Mapping

MARK_A, MARK_B = "[The Start of Assistant A's Answer]\n", "[The Start of Assistant B's Answer]\n"
END_A, END_B = "\n[The End of Assistant A's Answer]", "\n[The End of Assistant B's Answer]"

Respond = Callable[[str, dict], dict]
"""(route, request body) -> response body."""


def answers_in(prompt: str) -> tuple[str, str]:
    """(answer A, answer B) from a prompt rendered with the default judge template."""
    a = prompt.split(MARK_A, 1)[1].split(END_A, 1)[0]
    b = prompt.split(MARK_B, 1)[1].split(END_B, 1)[0]
    return a, b


def prefers_longer(prompt: str) -> str:
    """A judge that always prefers the longer answer (a tie at equal length): consistent in both orders."""
    a, b = answers_in(prompt)
    return "[[A]]" if len(a) > len(b) else "[[B]]" if len(b) > len(a) else "[[C]]"


VALIDATION_ERROR = (b'{"detail": [{"type": "string_type", "loc": ["body", "prompt"], '
                    b'"msg": "Input should be a valid string"}]}')
"""llama-cpp-python's answer to a prompt of token ids: a 500, not a 4xx."""
INVALID: Any = object()
"""What `respond` returns for a request the server refuses with VALIDATION_ERROR."""


class Server:
    """A server on 127.0.0.1 that lists `cards` at /v1/models and answers POSTs with `respond`, after playing
    `script` from its start: one entry per POST, an HTTP status, 'slow' (sleep slow_s first), 'malformed'
    (a body that is not JSON), 'truncated' (the connection breaks mid-body), 'invalid' (a 500 whose body is a
    request validation error) or 'ok'. A POST for a model it does not list gets a 404, as vLLM answers."""

    def __init__(self, respond: Respond, cards: list[dict]) -> None:
        self.respond, self.cards, self.script, self.requests = respond, cards, [], []
        self.lock, self.slow_s = threading.Lock(), 1.0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path != "/v1/models":
                    return self.send(404, b'{"error": "not found"}')
                self.send(200, json.dumps({"object": "list", "data": server.cards}).encode())

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                    step = server.script.pop(0) if server.script else "ok"
                if step == "slow":
                    time.sleep(server.slow_s)
                if isinstance(step, int):
                    return self.send(step, b'{"error": {"message": "scripted failure"}}')
                if step == "invalid":
                    return self.send(500, VALIDATION_ERROR)
                if step == "malformed":
                    return self.send(200, b"<html>not the API</html>")
                if step == "truncated":  # the connection breaks mid-body: the client sees IncompleteRead
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    self.wfile.write(b'{"choices": [')
                    self.close_connection = True
                    return None
                if body.get("model") not in {c["id"] for c in server.cards}:
                    return self.send(404, json.dumps({"error": f"model {body.get('model')!r} does not exist"}).encode())
                out = server.respond(self.path.removeprefix("/v1"), body)
                if out is INVALID:
                    return self.send(500, VALIDATION_ERROR)
                self.send(200, json.dumps(out).encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def judge_server(reply: Callable[[str], str], models: tuple[str, ...] = ("judge-7b",)) -> Server:
    """Chat completions whose content is reply(the last message's content)."""
    def respond(route: str, body: dict) -> dict:
        content = reply(body["messages"][-1]["content"])
        return {"id": "x", "object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}]}
    return Server(respond, [{"id": m} for m in models])


def model_server(backend: Any, served: Mapping[str, bool | str], base: str, cards_extra: Mapping[str, dict] | None = None,
                 scoring: tuple[str, ...] = ("prompt_logprobs", "echo"),
                 echo_bos: int | None = None) -> Server:
    """Greedy answers from an HFBackend: `served` maps each served name to adapter on (a LoRA module of `base`),
    off (the base), or the name of another PEFT adapter on the backend's model (a checkpoint of a series). /completions takes prompt token ids or text; /chat/completions applies the model's chat template.
    Requests that arrive together are decoded together (a batching thread, as serving engines batch); one
    batch per adapter state and reply budget. A /completions request may ask for the prompt's log-probs as
    vLLM does (`prompt_logprobs`) or as the legacy API does (`echo` with `logprobs`), where `scoring` lists it;
    a server without either ignores the field, as servers ignore what they do not know. With "echo_text" it
    answers as llama-cpp-python's server: /completions takes only text (token ids get a 500 whose body is a
    validation error) and echoes the prompt's log-probs its way (`llama_echo`; `echo_bos`: the id it takes for
    BOS, the tokenizer's by default)."""
    import queue

    import torch

    from dpo_eval_core.backend import GenerationSettings, decode

    waiting: queue.Queue = queue.Queue()
    eos = backend._eos_ids()
    model_lock = threading.Lock()  # one forward at a time: the adapter state is the model's

    def adapter_context(which: bool | str) -> Any:
        return (backend.adapter_context(which) if isinstance(which, bool) else
                backend.with_adapter(which).adapter_context(True))

    def prompt_logprobs(ids: list[int], adapter: bool) -> tuple[list[float], int, float]:
        """(log p(ids[j] | ids[:j]) for j >= 1, the greedy next token, its log-prob), float32 log-softmax."""
        with model_lock, torch.inference_mode(), adapter_context(adapter):
            logits = backend.model(input_ids=torch.tensor([ids], device=backend.device)).logits[0].float()
        logp = torch.log_softmax(logits, dim=-1)
        values = logp[:-1].gather(1, torch.tensor(ids[1:], device=logp.device)[:, None])[:, 0].tolist()
        nxt = int(logp[-1].argmax())
        return values, nxt, float(logp[-1, nxt])

    def worker() -> None:
        while True:
            jobs = [waiting.get()]
            time.sleep(0.05)  # let the requests in flight join the batch
            while not waiting.empty():
                jobs.append(waiting.get())
            for key in {(adapter, n) for _, adapter, n, _ in jobs}:
                group = [j for j in jobs if (j[1], j[2]) == key]
                with model_lock, torch.inference_mode(), adapter_context(key[0]):
                    for i, row in decode(backend.model, [j[0] for j in group], pad=backend.tokenizer.pad_token_id,
                                         eos=eos, settings=GenerationSettings(max_new_tokens=key[1]),
                                         device=backend.device):
                        group[i][3].put(row)

    threading.Thread(target=worker, daemon=True).start()

    def score(body: dict) -> dict:
        ids = list(body["prompt"])
        values, nxt, nxt_logp = prompt_logprobs(ids, served[body["model"]])
        tok = backend.tokenizer.convert_ids_to_tokens
        if body.get("prompt_logprobs") is not None:
            entries = [None] + [{str(t): {"logprob": v, "rank": 1, "decoded_token": tok(t)}} for t, v in
                                zip(ids[1:], values)]
            return {"id": "x", "model": body["model"], "choices": [{"index": 0, "finish_reason": "length",
                                                                    "text": tok(nxt), "prompt_logprobs": entries}]}
        tokens = [tok(t) for t in ids] + [tok(nxt)]
        return {"id": "x", "model": body["model"], "choices": [{
            "index": 0, "finish_reason": "length", "text": backend.tokenizer.decode(ids + [nxt]),
            "logprobs": {"tokens": tokens, "token_logprobs": [None, *values, nxt_logp],
                         "top_logprobs": None, "text_offset": list(range(len(tokens)))}}]}

    def llama_echo(body: dict) -> dict:
        """llama-cpp-python 0.3's echo: the text tokenized with special tokens parsed, a leading BOS left out, no
        entry for any other BOS id, special tokens echoed as "", the first value null; each token's value read
        from the logits row of its own index (so right only where a BOS was left out), the generated token
        last, with a top_logprobs entry of the row's likeliest token."""
        tokenizer = backend.tokenizer
        ids = tokenizer(body["prompt"], add_special_tokens=False)["input_ids"]
        with model_lock, torch.inference_mode(), adapter_context(served[body["model"]]):
            logp = torch.log_softmax(backend.model(input_ids=torch.tensor([ids], device=backend.device)).logits[0]
                                     .float(), dim=-1)
        bos = tokenizer.bos_token_id if echo_bos is None else echo_bos
        every = (ids[1:] if ids[0] == bos else ids) + [int(logp[-1].argmax())]
        piece = lambda t: tokenizer.decode([t], skip_special_tokens=True).replace("\ufffd", "")  # noqa: E731
        tokens, values, top = [], [], []
        for t, row in zip(every, logp):
            if t == bos:
                continue
            best = int(row.argmax())
            tokens.append(piece(t))
            values.append(float(row[t]))
            top.append({piece(best): float(row[best]), piece(t): float(row[t])})
        values[0], top[0] = None, None
        return {"id": "x", "model": body["model"], "usage": {"completion_tokens": 1},
                "choices": [{"index": 0, "finish_reason": "length", "text": body["prompt"] + piece(every[-1]),
                             "logprobs": {"tokens": tokens, "token_logprobs": values, "top_logprobs": top,
                                          "text_offset": list(range(len(tokens)))}}]}

    def respond(route: str, body: dict) -> dict:
        if "echo_text" in scoring and route == "/completions":
            if not isinstance(body["prompt"], str):
                return INVALID
            if body.get("echo"):
                return llama_echo(body)
        wants = "prompt_logprobs" if body.get("prompt_logprobs") is not None else "echo" if body.get("echo") else None
        if route == "/completions" and wants in scoring:
            return score(body)
        chat = route == "/chat/completions"
        prompt = body.get("prompt")
        ids = (backend.prompt_ids([(m["role"], m["content"]) for m in body["messages"]]) if chat else
               backend.tokenizer(prompt, add_special_tokens=False)["input_ids"] if isinstance(prompt, str) else prompt)
        done: queue.Queue = queue.Queue()
        waiting.put((list(ids), served[body["model"]], body["max_tokens"], done))
        row = done.get()
        stop = next((i for i, t in enumerate(row) if t in eos), None)
        tokens = row if stop is None else row[:stop]
        text = backend.tokenizer.decode(tokens, skip_special_tokens=True)
        choice = ({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
        return {"id": "x", "model": body["model"], "usage": {"completion_tokens": len(tokens)},
                "choices": [{"index": 0, "finish_reason": "length" if stop is None else "stop", **choice}]}

    cards = [{"id": name, "root": f"/models/{name}", "parent": None if adapter is False else base,
              **(cards_extra or {}).get(name, {})} for name, adapter in served.items()]
    return Server(respond, cards)


def main() -> None:
    """Serve an adapter and its base (the demo's by default) until killed, printing the URL."""
    from pathlib import Path

    from dpo_eval_core import demo
    from dpo_eval_core.backend import HFBackend
    from dpo_eval_core.chat import accepts_system
    from dpo_eval_core.config import EvalConfig
    from dpo_eval_core.models import load_adapted, load_chat_tokenizer, resolve

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", type=Path, default=demo.DEMO_ADAPTER_DIR)
    parser.add_argument("--name", default="tuned", help="the adapter's served name")
    parser.add_argument("--base-name", default="base", help="the base's served name")
    args = parser.parse_args()
    cfg = EvalConfig(adapter=args.adapter)
    spec = resolve(cfg, demo.local_bases(cfg.cache_dir))
    tokenizer = load_chat_tokenizer(spec.base)
    model, _ = load_adapted(spec, "none", "float32", "cpu")
    backend = HFBackend(model, tokenizer, system_ok=accepts_system(tokenizer), device="cpu")
    server = model_server(backend, {args.name: True, args.base_name: False}, args.base_name)
    print(server.url, flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
