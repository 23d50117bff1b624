"""EmberGateway: the only place that talks to an Ember-compatible backend.

Requests the goodfire SDK handles correctly (search, lookup, inspect, label fetch) go through
`goodfire.AsyncClient`, but its per-request HTTP wrappers are replaced by `PooledHTTP`: one shared
`httpx.AsyncClient` (the SDK builds a new one per request, ~21 ms of CPU each), no blocking
`time.sleep` retries, and every failure mapped to `bot.domain.errors`. Chat streams are posted and parsed
here, because the SDK's stream parser breaks on ordinary SSE framing (ember-api.md §3.3-3.4).

Retries: 429, 5xx, timeouts and connection errors are retried with jittered exponential backoff
(honouring Retry-After) until `RetryPolicy.attempts` or the call's overall deadline runs out.
A chat stream is retried only while no text has been yielded, so a reply is never posted twice.

Circuit breaker (optional): every call, retries included, passes through a `CircuitBreaker`, so
after repeated failures calls are refused at once until a probe finds the backend back.

Guards: each `Guard` goes on the wire as a controller scope with an `event_name` (what
`Variant.abort_when` would send; built here because the SDK's handler path is broken, ember-api.md
§3.5). If the server reports `gf_event_names` on a stream, the text that came is yielded and
`GenerationAbortedError`, naming the guard that fired, is raised when the stream ends (the caller
keeps the partial text).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import logging
import random
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

import goodfire
import httpx
from goodfire.api.exceptions import GoodfireBaseException

from bot.backend.breaker import CircuitBreaker
from bot.domain.errors import (
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    GenerationAbortedError,
    InvalidRequestError,
    NotFoundError,
    OutOfCreditsError,
    RateLimitedError,
    UnauthorizedError,
)
from bot.domain.types import (
    ChatMessage,
    FeatureActivation,
    FeatureEdit,
    FeatureRef,
    Guard,
    SamplingOptions,
    TokenActivation,
)

logger = logging.getLogger(__name__)

FALLBACK_MODEL = "meta-llama/Llama-3.3-70B-Instruct"
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant. Be brief, friendly and to the point."
# What the SDK sends as `stop` for chat; kept so our requests look like the SDK's.
_SDK_STOP = ["<|eot_id|>", "<|begin_of_text|>"]
_LABEL_BATCH = 50  # the label route accepts at most 50 ids per request
_DRAIN_SECONDS = 0.5
Aggregate = Literal["max", "mean", "sum", "count"]


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 8.0
    deadline: float = 30.0


# --------------------------------------------------------------------------- error mapping


def _server_detail(body: str) -> str:
    """The server's own explanation: pydantic `detail[].msg` lines, a detail string, or text."""
    try:
        detail = json.loads(body)["detail"]
    except (ValueError, KeyError, TypeError):
        return body.strip()[:200]
    if isinstance(detail, list):
        return "; ".join(_pydantic_line(item) for item in detail if isinstance(item, dict))
    return str(detail)[:200]


def _pydantic_line(item: dict[str, Any]) -> str:
    where = [str(part) for part in item.get("loc", []) if part not in ("body", "query")]
    message = str(item.get("msg", "invalid value"))
    return f"{'.'.join(where)}: {message}" if where else message


def _retry_after(headers: httpx.Headers) -> float | None:
    try:
        return max(0.0, float(headers["Retry-After"]))
    except (KeyError, ValueError):
        return None


def _error_for_response(status: int, headers: httpx.Headers, body: str) -> BackendError:
    """Map an HTTP error response to the bot's error taxonomy."""
    if status == 429:
        return RateLimitedError(_retry_after(headers))
    if status in (401, 403):
        return UnauthorizedError()
    if status == 402:
        return OutOfCreditsError()
    if status == 404:
        return NotFoundError(_server_detail(body) or "not found")
    if status >= 500:
        return BackendUnavailableError(f"HTTP {status}")
    return InvalidRequestError(_server_detail(body) or f"HTTP {status}")


