"""A loopback fake of Slack (aiohttp) for the Slack adapter's tests.

It serves the Web API methods the bot uses at `api_url`, response_url webhooks at
`response_url(name)`, the upload URLs files.getUploadURLExternal hands out (the bytes land in
`files`), and the Socket Mode websocket that apps.connections.open hands out.
Every call is recorded in one ordered log (Web API calls, response_url posts and Socket Mode
acks alike), checked like Slack checks it (texts over 4,000 bytes, block limits, tokens), and
failures can be injected per method:

    async with FakeSlack() as slack:
        slack.fail_next("chat.update", SlackFault.rate_limited(1))
        slack.fail_next("response", SlackFault.rejected("invalid_blocks"))
        envelope_id = await slack.push("events_api", slack.event_callback(event, "Ev1"))
        ack = await slack.wait_ack(envelope_id)

It also builds what Slack sends to an app: signed HTTP requests, slash command forms, event
callbacks and block_actions payloads taken from the blocks the bot actually posted.

Slack's AI-app methods (chat.startStream / appendStream / stopStream, assistant.threads.*) live
in fake_slack_ai.py, as `slack.ai`; `FakeSlack(streaming=True)` is a workspace that has the
streaming API (without it, chat.startStream answers unknown_method, as an older Slack would).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import time
import urllib.parse
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import WSMsgType, web

from adapters.slack.settings import SlackSettings
from tests.support.fake_slack_ai import SlackAI

MAX_TEXT_BYTES = 4_000
MAX_BLOCKS = 50
MAX_SECTION_CHARS = 3_000
MAX_PLAIN_TEXT = 75


@dataclass(frozen=True)
class SlackFault:
    """One injected failure: an HTTP status (429 with Retry-After) or a Slack error code."""

    status: int = 200
    error: str = ""
    retry_after: int | None = None

    @classmethod
    def rate_limited(cls, retry_after: int = 1) -> SlackFault:
        return cls(429, "ratelimited", retry_after)

    @classmethod
    def rejected(cls, error: str) -> SlackFault:
        """`{"ok": false, "error": ...}` from the Web API; HTTP 400 from a response_url."""
        return cls(200, error)


CallKind = Literal["api", "response", "ack", "upload"]


@dataclass(frozen=True)
class SlackCall:
    seq: int
    at: float  # the fake's clock when the call arrived
    kind: CallKind
    name: str  # Web API method, response_url name, envelope_id, or uploaded file id
    body: dict[str, Any]
    outcome: str = "ok"  # "ok", or the error the fake answered with


@dataclass
class PostedMessage:
    channel: str
    ts: str
    thread_ts: str | None
    versions: list[str] = field(default_factory=list)  # the posted text, then every update
    times: list[float] = field(default_factory=list)  # the fake's clock at each version
    block_versions: list[list[dict[str, Any]] | None] = field(default_factory=list)

    @property
    def text(self) -> str:
        return self.versions[-1]

    @property
    def blocks(self) -> list[dict[str, Any]] | None:
        return self.block_versions[-1]

    def record(self, body: dict[str, Any], at: float) -> None:
        self.versions.append(body["text"])
        self.times.append(at)
        blocks = body.get("blocks")
        self.block_versions.append(json.loads(blocks) if isinstance(blocks, str) else blocks)


@dataclass
class UploadedFile:
    """A file as files.getUploadURLExternal announced it, its bytes once POSTed to the upload
    URL, and the channel files.completeUploadExternal shared it in."""

    id: str
    filename: str
    length: int
    content: bytes | None = None
    title: str = ""
    channel: str | None = None


@dataclass
class FakeSlack:
    bot_token: str = "xoxb-fake-bot-token"
    app_token: str = "xapp-fake-app-token"
    signing_secret: str = "fake-signing-secret"
    team_id: str = "T0TEAM"
    bot_user_id: str = "UBOT"
    bot_id: str = "BBOT"
    usergroups: dict[str, list[str]] = field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic
    calls: list[SlackCall] = field(default_factory=list)
    messages: dict[str, PostedMessage] = field(default_factory=dict)  # by ts
    files: dict[str, UploadedFile] = field(default_factory=dict)  # by id
    streaming: bool = False  # whether chat.startStream & co. exist (fake_slack_ai.py)

    def __post_init__(self) -> None:
        self.ai = SlackAI(self._new_ts, blocks_are_valid, self.streaming)
        self._faults: dict[str, deque[SlackFault]] = {}
        self._runner: web.AppRunner | None = None
        self._sockets: list[web.WebSocketResponse] = []
        self._ts = itertools.count(1)
        self._file_ids = itertools.count(1)
        self._envelopes = itertools.count(1)
        self.base_url = ""

    # ---- lifecycle

    async def __aenter__(self) -> FakeSlack:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._web_api)
        app.router.add_post("/response/{name}", self._response_url)
        app.router.add_post("/upload/{file_id}", self._upload)
        app.router.add_get("/socket", self._socket)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.base_url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for socket in self._sockets:
            await socket.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # ---- addresses and faults

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api/"

    def response_url(self, name: str) -> str:
        return f"{self.base_url}/response/{name}"

    def fail_next(self, name: str, *faults: SlackFault) -> None:
        """Fail the next calls of Web API method `name` (or "response": any response_url)."""
        self._faults.setdefault(name, deque()).extend(faults)

    # ---- what happened

    def api_calls(self, method: str) -> list[SlackCall]:
        return [c for c in self.calls if c.kind == "api" and c.name == method]

    def responses(self, name: str | None = None) -> list[SlackCall]:
        return [c for c in self.calls if c.kind == "response" and name in (None, c.name)]

    def posted(self, channel: str) -> list[PostedMessage]:
        return [m for m in self.messages.values() if m.channel == channel]

    def shared_files(self, channel: str) -> list[UploadedFile]:
        """Files uploaded and shared in `channel`, in upload order."""
        return [f for f in self.files.values() if f.channel == channel]

    async def wait_for(
        self, condition: Callable[[], Any], within: float = 5.0, what: str = "condition"
    ) -> Any:
        """Poll until `condition()` is truthy and return it; fail after `within` seconds."""
        deadline = time.monotonic() + within
        while not (result := condition()):
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {within} s")
            await asyncio.sleep(0.01)
        return result

    # ---- Socket Mode

    async def push(self, kind: str, payload: dict[str, Any], *, retry_attempt: int = 0) -> str:
        """Send an envelope (events_api, slash_commands, interactive) to the connected app."""
        await self.wait_for(lambda: self._sockets, what="Socket Mode connection")
        envelope_id = f"env-{next(self._envelopes)}"
        envelope = {
            "envelope_id": envelope_id,
            "type": kind,
            "payload": payload,
            "accepts_response_payload": kind != "events_api",
            "retry_attempt": retry_attempt,
            "retry_reason": "timeout" if retry_attempt else "",
        }
        await self._sockets[-1].send_json(envelope)
        return envelope_id

    async def wait_ack(self, envelope_id: str, within: float = 3.0) -> SlackCall:
        return await self.wait_for(
            lambda: next(
                (c for c in self.calls if c.kind == "ack" and c.name == envelope_id), None
            ),
            within,
            f"ack of {envelope_id}",
        )

    # ---- what Slack sends to apps

    def slash_command(
        self, command: str, text: str, *, user: str = "U1ALICE", channel: str = "C1GENERAL"
    ) -> dict[str, str]:
        return {
            "token": "legacy-verification-token",
            "team_id": self.team_id,
            "channel_id": channel,
            "channel_name": "general",
            "user_id": user,
            "user_name": user.lower(),
            "command": command,
            "text": text,
            "api_app_id": "A0EMBER",
            "response_url": self.response_url(f"cmd-{next(self._envelopes)}"),
            "trigger_id": "trigger-1",
        }

    def event_callback(self, event: dict[str, Any], event_id: str) -> dict[str, Any]:
        return {
            "token": "legacy-verification-token",
            "team_id": self.team_id,
            "api_app_id": "A0EMBER",
            "type": "event_callback",
            "event_id": event_id,
            "event_time": int(time.time()),
            "event": {"event_ts": event.get("ts", "1.0"), **event},
            "authorizations": [{"team_id": self.team_id, "user_id": self.bot_user_id}],
        }

    def block_action(
        self,
        blocks: list[dict[str, Any]],
        button_text: str,
        *,
        select_value: str | None = None,
        user: str = "U1ALICE",
        channel: str = "C1GENERAL",
        ephemeral: bool = True,
    ) -> dict[str, Any]:
        """A click on the button labelled `button_text` in `blocks`, after optionally choosing
        `select_value` in the message's select menu (else its initial option stays)."""
        state: dict[str, dict[str, Any]] = {}
        clicked: dict[str, Any] | None = None
        for block in blocks:
            for element in block.get("elements", []) if block["type"] == "actions" else []:
                if element["type"] == "static_select":
                    chosen = select_value or element["initial_option"]["value"]
                    option = next(o for o in element["options"] if o["value"] == chosen)
                    state.setdefault(block["block_id"], {})[element["action_id"]] = {
                        "type": "static_select",
                        "selected_option": option,
                    }
                elif element["type"] == "button" and element["text"]["text"] == button_text:
                    clicked = {**element, "block_id": block["block_id"], "action_ts": "2.0"}
        assert clicked is not None, f"no button {button_text!r} in the blocks"
        payload = {
            "type": "block_actions",
            "team": {"id": self.team_id, "domain": "fake"},
            "user": {"id": user, "username": user.lower(), "team_id": self.team_id},
            "api_app_id": "A0EMBER",
            "token": "legacy-verification-token",
            "container": {"type": "message", "channel_id": channel, "is_ephemeral": ephemeral},
            "channel": {"id": channel, "name": "general"},
            "trigger_id": "trigger-2",
            "response_url": self.response_url(f"action-{next(self._envelopes)}"),
            "state": {"values": state},
            "actions": [clicked],
        }
        if not ephemeral:  # Slack includes a public message, never an ephemeral one
            payload["message"] = {"type": "message", "ts": "1.0", "text": "", "blocks": blocks}
        return payload

    # ---- the Web API

    async def _web_api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        body = await _request_body(request)
        token = request.headers.get("Authorization", "").removeprefix("Bearer ") or body.get(
            "token", ""
        )
        fault = self._take_fault(method)
        if fault.status == 429:
            self._record("api", method, body, "ratelimited")
            return web.json_response(
                {"ok": False, "error": "ratelimited"},
                status=429,
                headers={"Retry-After": str(fault.retry_after or 1)},
            )
        wanted = self.app_token if method == "apps.connections.open" else self.bot_token
        error = fault.error or ("invalid_auth" if token != wanted else "")
        answer = {"ok": False, "error": error} if error else self._serve(method, body)
        self._record("api", method, body, answer.get("error", "ok"))
        return web.json_response(answer)

    def _serve(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        if method == "auth.test":
            return {
                "ok": True,
                "url": "https://fake.slack.com/",
                "team": "Fake",
                "team_id": self.team_id,
                "user": "ember",
                "user_id": self.bot_user_id,
                "bot_id": self.bot_id,
            }
        if method == "apps.connections.open":
            return {"ok": True, "url": self.base_url.replace("http", "ws", 1) + "/socket"}
        if method == "usergroups.users.list":
            users = self.usergroups.get(body.get("usergroup", ""))
            return {"ok": True, "users": users} if users is not None else _error("no_such_subteam")
        if method == "chat.postMessage":
            return self._post_message(body)
        if method == "chat.update":
            return self._update_message(body)
        if method == "files.getUploadURLExternal":
            return self._upload_url(body)
        if method == "files.completeUploadExternal":
            return self._complete_upload(body)
        return self.ai.serve(method, body) or _error("unknown_method")

    def _new_ts(self) -> str:
        return f"{1_700_000_000 + next(self._ts)}.000100"

    def _post_message(self, body: dict[str, Any]) -> dict[str, Any]:
        if not body.get("channel"):
            return _error("channel_not_found")
        if problem := message_problem(body):
            return _error(problem)
        ts = self._new_ts()
        message = PostedMessage(body["channel"], ts, body.get("thread_ts"))
        self.messages[ts] = message
        message.record(body, self.clock())
        return {"ok": True, "channel": body["channel"], "ts": ts, "message": {"text": body["text"]}}

    def _update_message(self, body: dict[str, Any]) -> dict[str, Any]:
        message = self.messages.get(str(body.get("ts")))
        if message is None or message.channel != body.get("channel"):
            return _error("message_not_found")
        if problem := message_problem(body):
            return _error(problem)
        message.record(body, self.clock())
        return {"ok": True, "channel": message.channel, "ts": message.ts, "text": body["text"]}

    # ---- file uploads: announce, POST the bytes, complete

    def _upload_url(self, body: dict[str, Any]) -> dict[str, Any]:
        filename, length = body.get("filename"), str(body.get("length", ""))
        if not filename or not length.isdigit():
            return _error("invalid_arguments")
        file_id = f"F{next(self._file_ids):04}"
        self.files[file_id] = UploadedFile(file_id, filename, int(length))
        return {"ok": True, "upload_url": f"{self.base_url}/upload/{file_id}", "file_id": file_id}

    async def _upload(self, request: web.Request) -> web.Response:
        file_id = request.match_info["file_id"]
        content = await request.read()
        self._record("upload", file_id, {"bytes": len(content)})
        upload = self.files.get(file_id)
        if upload is None or upload.length != len(content):
            return web.Response(status=400, text="length does not match")
        upload.content = content
        return web.Response(text=f"OK - {len(content)}")

    def _complete_upload(self, body: dict[str, Any]) -> dict[str, Any]:
        announced = json.loads(body.get("files") or "[]")
        uploads = [self.files.get(str(f.get("id"))) for f in announced]
        if not uploads or any(u is None or u.content is None for u in uploads):
            return _error("file_not_found")
        shared = []
        for upload, item in zip(uploads, announced, strict=True):
            assert upload is not None
            upload.title = item.get("title") or upload.filename
            upload.channel = body.get("channel_id")
            shared.append({"id": upload.id, "name": upload.filename, "title": upload.title})
        return {"ok": True, "files": shared}

    # ---- response_url

    async def _response_url(self, request: web.Request) -> web.Response:
        body = await request.json()
        fault = self._take_fault("response")
        problem = fault.error or message_problem(body)
        self._record("response", request.match_info["name"], body, problem or "ok")
        if problem:
            return web.Response(status=400 if fault.status == 200 else fault.status, text=problem)
        return web.Response(text="ok")

    # ---- Socket Mode

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse(autoping=True)
        await socket.prepare(request)
        self._sockets.append(socket)
        await socket.send_json({"type": "hello", "num_connections": 1})
        async for message in socket:
            if message.type == WSMsgType.TEXT:
                frame = json.loads(message.data)
                self._record("ack", frame.get("envelope_id", ""), frame)
        self._sockets.remove(socket)
        return socket

    # ---- plumbing

    def _take_fault(self, name: str) -> SlackFault:
        queue = self._faults.get(name)
        return queue.popleft() if queue else SlackFault()

    def _record(self, kind: CallKind, name: str, body: dict[str, Any], outcome: str = "ok") -> None:
        self.calls.append(SlackCall(len(self.calls), self.clock(), kind, name, body, outcome))


def message_problem(body: dict[str, Any]) -> str:
    """The error Slack would answer for this message, or ""."""
    text, blocks = body.get("text") or "", body.get("blocks")
    if isinstance(blocks, str):
        blocks = json.loads(blocks)
    if not text and not blocks:
        return "no_text"
    if len(text.encode()) > MAX_TEXT_BYTES:
        return "msg_too_long"
    if blocks is not None and not blocks_are_valid(blocks):
        return "invalid_blocks"
    return ""


def blocks_are_valid(blocks: list[dict[str, Any]]) -> bool:
    if len(blocks) > MAX_BLOCKS:
        return False
    for block in blocks:
        if block["type"] == "section" and len(block["text"]["text"]) > MAX_SECTION_CHARS:
            return False
        if block["type"] == "actions" and not _elements_are_valid(block["elements"]):
            return False
    return True


def _elements_are_valid(elements: list[dict[str, Any]]) -> bool:
    labels = [e["text"]["text"] for e in elements if e["type"] == "button"]
    for element in elements:
        if element["type"] == "static_select":
            options = element["options"]
            labels += [o["text"]["text"] for o in options]
            if not 1 <= len(options) <= 100:
                return False
    action_ids = [e["action_id"] for e in elements]
    unique = len(set(action_ids)) == len(action_ids)
    return unique and len(elements) <= 25 and all(len(t) <= MAX_PLAIN_TEXT for t in labels)


def _error(code: str) -> dict[str, Any]:
    return {"ok": False, "error": code}


async def _request_body(request: web.Request) -> dict[str, Any]:
    body: dict[str, Any] = dict(request.query)
    if request.content_type == "application/json":
        body.update(await request.json())
    elif request.can_read_body:
        body.update(await request.post())
    return body


# --------------------------------------------------------------------------- signed requests


def form_body(fields: dict[str, str]) -> str:
    return urllib.parse.urlencode(fields)


def interactive_body(payload: dict[str, Any]) -> str:
    return urllib.parse.urlencode({"payload": json.dumps(payload)})


def signed_headers(
    secret: str, body: str, *, timestamp: float | None = None, content_type: str = ""
) -> dict[str, str]:
    """Slack's v0 signature: HMAC-SHA256 of `v0:{timestamp}:{body}` with the signing secret."""
    stamp = str(int(time.time() if timestamp is None else timestamp))
    digest = hmac.new(secret.encode(), f"v0:{stamp}:{body}".encode(), hashlib.sha256).hexdigest()
    return {
        "X-Slack-Request-Timestamp": stamp,
        "X-Slack-Signature": f"v0={digest}",
        "Content-Type": content_type or "application/x-www-form-urlencoded",
    }


def settings_for(slack: FakeSlack, **overrides: Any) -> SlackSettings:
    """Slack settings pointing at this fake (and `overrides`)."""
    values = {
        "bot_token": slack.bot_token,
        "app_token": slack.app_token,
        "signing_secret": slack.signing_secret,
        "api_url": slack.api_url,
        **overrides,
    }
    return SlackSettings(_env_file=None, **values)  # type: ignore[call-arg]
