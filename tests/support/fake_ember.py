"""A loopback fake of the Ember HTTP API (aiohttp), for every test that needs a backend.

It speaks the wire contract of goodfire 0.3.5 (see docs/ember-api.md §2), validates requests
the way the hosted API did (pydantic 422s with FastAPI's `{"detail": [...]}` shape), records
every request, and injects faults on demand:

    async with FakeEmber() as fake:
        fake.fail_next("/features/search", Fault(status=429, retry_after=0.1))
        fake.fail_next("/chat/completions", Fault(chunk_size=3, crlf=True))
        ...  # point a client at fake.base_url with api key fake.api_key
        nudges = fake.controller_nudges(fake.last_chat_request())  # {index_in_sae: value}

For load tests, `fake.latency = Latency(first_token=0.2, tokens_per_second=40)` paces replies
like a real model, and `fake.served` tells how long each request took the fake itself.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Annotated, Any, Literal

from aiohttp import web
from multidict import CIMultiDict, MultiDict
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

API_PREFIX = "/api/inference/v1"
DEFAULT_MODEL = "meta-llama/Llama-3.3-70B-Instruct"
_UUID_NAMESPACE = uuid.UUID("5f1c2a9e-7d3b-4c8e-9a61-0b2d4e6f8a10")


# --------------------------------------------------------------------------- catalog


@dataclass(frozen=True)
class FakeFeature:
    """A catalog entry: fires with `strength` on every token whose word is one of `keywords`."""

    index_in_sae: int
    label: str
    keywords: tuple[str, ...]
    strength: float = 1.0

    @property
    def uuid(self) -> str:
        return str(uuid.uuid5(_UUID_NAMESPACE, f"fake-ember/{self.index_in_sae}"))

    def fires_on(self, word: str) -> bool:
        return any(word in (keyword, keyword + "s") for keyword in self.keywords)

    def wire(self, id_key: str = "id") -> dict[str, Any]:
        return {id_key: self.uuid, "label": self.label, "index_in_sae": self.index_in_sae}


DEFAULT_CATALOG: tuple[FakeFeature, ...] = (
    FakeFeature(1201, "pirate speech", ("pirate", "arr", "matey"), 2.0),
    FakeFeature(1202, "talking like a pirate (nautical terms)", ("ship", "sail", "ahoy"), 1.5),
    FakeFeature(2048, "formal writing style", ("sincerely", "regards", "furthermore"), 1.2),
    FakeFeature(3001, "cats", ("cat", "kitten", "meow"), 0.6),
    FakeFeature(3002, "dogs", ("dog", "puppy", "woof"), 0.6),
    FakeFeature(4100, "french language", ("bonjour", "merci", "oui"), 1.8),
    FakeFeature(5150, "python programming", ("python", "def", "import"), 1.1),
    FakeFeature(6000, "weather and rain", ("rain", "weather", "storm"), 0.9),
    FakeFeature(7007, "excitement and enthusiasm", ("wow", "amazing", "awesome"), 0.8),
    FakeFeature(8080, "sadness", ("sad", "cry", "tears"), 1.0),
    FakeFeature(9000, "mathematics", ("math", "equation", "sum"), 1.0),
    FakeFeature(10001, "greetings", ("hello", "hi", "hey"), 0.7),
)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def tokenize(text: str) -> list[str]:
    """Split text into word-ish tokens whose concatenation is exactly `text`."""
    return re.findall(r"\S+\s*|\s+", text)


def echo_reply(messages: list[dict[str, Any]]) -> str:
    """The default answer: deterministic, and it shows what the model was asked."""
    last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    return f"You said: {last_user}"


# --------------------------------------------------------------------------- faults


@dataclass(frozen=True)
class Fault:
    """One injected misbehaviour for one request. Fields combine; unset fields do nothing.

    status/body/retry_after: answer with this status (and body; default FastAPI-like) instead of
    serving the request — `Fault(status=200, body="<html>")` is a non-JSON 200.
    delay: seconds to wait before answering (a slow backend; combine with anything).
    Streaming only: chunk_size (re-split the SSE bytes into writes of N bytes, so events and
    multi-byte characters straddle reads), coalesce (the whole stream in one write, so `[DONE]`
    shares a read), crlf (CRLF line endings), keep_alive (`: keep-alive` comments between events),
    repeat_events (every token event sent twice; clients dedupe by gf_token_index),
    die_after_tokens (drop the connection after N tokens), abort_after_tokens (after N tokens
    report a guard event in `gf_event_names` and finish with "aborted"), hold_open (seconds to
    keep the body open after `[DONE]` before ending it).
    """

    status: int | None = None
    body: Any = None
    retry_after: float | None = None
    delay: float = 0.0
    chunk_size: int | None = None
    coalesce: bool = False
    crlf: bool = False
    keep_alive: bool = False
    repeat_events: bool = False
    die_after_tokens: int | None = None
    abort_after_tokens: int | None = None
    hold_open: float = 0.0


NO_FAULT = Fault()
_FAULT = web.RequestKey("fault", Fault)
_ARRIVED = web.RequestKey("arrived", float)


@dataclass(frozen=True)
class Latency:
    """How fast the fake "generates": the first token `first_token` seconds after the request
    arrives, then `tokens_per_second` (0: as fast as it can write). The default is instant."""

    first_token: float = 0.0
    tokens_per_second: float = 0.0

    def due(self, token_number: int) -> float:
        """Seconds after the request's arrival when its `token_number`-th write may go out."""
        pace = token_number / self.tokens_per_second if self.tokens_per_second else 0.0
        return self.first_token + pace