def _error_for_transport(error: httpx.TransportError, elapsed: float) -> BackendError:
    if isinstance(error, httpx.TimeoutException):
        return BackendTimeoutError(elapsed)
    if isinstance(error, httpx.ConnectError):
        return BackendUnavailableError("cannot connect to the server")
    return BackendUnavailableError("the connection broke off")


_RETRYABLE = (RateLimitedError, BackendUnavailableError, BackendTimeoutError)


# --------------------------------------------------------------------------- retries

# The absolute deadline (time.monotonic) of the gateway call in progress, so that every HTTP
# request the SDK makes for one call (inspect makes two) shares one budget.
_call_deadline: ContextVar[float | None] = ContextVar("ember_call_deadline", default=None)


class _Attempts:
    """Retry bookkeeping for one request: backoff, Retry-After, attempt count, deadline."""

    def __init__(self, policy: RetryPolicy, deadline: float | None = None) -> None:
        self._policy = policy
        self._started = time.monotonic()
        self._deadline = deadline if deadline is not None else self._started + policy.deadline
        self._made = 0

    def elapsed(self) -> float:
        return round(time.monotonic() - self._started, 1)

    def timeout(self, cap: float) -> float:
        """The timeout for the next attempt: at most `cap`, never past the deadline."""
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise BackendTimeoutError(self.elapsed())
        return min(cap, remaining)

    async def backoff_or_raise(self, error: BackendError) -> None:
        """Sleep before the next attempt, or raise `error` if it cannot or should not be retried."""
        self._made += 1
        if not isinstance(error, _RETRYABLE):
            raise error
        delay = self._delay(error)
        if self._made >= self._policy.attempts or time.monotonic() + delay >= self._deadline:
            if isinstance(error, RateLimitedError) and error.retry_after is None:
                raise RateLimitedError(delay) from error
            raise error
        logger.info(
            "Ember backend: %s; retry %d in %.2f s", type(error).__name__, self._made, delay
        )
        await asyncio.sleep(delay)

    def _delay(self, error: BackendError) -> float:
        if isinstance(error, RateLimitedError) and error.retry_after is not None:
            return error.retry_after
        backoff = min(self._policy.max_delay, self._policy.base_delay * 2 ** (self._made - 1))
        return random.uniform(backoff / 2, backoff)


class PooledHTTP:
    """Stands in for goodfire's `AsyncHTTPWrapper`: shared client, async retries, typed errors."""

    def __init__(self, client: httpx.AsyncClient, policy: RetryPolicy) -> None:
        self._client = client
        self._policy = policy

    async def get(
        self,
        url: str,
        headers: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        timeout: float | None = 10,  # noqa: ASYNC109 - the SDK's wrapper signature
    ) -> httpx.Response:
        return await self.request("GET", url, headers=headers, params=params, cap=timeout)

    async def post(
        self,
        url: str,
        headers: dict[str, Any] | None = None,
        json: Any = None,
        timeout: float | None = 10,  # noqa: ASYNC109 - the SDK's wrapper signature
    ) -> httpx.Response:
        return await self.request("POST", url, headers=headers, json=json, cap=timeout)

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        json: Any = None,
        cap: float | None = 10,
    ) -> httpx.Response:
        """One successful (2xx/3xx) response, after retries; anything else as a BackendError."""
        attempts = _Attempts(self._policy, _call_deadline.get())
        while True:
            try:
                response = await self._client.request(
                    method,
                    url,
                    headers=headers,
                    params=params,
                    json=json,
                    timeout=attempts.timeout(cap or self._policy.deadline),
                )
            except httpx.TransportError as error:
                await attempts.backoff_or_raise(_error_for_transport(error, attempts.elapsed()))
                continue
            if response.status_code < 400:
                return response
            await attempts.backoff_or_raise(
                _error_for_response(response.status_code, response.headers, response.text)
            )


# --------------------------------------------------------------------------- SSE


