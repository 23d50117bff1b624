"""Slack's AI-app methods for FakeSlack: chat.startStream / appendStream / stopStream and
assistant.threads.setStatus / setSuggestedPrompts, checked the way Slack checks them.

A stream is one message: startStream opens it (a reply in a thread; in a channel it needs the
recipient's user and team), appendStream adds markdown, stopStream adds the last text and
optional blocks (feedback buttons) and closes it. Texts over 12,000 characters, appends to a
closed stream and malformed prompts are refused with Slack's error codes. Streams can be made
to expire after some appends, as Slack ends a stream after a few minutes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MAX_MARKDOWN_CHARS = 12_000  # per markdown_text, and per markdown_text chunk
MAX_PROMPTS = 4
MAX_LOADING_MESSAGES = 10
MAX_BUTTON_TEXT = 75
MAX_BUTTON_VALUE = 2_000
MAX_CONTEXT_ACTIONS = 5
STREAM_METHODS = ("chat.startStream", "chat.appendStream", "chat.stopStream")

Answer = dict[str, Any]


@dataclass
class StreamedMessage:
    channel: str
    ts: str
    thread_ts: str
    recipient_user_id: str | None
    recipient_team_id: str | None
    pieces: list[str] = field(default_factory=list)  # the markdown of each call, in order
    appends: int = 0
    stopped: bool = False
    blocks: list[dict[str, Any]] | None = None

    @property
    def text(self) -> str:
        return "".join(self.pieces)


@dataclass(frozen=True)
class ThreadStatus:
    channel_id: str
    thread_ts: str
    status: str
    loading_messages: tuple[str, ...] = ()


@dataclass
class SlackAI:
    """The state behind the AI-app methods; FakeSlack serves them through `serve`."""

    new_ts: Callable[[], str]
    blocks_valid: Callable[[list[dict[str, Any]]], bool]
    streaming: bool = False  # False: the stream methods are unknown, as on an older Slack
    streams: dict[str, StreamedMessage] = field(default_factory=dict)  # by ts
    statuses: list[ThreadStatus] = field(default_factory=list)
    suggested_prompts: list[dict[str, Any]] = field(default_factory=list)
    expire_after_appends: int | None = None

    def serve(self, method: str, body: dict[str, Any]) -> Answer | None:
        """Slack's answer, or None if `method` is not one of these."""
        if method in STREAM_METHODS and not self.streaming:
            return None
        handlers: dict[str, Callable[[dict[str, Any]], Answer]] = {
            "chat.startStream": self._start,
            "chat.appendStream": self._append,
            "chat.stopStream": self._stop,
            "assistant.threads.setStatus": self._set_status,
            "assistant.threads.setSuggestedPrompts": self._set_prompts,
        }
        handler = handlers.get(method)
        return handler(body) if handler else None

    def streams_in(self, channel: str) -> list[StreamedMessage]:
        return [s for s in self.streams.values() if s.channel == channel]

    # ---- streaming

    def _start(self, body: dict[str, Any]) -> Answer:
        channel, thread_ts = body.get("channel"), body.get("thread_ts")
        if not channel:
            return _error("channel_not_found")
        if not thread_ts:
            return _error("invalid_arguments")
        in_channel = not str(channel).startswith("D")
        if in_channel and not body.get("recipient_user_id"):
            return _error("missing_recipient_user_id")
        if in_channel and not body.get("recipient_team_id"):
            return _error("missing_recipient_team_id")
        markdown, problem = _markdown_of(body, required=False)
        if problem:
            return _error(problem)
        ts = self.new_ts()
        stream = StreamedMessage(
            channel,
            ts,
            thread_ts,
            body.get("recipient_user_id"),
            body.get("recipient_team_id"),
        )
        stream.pieces.append(markdown)
        self.streams[ts] = stream
        return {"ok": True, "channel": channel, "ts": ts}

    def _append(self, body: dict[str, Any]) -> Answer:
        stream, markdown, problem = self._open_stream(body, text_required=True)
        if stream is None:
            return _error(problem)
        if self.expire_after_appends is not None and stream.appends >= self.expire_after_appends:
            stream.stopped = True  # Slack ended it: this and every later call is refused
            return _error("message_not_in_streaming_state")
        stream.appends += 1
        stream.pieces.append(markdown)
        return {"ok": True, "channel": stream.channel, "ts": stream.ts}

    def _stop(self, body: dict[str, Any]) -> Answer:
        stream, markdown, problem = self._open_stream(body, text_required=False)
        if stream is None:
            return _error(problem)
        blocks = body.get("blocks")
        if blocks is not None and not (self.blocks_valid(blocks) and _actions_valid(blocks)):
            return _error("invalid_blocks")
        stream.pieces.append(markdown)
        stream.blocks = blocks
        stream.stopped = True
        return {"ok": True, "channel": stream.channel, "ts": stream.ts}

    def _open_stream(
        self, body: dict[str, Any], *, text_required: bool
    ) -> tuple[StreamedMessage | None, str, str]:
        """The open stream a call names and the markdown it adds, or None and the problem."""
        stream = self.streams.get(str(body.get("ts")))
        if stream is None or stream.channel != body.get("channel"):
            return None, "", "message_not_found"
        if stream.stopped:
            return None, "", "message_not_in_streaming_state"
        markdown, problem = _markdown_of(body, required=text_required)
        return (None, "", problem) if problem else (stream, markdown, "")

    # ---- assistant threads

    def _set_status(self, body: dict[str, Any]) -> Answer:
        channel, thread_ts = body.get("channel_id"), body.get("thread_ts")
        status = body.get("status")
        loading = body.get("loading_messages") or []
        if not channel or not thread_ts or not isinstance(status, str):
            return _error("invalid_arguments")
        if len(loading) > MAX_LOADING_MESSAGES or not all(isinstance(m, str) for m in loading):
            return _error("invalid_arguments")
        self.statuses.append(ThreadStatus(channel, thread_ts, status, tuple(loading)))
        return {"ok": True}

    def _set_prompts(self, body: dict[str, Any]) -> Answer:
        prompts = body.get("prompts")
        if not body.get("channel_id") or not isinstance(prompts, list):
            return _error("invalid_arguments")
        complete = all(isinstance(p, dict) and p.get("title") and p.get("message") for p in prompts)
        if not 1 <= len(prompts) <= MAX_PROMPTS or not complete:
            return _error("invalid_arguments")
        self.suggested_prompts.append(body)
        return {"ok": True}


