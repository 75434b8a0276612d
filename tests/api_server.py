"""A chat-completions server on 127.0.0.1 for the judge tests: the real HTTP client talks to it."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

MARK_A, MARK_B = "[The Start of Assistant A's Answer]\n", "[The Start of Assistant B's Answer]\n"
END_A, END_B = "\n[The End of Assistant A's Answer]", "\n[The End of Assistant B's Answer]"


def answers_in(prompt: str) -> tuple[str, str]:
    """(answer A, answer B) from a prompt rendered with the default template."""
    a = prompt.split(MARK_A, 1)[1].split(END_A, 1)[0]
    b = prompt.split(MARK_B, 1)[1].split(END_B, 1)[0]
    return a, b


def prefers_longer(prompt: str) -> str:
    """A judge that always prefers the longer answer (a tie at equal length): consistent in both orders."""
    a, b = answers_in(prompt)
    return "[[A]]" if len(a) > len(b) else "[[B]]" if len(b) > len(a) else "[[C]]"


class Server:
    """A chat-completions server on 127.0.0.1: it lists `models` and answers `reply(prompt)`, after playing
    `script` (one entry per POST: an HTTP status, 'slow', 'malformed', 'ok') from its start."""

    def __init__(self, reply: Callable[[str], str], models: tuple[str, ...] = ("judge-7b",)) -> None:
        self.reply, self.models, self.script, self.requests = reply, models, [], []
        self.lock, self.slow_s = threading.Lock(), 1.0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
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
                self.send(200, json.dumps({"object": "list", "data": [{"id": m} for m in server.models]}).encode())

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append({"body": body, "auth": self.headers.get("Authorization")})
                    step = server.script.pop(0) if server.script else "ok"
                if step == "slow":
                    time.sleep(server.slow_s)
                if isinstance(step, int):
                    return self.send(step, b'{"error": {"message": "scripted failure"}}')
                if step == "malformed":
                    return self.send(200, b"<html>not the API</html>")
                if body["model"] not in server.models:
                    return self.send(404, json.dumps({"error": f"model {body['model']!r} does not exist"}).encode())
                content = server.reply(body["messages"][-1]["content"])
                self.send(200, json.dumps({"id": "x", "object": "chat.completion", "model": body["model"],
                                           "choices": [{"index": 0, "finish_reason": "stop",
                                                        "message": {"role": "assistant", "content": content}}]
                                           }).encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def main() -> None:
    """Serve the longer-answer judge until killed, printing the URL (for end-to-end runs by hand)."""
    server = Server(prefers_longer)
    print(server.url, flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