_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class SSEDecoder:
    """Incremental server-sent-events parser (WHATWG rules: only CR, LF and CRLF end a line).

    Feed it raw bytes as they arrive; it returns the `data` of every completed event. Handles
    events and multi-byte characters split across reads, several events in one read, CRLF, a
    CR/LF pair split across reads, and comment lines (`: keep-alive`).
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial_line = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        return self._lines(self._partial_line + self._decoder.decode(chunk))

    def close(self) -> list[str]:
        """Events still pending at the end of the stream (an unterminated last event counts)."""
        tail = self._partial_line + self._decoder.decode(b"", final=True)
        self._partial_line = ""
        return self._lines(tail + "\n\n")

    def _lines(self, text: str) -> list[str]:
        # A trailing CR may be the first half of a CRLF: keep it for the next read.
        held = "\r" if text.endswith("\r") else ""
        *lines, rest = _LINE_BREAK.split(text[: len(text) - len(held)])
        self._partial_line = rest + held
        events = []
        for line in lines:
            if not line:
                if self._data:
                    events.append("\n".join(self._data))
                    self._data = []
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                if name == "data":
                    self._data.append(value.removeprefix(" "))
        return events


@dataclass(frozen=True)
class _Delta:
    token_index: int | None
    text: str
    finished: bool
    events: list[str]


def _parse_chunk(data: str) -> list[_Delta]:
    try:
        chunk = json.loads(data)
        events = list(chunk.get("gf_event_names") or [])
        return [
            _Delta(
                choice.get("gf_token_index"),
                (choice.get("delta") or {}).get("content") or "",
                choice.get("finish_reason") is not None,
                events,
            )
            for choice in chunk["choices"]
        ]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise BackendUnavailableError("the reply stream was malformed") from None


async def _sse_data(response: httpx.Response) -> AsyncGenerator[str, None]:
    decoder = SSEDecoder()
    async for chunk in response.aiter_bytes():
        for data in decoder.feed(chunk):
            yield data
    for data in decoder.close():
        yield data


async def _drain(stream: AsyncIterator[str]) -> None:
    """Read what follows `[DONE]` (normally just the end of the body): httpx only returns a
    fully read connection to its pool, so stopping at `[DONE]` costs a new connection per reply.
    A server that lingers after `[DONE]` gets `_DRAIN_SECONDS`, then its connection is closed."""
    with contextlib.suppress(TimeoutError, httpx.TransportError):
        async with asyncio.timeout(_DRAIN_SECONDS):
            async for _ in stream:
                pass


async def _stream_text(
    response: httpx.Response, event_reasons: Mapping[str, str]
) -> AsyncIterator[str]:
    """Text deltas of a 200 SSE chat response, deduplicated by gf_token_index.

    `event_reasons` words the abort for the event names we asked for (unknown ones get a
    generic reason).
    """
    seen: set[int] = set()
    events: list[str] = []
    finished = False
    async with contextlib.aclosing(_sse_data(response)) as stream:
        async for data in stream:
            if data == "[DONE]":
                finished = True
                await _drain(stream)
                break
            for delta in _parse_chunk(data):
                events.extend(delta.events)
                finished = finished or delta.finished
                if delta.token_index in seen:
                    continue
                if delta.token_index is not None:
                    seen.add(delta.token_index)
                if delta.text:
                    yield delta.text
    if events:
        logger.info("Ember backend stopped generation on events %s", events)
        reasons = [event_reasons[name] for name in dict.fromkeys(events) if name in event_reasons]
        if reasons:
            raise GenerationAbortedError(" and ".join(reasons) + " fired")
        raise GenerationAbortedError()
    if not finished:
        raise BackendUnavailableError("the reply stream ended early")


# --------------------------------------------------------------------------- the gateway


def _sdk_feature(ref: FeatureRef) -> goodfire.Feature:
    """A goodfire.Feature whose uuid is a UUID whenever possible (hex and hyphenated alike)."""
    try:
        uuid: UUID | str = UUID(ref.uuid)
    except ValueError:
        uuid = ref.uuid
    # The SDK annotates uuid as UUID but sends a str as-is (ember-api.md §3.7).
    return goodfire.Feature(uuid=uuid, label=ref.label, index_in_sae=ref.index_in_sae)  # type: ignore[arg-type]


def _feature_ref(feature: goodfire.Feature) -> FeatureRef:
    return FeatureRef(feature.index_in_sae, feature.label, _canonical_uuid(str(feature.uuid)))


def _canonical_uuid(value: str) -> str:
    try:
        return str(UUID(value))
    except ValueError:
        return value


def build_variant(model: str, edits: list[FeatureEdit]) -> goodfire.Variant:
    """A fresh Variant with one nudge per index_in_sae (the last edit for an index wins)."""
    variant = goodfire.Variant(model)  # type: ignore[arg-type]  # any served model is fine
    by_index = {edit.feature.index_in_sae: edit for edit in edits}
    for edit in by_index.values():
        variant.set(_sdk_feature(edit.feature), edit.value)
    return variant


def guard_scope(guard: Guard) -> dict[str, Any]:
    """The controller scope `variant.abort_when(feature > threshold)` sends, with our own
    event name so that the event tells which guard fired."""
    feature = _sdk_feature(guard.feature).json()
    return {
        "conditionals": {
            "conditionals": [
                {
                    "left_hand": {"features": [feature]},
                    "right_hand": guard.threshold,
                    "operator": ">",
                }
            ],
            "operator": "AND",
        },
        "controller": {"interventions": [], "scopes": []},
        "is_active": False,
        "event_name": guard.event_name,
    }


def controller_json(
    model: str, edits: Sequence[FeatureEdit], guards: Sequence[Guard] = ()
) -> dict[str, Any] | None:
    """The `controller` of a chat request: the edits' nudges and one abort scope per guard."""
    if not edits and not guards:
        return None
    controller = build_variant(model, list(edits)).controller.json()
    controller["scopes"] = [guard_scope(guard) for guard in guards]
    return controller