def _markdown_of(body: dict[str, Any], *, required: bool) -> tuple[str, str]:
    """The markdown a call adds (its markdown_text, or its markdown_text chunks), or a problem."""
    texts = [body["markdown_text"]] if body.get("markdown_text") else []
    for chunk in body.get("chunks") or []:
        if not isinstance(chunk, dict) or chunk.get("type") != "markdown_text":
            return "", "invalid_chunks"
        texts.append(str(chunk.get("text") or ""))
    if required and not any(texts):
        return "", "no_text"
    if any(len(text) > MAX_MARKDOWN_CHARS for text in texts):
        return "", "msg_too_long"
    return "".join(texts), ""


def _actions_valid(blocks: list[dict[str, Any]]) -> bool:
    """context_actions blocks hold 1-5 feedback buttons or icon buttons, labels and values in
    Slack's limits."""
    for block in blocks:
        if block.get("type") != "context_actions":
            continue
        elements = block.get("elements") or []
        if not 1 <= len(elements) <= MAX_CONTEXT_ACTIONS:
            return False
        for element in elements:
            if element.get("type") == "feedback_buttons" and not _feedback_valid(element):
                return False
            if element.get("type") not in ("feedback_buttons", "icon_button"):
                return False
    return True


def _feedback_valid(element: dict[str, Any]) -> bool:
    for side in ("positive_button", "negative_button"):
        button = element.get(side) or {}
        text = (button.get("text") or {}).get("text") or ""
        value = button.get("value") or ""
        if not text or len(text) > MAX_BUTTON_TEXT or not value or len(value) > MAX_BUTTON_VALUE:
            return False
    return True


def _error(code: str) -> Answer:
    return {"ok": False, "error": code}


def feedback_click(
    stream: StreamedMessage, *, good: bool, team_id: str, response_url: str, user: str
) -> dict[str, Any]:
    """The block_actions payload Slack sends when `user` clicks 👍 (good) or 👎 under a
    stopped stream's feedback buttons."""
    block = next(b for b in stream.blocks or [] if b["type"] == "context_actions")
    element = next(e for e in block["elements"] if e["type"] == "feedback_buttons")
    button = element["positive_button" if good else "negative_button"]
    action = {
        "type": "feedback_buttons",
        "action_id": element["action_id"],
        "block_id": block.get("block_id", "fb"),
        "value": button["value"],
        "action_ts": "3.0",
    }
    return {
        "type": "block_actions",
        "team": {"id": team_id, "domain": "fake"},
        "user": {"id": user, "username": user.lower(), "team_id": team_id},
        "api_app_id": "A0EMBER",
        "token": "legacy-verification-token",
        "container": {"type": "message", "channel_id": stream.channel, "message_ts": stream.ts},
        "channel": {"id": stream.channel, "name": "general"},
        "message": {"type": "message", "ts": stream.ts, "thread_ts": stream.thread_ts},
        "trigger_id": "trigger-3",
        "response_url": response_url,
        "actions": [action],
    }
