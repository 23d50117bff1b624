"""A loopback stand-in for an OpenAI-compatible chat endpoint, deterministic, for labelling.

It reads the prompts server/labelling/prompts.py writes. Asked to explain, it counts the words
marked <<like this>>; where they are a planted topic's words of the tiny model it names the
topic (as a chat model that knows pirates say 'ahoy' would) with the three commonest, else it
says "the words x, y and z". Asked to detect, it answers 1 for each excerpt holding a word the
label stands for. Modes: "nonsense" answers every prompt with chatter; "not-openai" answers
with something that is not a chat completion; `down_after` answers 503 from that request on.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from server.labelling.prompts import DETECT_HEADING, EXPLANATION_TAG
from server.model.presets import TINY_PLANTED

MODEL = "fake-explainer"
WORD = re.compile(r"[a-z]+")


def explain(prompt: str) -> str:
    marked = Counter(
        word for run in re.findall(r"<<(.*?)>>", prompt) for word in WORD.findall(run.lower())
    )
    for topic, (_, words) in TINY_PLANTED.items():
        if sum(marked[word] for word in words) * 2 > sum(marked.values()):
            common = [word for word, _ in marked.most_common() if word in words][:3]
            return f"These are about {topic}.\n{EXPLANATION_TAG} {topic}: {', '.join(common)}"
    common = [word for word, _ in marked.most_common(3)]
    return f"{EXPLANATION_TAG} the words {', '.join(common)}"


def detect(prompt: str) -> str:
    label = prompt.split("\n", 1)[0].removeprefix("Label: ")
    topic, _, listed = label.rpartition(": ")
    words = set(TINY_PLANTED[topic][1]) if topic in TINY_PLANTED else set()
    words |= set(WORD.findall(listed if topic in TINY_PLANTED else label.removeprefix("the words")))
    excerpts = prompt.split(DETECT_HEADING, 1)[1].strip().splitlines()
    said = [
        int(bool(words & set(WORD.findall(line.lower().split(":", 1)[1])))) for line in excerpts
    ]
    return json.dumps(said)


class FakeExplainer:
    def __init__(self, mode: str = "good", down_after: int | None = None) -> None:
        self.mode = mode
        self.down_after = down_after
        self.chats = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                self._send(200, {"object": "list", "data": [{"id": MODEL, "object": "model"}]})

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, answer = fake.answer(body)
                if isinstance(answer, str):
                    self._send(status, answer.encode(), "text/html")
                else:
                    self._send(status, answer)

            def _send(self, status: int, body: Any, kind: str = "application/json") -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                with contextlib.suppress(ConnectionError):  # a client that stopped (the tests)
                    self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def answer(self, body: dict[str, Any]) -> tuple[int, dict[str, Any] | str]:
        self.chats += 1
        if self.down_after is not None and self.chats > self.down_after:
            return 503, {"error": "overloaded"}
        if self.mode == "not-openai":
            return 200, "<html>Welcome to nginx!</html>"
        prompt = body["messages"][-1]["content"]
        if self.mode == "nonsense":
            content = "I like turtles."
        else:
            content = detect(prompt) if DETECT_HEADING in prompt else explain(prompt)
        message = {"role": "assistant", "content": content}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        return 200, {"id": "x", "object": "chat.completion", "model": MODEL, "choices": [choice]}

    def __enter__(self) -> FakeExplainer:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