def _token_activation(token: Any, index: int) -> TokenActivation:
    strength = next(
        (a["activation_strength"] for a in token._feature_acts if a["index_in_sae"] == index), 0.0
    )
    return TokenActivation(token._token, max(0.0, float(strength)))


@dataclass
class _Aggregate:
    uuid: str
    count: int = 0
    max: float = 0.0
    sum: float = 0.0

    def add(self, strength: float) -> None:
        self.count += 1
        self.max = max(self.max, strength)
        self.sum += strength

    def value(self, aggregate: Aggregate) -> float:
        if aggregate == "mean":
            return self.sum / self.count
        return float(getattr(self, aggregate))


def _aggregate_tokens(tokens: list[Any]) -> dict[int, _Aggregate]:
    """Per index_in_sae: how often, how strongly and in total a feature fired over the tokens."""
    totals: dict[int, _Aggregate] = {}
    for token in tokens:
        for act in token._feature_acts:  # the SDK keeps each token's raw attributions here
            if act["activation_strength"] > 0:
                index = act["index_in_sae"]
                totals.setdefault(index, _Aggregate(_canonical_uuid(act["id"]))).add(
                    act["activation_strength"]
                )
    return totals


NO_KEY = "none"  # sent to keyless self-hosted servers


class EmberGateway:
    """Async access to one Ember-compatible backend; one pooled connection set per instance."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        model: str | None = None,
        retry: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen, so sharing it is safe
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        http: httpx.AsyncClient | None = None,
        breaker: CircuitBreaker | None = None,
        max_connections: int = 100,
    ) -> None:
        self._api_url = f"{base_url.rstrip('/')}/api/inference/v1"
        api_key = api_key or NO_KEY  # "Bearer " alone is an illegal header value
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._retry = retry
        self._breaker = breaker
        self._system_prompt = system_prompt
        self._model = model
        self._model_lock = asyncio.Lock()
        self._owns_http = http is None
        # Few idle connections: httpcore 1.0's pool scans every connection for each idle one on
        # every request (quadratic), which costs more than reconnecting once hundreds are idle.
        self._http = http or httpx.AsyncClient(
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=20)
        )
        self._pooled = PooledHTTP(self._http, retry)
        self._sdk = goodfire.AsyncClient(api_key, base_url=base_url.rstrip("/"))
        for api in (self._sdk.features, self._sdk.chat, self._sdk.chat.completions):
            api._http = self._pooled  # type: ignore[assignment]

    async def __aenter__(self) -> EmberGateway:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def model_id(self) -> str:
        """The configured model, else the server's first listed model, else FALLBACK_MODEL."""
        async with self._model_lock:
            if self._model is None:
                self._model = await self._served_model()
            return self._model

    async def ping(self, seconds: float) -> str | None:
        """None if the backend answers its cheapest route within `seconds`; else what is wrong.

        No retries and no breaker: a health check reports the backend as it is right now.
        """
        try:
            response = await self._http.get(
                f"{self._api_url}/models", headers=self._headers, timeout=seconds
            )
        except httpx.TransportError as error:
            return _error_for_transport(error, seconds).user_message
        if response.status_code >= 500 or response.status_code in (401, 403):
            return _error_for_response(
                response.status_code, response.headers, response.text
            ).user_message
        return None  # 404 too: an older server without /models is still up

    async def _served_model(self) -> str:
        with self._call():
            try:
                response = await self._pooled.get(f"{self._api_url}/models", headers=self._headers)
            except NotFoundError:
                return FALLBACK_MODEL
            models = response.json()["data"]
            if not models:
                raise BackendUnavailableError("the server lists no models; set EMBER_MODEL")
            return str(models[0]["id"])

    async def search_features(self, query: str, top_k: int = 20) -> list[FeatureRef]:
        model = await self.model_id()
        with self._call():
            found = await self._sdk.features.search(query, model=model, top_k=top_k)  # type: ignore[arg-type]
            return [_feature_ref(feature) for feature in found]

    async def lookup_features(self, indices: list[int]) -> list[FeatureRef]:
        """The features at these indices, in the order asked; unknown indices are left out."""
        if not indices:
            return []
        model = await self.model_id()
        with self._call():
            found = await self._sdk.features.lookup(indices, model=model)  # type: ignore[arg-type]
            return [_feature_ref(found[index]) for index in indices if index in found]

    async def inspect(
        self,
        messages: list[ChatMessage],
        edits: list[FeatureEdit],
        *,
        top_k: int = 10,
        aggregate: Aggregate = "max",
    ) -> list[FeatureActivation]:
        """The `top_k` features that fired most over `messages`, ranked by `aggregate`."""
        model = await self.model_id()
        target = build_variant(model, edits) if edits else model
        with self._call():
            inspector = await self._sdk.features.inspect(
                [m.as_wire() for m in messages],  # type: ignore[misc]
                model=target,  # type: ignore[arg-type]
                aggregate_by="frequency" if aggregate == "count" else aggregate,
                _fetch_feature_data=False,
            )
            totals = _aggregate_tokens(inspector.tokens)
            ranked = sorted(
                totals.items(),
                key=lambda item: (-item[1].value(aggregate), -item[1].count, item[0]),
            )[:top_k]
            labels = await self._labels([total.uuid for _, total in ranked])
        return [
            FeatureActivation(
                FeatureRef(index, labels.get(total.uuid, f"feature #{index}"), total.uuid),
                total.value(aggregate),
            )
            for index, total in ranked
        ]

    async def token_activations(
        self, messages: list[ChatMessage], edits: list[FeatureEdit], feature: FeatureRef
    ) -> list[TokenActivation]:
        """How strongly `feature` fired on every token the server read for `messages` (the
        chat template's own tokens included)."""
        model = await self.model_id()
        target = build_variant(model, edits) if edits else model
        with self._call():
            inspector = await self._sdk.features.inspect(
                [m.as_wire() for m in messages],  # type: ignore[misc]
                model=target,  # type: ignore[arg-type]
                features=_sdk_feature(feature),
                _fetch_feature_data=False,
            )
            return [_token_activation(token, feature.index_in_sae) for token in inspector.tokens]

    async def autosteer(self, specification: str) -> list[FeatureEdit]:
        """The edits the backend's AutoSteer proposes for a plain-words description."""
        model = await self.model_id()
        with self._call():
            proposed = await self._sdk.features.AutoSteer(specification, model=model)  # type: ignore[arg-type]
            return [
                FeatureEdit(_feature_ref(feature), float(value))
                for feature, value in proposed._edits.items()
            ]

    async def _labels(self, uuids: list[str]) -> dict[str, str]:
        labels: dict[str, str] = {}
        for start in range(0, len(uuids), _LABEL_BATCH):
            batch = await self._sdk.features._list(uuids[start : start + _LABEL_BATCH])
            labels.update({str(f.uuid): f.label for f in batch})
        return labels

    async def stream_chat(
        self,
        messages: list[ChatMessage],
        edits: list[FeatureEdit],
        sampling: SamplingOptions,
        guards: Sequence[Guard] = (),
    ) -> AsyncGenerator[str, None]:
        """Text deltas of the reply; retried only until the first delta has been yielded.

        The deadline bounds the wait for the response and for each read, not the whole reply.
        A guard that fires ends the reply with GenerationAbortedError naming it.
        Close the iterator (`contextlib.aclosing`) when abandoning it early.
        """
        payload = await self._chat_payload(messages, edits, sampling, guards)
        reasons = {guard.event_name: guard.describe() for guard in guards}
        attempts = _Attempts(self._retry)
        with self._guard():
            while True:
                yielded = False
                try:
                    async for delta in self._stream_once(payload, attempts, reasons):
                        yielded = True
                        yield delta
                    return
                except BackendError as error:
                    if yielded:
                        raise
                    await attempts.backoff_or_raise(error)

    async def _stream_once(
        self, payload: dict[str, Any], attempts: _Attempts, event_reasons: Mapping[str, str]
    ) -> AsyncIterator[str]:
        try:
            async with self._http.stream(
                "POST",
                f"{self._api_url}/chat/completions",
                headers={**self._headers, "Accept": "text/event-stream"},
                json=payload,
                timeout=attempts.timeout(self._retry.deadline),
            ) as response:
                if response.status_code != 200:
                    body = (await response.aread()).decode("utf-8", errors="replace")
                    raise _error_for_response(response.status_code, response.headers, body)
                async for delta in _stream_text(response, event_reasons):
                    yield delta
        except httpx.TransportError as error:
            raise _error_for_transport(error, attempts.elapsed()) from error

    async def _chat_payload(
        self,
        messages: list[ChatMessage],
        edits: list[FeatureEdit],
        sampling: SamplingOptions,
        guards: Sequence[Guard],
    ) -> dict[str, Any]:
        if self._system_prompt and (not messages or messages[0].role != "system"):
            messages = [ChatMessage("system", self._system_prompt), *messages]
        model = await self.model_id()
        payload: dict[str, Any] = {
            "model": model,
            "messages": [m.as_wire() for m in messages],
            "stream": True,
            "max_completion_tokens": sampling.max_tokens,
            "top_p": sampling.top_p,
            "temperature": sampling.temperature,
            "stop": _SDK_STOP,
            "seed": sampling.seed if sampling.seed is not None else random.randrange(2**31),
        }
        if controller := controller_json(model, edits, guards):
            payload["controller"] = controller
        return payload

    def _guard(self) -> contextlib.AbstractContextManager[None]:
        return self._breaker.call() if self._breaker else contextlib.nullcontext()

    @contextlib.contextmanager
    def _call(self) -> Iterator[None]:
        """One gateway call: the breaker's say, a shared retry deadline, and unreadable replies
        as typed errors."""
        with self._guard():
            token = _call_deadline.set(time.monotonic() + self._retry.deadline)
            try:
                yield
            except (ValueError, KeyError, TypeError, GoodfireBaseException) as error:
                logger.warning(
                    "Ember backend sent a reply we could not read (%s)", type(error).__name__
                )
                raise BackendUnavailableError("unexpected reply from the server") from error
            finally:
                _call_deadline.reset(token)