async def _sleep_until(deadline: float) -> None:
    await asyncio.sleep(max(0.0, deadline - time.monotonic()))


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: MultiDict[str]
    json: Any
    headers: CIMultiDict[str]


# --------------------------------------------------------------------------- request schemas


class _Schema(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Message(_Schema):
    role: Literal["system", "user", "assistant"]
    content: str


class _WireFeature(_Schema):
    uuid: uuid.UUID
    label: str
    index_in_sae: Annotated[int, Field(ge=0)]


class _FeatureGroup(_Schema):
    features: list[_WireFeature]


class _Intervention(_Schema):
    mode: Literal["nudge", "pin", "mul"]
    features: _FeatureGroup
    value: float


class _Controller(_Schema):
    interventions: list[_Intervention] = []
    scopes: list[dict[str, Any]] = []


class _ForModel(_Schema):
    model: str

    @field_validator("model")
    @classmethod
    def _is_served(cls, value: str, info: ValidationInfo) -> str:
        served = (info.context or {}).get("model", DEFAULT_MODEL)
        if value != served:
            raise PydanticCustomError(
                "literal_error", "Input should be {expected}", {"expected": f"'{served}'"}
            )
        return value


class _ChatRequest(_ForModel):
    messages: Annotated[list[_Message], Field(min_length=1, max_length=128)]
    stream: bool = False
    max_completion_tokens: Annotated[int, Field(ge=1, le=8192)] | None = 2048
    top_p: Annotated[float, Field(ge=0, le=1)] = 0.9
    temperature: Annotated[float, Field(ge=0, le=2)] = 0.7
    stop: str | list[str] | None = None
    seed: int | None = None
    controller: _Controller | None = None


class _LogitsRequest(_ForModel):
    messages: Annotated[list[_Message], Field(min_length=1, max_length=128)]
    top_k: Annotated[int, Field(ge=1, le=100)] = 10
    filter_vocabulary: list[str] | None = None
    controller: _Controller | None = None


class _FeaturesRequest(_ForModel):
    messages: Annotated[list[_Message], Field(min_length=1, max_length=128)]
    aggregate_by: Literal["count", "mean", "max", "sum"] = "count"
    controller: _Controller | None = None
    include_feature_indexes: Annotated[list[int], Field(max_length=512)] | None = None


class _SearchQuery(_ForModel):
    query: Annotated[str, Field(min_length=1)]
    page: Annotated[int, Field(ge=1)] = 1
    perPage: Annotated[int, Field(ge=1, le=100)] = 10  # noqa: N815 - wire name


class _ListQuery(_Schema):
    feature_id: Annotated[list[uuid.UUID], Field(min_length=1, max_length=50)]


class _RerankRequest(_ForModel):
    query: Annotated[str, Field(min_length=1)]
    top_k: Annotated[int, Field(ge=1, le=100)] = 10
    feature_ids: list[uuid.UUID]


class _LookupRequest(_ForModel):
    indices: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1, max_length=2048)]


class _Invalid(Exception):
    def __init__(self, detail: list[dict[str, Any]]) -> None:
        super().__init__("invalid request")
        self.detail = detail


# --------------------------------------------------------------------------- the server

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class FakeEmber:
    """The fake server. Attributes may be changed at any time during a test."""

    model: str = DEFAULT_MODEL
    api_key: str = "fake-ember-key"
    serves_models_route: bool = True
    features: list[FakeFeature] = field(default_factory=lambda: list(DEFAULT_CATALOG), repr=False)
    reply_text: str | Callable[[list[dict[str, Any]]], str] = echo_reply
    latency: Latency = Latency()
    requests: list[RecordedRequest] = field(default_factory=list, repr=False)
    # (request, seconds from its arrival to the response's last byte), as requests finish
    served: list[tuple[RecordedRequest, float]] = field(default_factory=list, repr=False)
    peers: set[tuple[str, int]] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        self._faults: dict[str, deque[Fault]] = {}
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    # ---- lifecycle

    async def __aenter__(self) -> FakeEmber:
        app = web.Application(middlewares=[self._middleware])
        routes: dict[tuple[str, str], Handler] = {
            ("GET", "/models"): self._models,
            ("POST", "/chat/completions"): self._chat,
            ("POST", "/chat-attribution/compute-logits"): self._logits,
            ("POST", "/chat-attribution/compute-features"): self._compute_features,
            ("GET", "/features/"): self._list_features,
            ("GET", "/features/search"): self._search,
            ("POST", "/features/rerank"): self._rerank,
            ("POST", "/features/lookup"): self._lookup,
        }
        for (method, path), handler in routes.items():
            app.router.add_route(method, API_PREFIX + path, handler)
        self._runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # ---- test helpers

    def fail_next(self, path_suffix: str, *faults: Fault) -> None:
        """Apply `faults`, in order, to the next requests whose path ends with `path_suffix`."""
        self._faults.setdefault(path_suffix, deque()).extend(faults)

    def feature(self, label: str) -> FakeFeature:
        return next(f for f in self.features if f.label == label)

    def requests_to(self, path_suffix: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith(path_suffix)]

    def last_chat_request(self) -> RecordedRequest:
        return self.requests_to("/chat/completions")[-1]

    @property
    def connection_count(self) -> int:
        """Distinct client TCP connections seen so far."""
        return len(self.peers)

    @staticmethod
    def controller_interventions(request: RecordedRequest) -> list[dict[str, Any]]:
        controller = (request.json or {}).get("controller") or {}
        return list(controller.get("interventions", []))

    @classmethod
    def controller_nudges(cls, request: RecordedRequest) -> dict[int, float]:
        """index_in_sae -> summed nudge value, over the request's top-level interventions."""
        nudges: dict[int, float] = {}
        for intervention in cls.controller_interventions(request):
            if intervention["mode"] != "nudge":
                continue
            for feature in intervention["features"]["features"]:
                index = feature["index_in_sae"]
                nudges[index] = nudges.get(index, 0.0) + intervention["value"]
        return nudges

    # ---- plumbing

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        request[_ARRIVED] = time.monotonic()
        record = await self._record(request)
        try:
            return await self._serve(request, handler)
        finally:
            self.served.append((record, time.monotonic() - request[_ARRIVED]))

    async def _serve(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        fault = self._take_fault(request.path)
        request[_FAULT] = fault
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.status is not None:
            return self._fault_response(fault)
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"detail": "Invalid API key."}, status=401)
        try:
            return await handler(request)
        except _Invalid as invalid:
            return web.json_response({"detail": invalid.detail}, status=422)

    async def _record(self, request: web.Request) -> RecordedRequest:
        body = await request.read()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer:
            self.peers.add(tuple(peer[:2]))
        record = RecordedRequest(
            method=request.method,
            path=request.path,
            query=MultiDict(request.query),
            json=json.loads(body) if body else None,
            headers=CIMultiDict(request.headers),
        )
        self.requests.append(record)
        return record

    def _take_fault(self, path: str) -> Fault:
        for suffix, queue in self._faults.items():
            if queue and path.endswith(suffix):
                return queue.popleft()
        return NO_FAULT

    @staticmethod
    def _fault_response(fault: Fault) -> web.Response:
        assert fault.status is not None
        headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after else {}
        if isinstance(fault.body, str):
            return web.Response(status=fault.status, text=fault.body, headers=headers)
        body = fault.body if fault.body is not None else {"detail": HTTPStatus(fault.status).phrase}
        response = web.json_response(body, status=fault.status)
        response.headers.update(headers)
        return response

    def _validate(self, schema: type[BaseModel], data: Any, where: str = "body") -> Any:
        try:
            return schema.model_validate(data, context={"model": self.model})
        except ValidationError as error:
            raise _Invalid(
                [
                    {
                        "type": e["type"],
                        "loc": [where, *e["loc"]],
                        "msg": e["msg"],
                        "input": e["input"],
                    }
                    for e in error.errors(include_url=False)
                ]
            ) from None

    async def _body(self, request: web.Request, schema: type[BaseModel]) -> Any:
        try:
            data = await request.json()
        except ValueError:
            raise _Invalid(
                [{"type": "json_invalid", "loc": ["body"], "msg": "JSON decode error", "input": {}}]
            ) from None
        return self._validate(schema, data)

    def _reply_for(self, messages: list[_Message]) -> str:
        wire = [m.model_dump() for m in messages]
        return self.reply_text(wire) if callable(self.reply_text) else self.reply_text

    def _by_uuid(self) -> dict[uuid.UUID, FakeFeature]:
        return {uuid.UUID(f.uuid): f for f in self.features}

    def _ranked(self, query: str, candidates: list[FakeFeature]) -> list[tuple[float, FakeFeature]]:
        query_words = _words(query) or [query.lower()]

        def hits(feature: FakeFeature) -> int:
            label_words = _words(feature.label)
            return sum(
                any(w.startswith(q) for w in label_words) or feature.fires_on(q)
                for q in query_words
            )

        scored = [(hits(f) / len(query_words), f) for f in candidates]
        return sorted(scored, key=lambda s: (-s[0], len(s[1].label), s[1].index_in_sae))

    # ---- routes

    async def _models(self, request: web.Request) -> web.Response:
        if not self.serves_models_route:
            return web.json_response({"detail": "Not Found"}, status=404)
        return web.json_response(
            {"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "fake"}]}
        )

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        chat: _ChatRequest = await self._body(request, _ChatRequest)
        tokens = tokenize(self._reply_for(chat.messages))
        limit = chat.max_completion_tokens or len(tokens)
        finish = "length" if len(tokens) > limit else "stop"
        tokens = tokens[:limit]
        if chat.stream:
            return await self._stream(request, tokens, finish, request[_FAULT])
        await _sleep_until(request[_ARRIVED] + self.latency.due(len(tokens)))
        return web.json_response(
            {
                **self._completion_envelope("chat.completion"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(tokens)},
                        "finish_reason": finish,
                    }
                ],
            }
        )

    def _completion_envelope(self, kind: str) -> dict[str, Any]:
        return {
            "id": "chatcmpl-fake",
            "object": kind,
            "created": int(time.time()),
            "model": self.model,
            "system_fingerprint": "fake-ember",
        }

    def _chunk(
        self,
        index: int,
        content: str,
        finish: str | None = None,
        events: list[str] | None = None,
    ) -> dict[str, Any]:
        chunk = self._completion_envelope("chat.completion.chunk")
        if events:
            chunk["gf_event_names"] = events
        chunk["choices"] = [
            {
                "index": 0,
                "delta": {"role": "assistant", "content": content},
                "gf_token_index": index,
                "finish_reason": finish,
            }
        ]
        return chunk

    def _stream_chunks(
        self, tokens: list[str], finish: str, fault: Fault
    ) -> Iterator[dict[str, Any]]:
        for index, token in enumerate(tokens):
            if index == fault.abort_after_tokens:
                yield self._chunk(index, "", "aborted", ["fake-guard"])
                return
            yield self._chunk(index, token)
            if fault.repeat_events:
                yield self._chunk(index, token)
        yield self._chunk(len(tokens), "", finish)

    async def _stream(
        self, request: web.Request, tokens: list[str], finish: str, fault: Fault
    ) -> web.StreamResponse:
        newline = "\r\n" if fault.crlf else "\n"
        events = [
            f"data: {json.dumps(chunk, ensure_ascii=False)}{newline}{newline}".encode()
            for chunk in self._stream_chunks(tokens, finish, fault)
        ]
        dies = fault.die_after_tokens is not None
        if dies:
            events = events[: fault.die_after_tokens]
        else:
            events.append(f"data: [DONE]{newline}{newline}".encode())
        if fault.keep_alive:
            comment = f": keep-alive{newline}{newline}".encode()
            events = [piece for event in events for piece in (comment, event)]

        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        arrived = request[_ARRIVED]
        await _sleep_until(arrived + self.latency.due(0))
        for number, piece in enumerate(_writes(events, fault), start=1):
            await response.write(piece)
            # Sleeping, if only for 0 s, lets the client read: writes arrive as separate reads.
            await _sleep_until(arrived + self.latency.due(number))
        if dies:
            assert request.transport is not None
            request.transport.close()
        else:
            await asyncio.sleep(fault.hold_open)
            await response.write_eof()
        return response

    async def _logits(self, request: web.Request) -> web.Response:
        body: _LogitsRequest = await self._body(request, _LogitsRequest)
        words = list(dict.fromkeys(tokenize(self._reply_for(body.messages))))
        if body.filter_vocabulary is not None:
            words = [w for w in words if w in body.filter_vocabulary]
        return web.json_response(
            {"logits": {w: -float(i) for i, w in enumerate(words[: body.top_k])}}
        )

    async def _compute_features(self, request: web.Request) -> web.Response:
        body: _FeaturesRequest = await self._body(request, _FeaturesRequest)
        included = set(body.include_feature_indexes or [])
        candidates = [f for f in self.features if not included or f.index_in_sae in included]
        tokens = []
        for message in body.messages:
            for token in tokenize(message.content):
                words = _words(token)
                firing = [f for f in candidates if any(f.fires_on(w) for w in words)]
                firing.sort(key=lambda f: -f.strength)
                attributions = [
                    {
                        "id": f.uuid,
                        "index_in_sae": f.index_in_sae,
                        "activation_strength": f.strength,
                    }
                    for f in firing
                ]
                tokens.append({"token": token, "attributions": attributions})
        return web.json_response({"tokens": tokens})

    async def _list_features(self, request: web.Request) -> web.Response:
        query = self._validate(
            _ListQuery, {"feature_id": request.query.getall("feature_id", [])}, where="query"
        )
        by_uuid = self._by_uuid()
        found = [by_uuid[i].wire() for i in query.feature_id if i in by_uuid]
        return web.json_response({"features": found})

    async def _search(self, request: web.Request) -> web.Response:
        query: _SearchQuery = self._validate(_SearchQuery, dict(request.query), where="query")
        ranked = [(score, f) for score, f in self._ranked(query.query, self.features) if score > 0]
        start = (query.page - 1) * query.perPage
        page = ranked[start : start + query.perPage]
        return web.json_response(
            {"features": [{**f.wire(), "relevance": score} for score, f in page]}
        )

    async def _rerank(self, request: web.Request) -> web.Response:
        body: _RerankRequest = await self._body(request, _RerankRequest)
        by_uuid = self._by_uuid()
        candidates = [by_uuid[i] for i in body.feature_ids if i in by_uuid]
        ranked = self._ranked(body.query, candidates)[: body.top_k]
        return web.json_response(
            {"features": [{**f.wire(), "relevance": score} for score, f in ranked]}
        )

    async def _lookup(self, request: web.Request) -> web.Response:
        body: _LookupRequest = await self._body(request, _LookupRequest)
        by_index = {f.index_in_sae: f for f in self.features}
        found = [by_index[i].wire(id_key="uuid") for i in body.indices if i in by_index]
        return web.json_response({"features": found})


def _writes(events: list[bytes], fault: Fault) -> list[bytes]:
    """How the stream's bytes are cut into socket writes."""
    if fault.coalesce:
        return [b"".join(events)]
    if fault.chunk_size:
        body = b"".join(events)
        return [body[i : i + fault.chunk_size] for i in range(0, len(body), fault.chunk_size)]
    return events
