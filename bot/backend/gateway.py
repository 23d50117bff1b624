"""EmberGateway: the only place that talks to an Ember-compatible backend.

Requests the goodfire SDK handles correctly (search, lookup, inspect, label fetch) go through
`goodfire.AsyncClient`, but its per-request HTTP wrappers are replaced by `PooledHTTP`
(`bot.backend.http`): one shared `httpx.AsyncClient` (the SDK builds a new one per request,
~21 ms of CPU each), no blocking `time.sleep` retries, and every failure mapped to
`bot.domain.errors`. Chat streams are posted here over `bot.backend.streaming.StreamClient`
(cheaper per event than httpx, and a broken connection keeps every byte that arrived) and parsed
by `bot.backend.sse`, because the SDK's stream parser breaks on ordinary SSE framing
(docs/ember-api.md §3.3-3.4).

Retries (`bot.backend.retries`): 429, 5xx, timeouts and connection errors are retried with
jittered exponential backoff (honouring Retry-After) until `RetryPolicy.attempts` or the call's
overall deadline runs out. A chat stream is retried only while no text has been yielded, so a
reply is never posted twice.

Circuit breaker (optional): every call, retries included, passes through a `CircuitBreaker`, so
after repeated failures calls are refused at once until a probe finds the backend back.

Guards: each `Guard` goes on the wire as a controller scope with an `event_name` (what
`Variant.abort_when` would send; built in `bot.backend.wire` because the SDK's handler path is
broken, docs/ember-api.md §3.5). If the server reports `gf_event_names` on a stream, the text that
came is yielded and `GenerationAbortedError`, naming the guard that fired, is raised when the
stream ends (the caller keeps the partial text).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

import goodfire
import httpx
from goodfire.api.exceptions import GoodfireBaseException

from bot.backend.breaker import CircuitBreaker
from bot.backend.errors import error_for_response, error_for_transport
from bot.backend.http import PooledHTTP
from bot.backend.retries import Attempts, RetryPolicy, call_deadline
from bot.backend.sse import stream_text
from bot.backend.streaming import StreamClient
from bot.backend.wire import (
    Aggregate,
    aggregate_tokens,
    build_variant,
    controller_json,
    feature_ref,
    sdk_feature,
    searched_feature,
    token_activation,
)
from bot.domain.errors import BackendError, BackendUnavailableError, NotFoundError
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
        self._base_url = base_url.rstrip("/")
        self._api_url = f"{self._base_url}/api/inference/v1"
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
        self._streams = StreamClient(self._base_url, max_connections=max_connections)
        self._chat_target = f"{httpx.URL(self._api_url).raw_path.decode()}/chat/completions"
        self._stream_headers = {
            **self._headers,
            "Accept": "text/event-stream",
            "Content-Type": "application/json",
        }
        self._sdk = goodfire.AsyncClient(api_key, base_url=base_url.rstrip("/"))
        for api in (self._sdk.features, self._sdk.chat, self._sdk.chat.completions):
            api._http = self._pooled  # type: ignore[assignment]

    async def __aenter__(self) -> EmberGateway:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._streams.aclose()
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
        error = await self.probe(seconds)
        return error.user_message if error is not None else None

    async def probe(self, seconds: float) -> BackendError | None:
        """`ping`, with the error itself: unreachable, failing, or rejecting our key."""
        try:
            response = await self._http.get(
                f"{self._api_url}/models", headers=self._headers, timeout=seconds
            )
        except httpx.TransportError as error:
            return error_for_transport(error, seconds)
        if response.status_code >= 500 or response.status_code in (401, 403):
            return error_for_response(response.status_code, response.headers, response.text)
        return None  # 404 too: an older server without /models is still up

    async def served_facts(self, seconds: float) -> dict[str, Any]:
        """What the server says it serves on `/health` (ember-bot's own: model, sae, layer,
        labels, search); {} when it says nothing there (hosted Ember) or cannot be asked."""
        try:
            response = await self._http.get(
                f"{self._base_url}/health", headers=self._headers, timeout=seconds
            )
            facts = response.json() if response.status_code == 200 else {}
        except (httpx.TransportError, ValueError):
            return {}
        return facts if isinstance(facts, dict) else {}

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
        params = {"query": query, "page": 1, "perPage": top_k, "model": model}
        with self._call():  # the SDK's request, read here to keep ember-bot's label_score
            response = await self._pooled.get(
                f"{self._api_url}/features/search", headers=self._headers, params=params
            )
            return [searched_feature(hit) for hit in response.json()["features"]]

    async def lookup_features(self, indices: list[int]) -> list[FeatureRef]:
        """The features at these indices, in the order asked; unknown indices are left out."""
        if not indices:
            return []
        model = await self.model_id()
        with self._call():
            found = await self._sdk.features.lookup(indices, model=model)  # type: ignore[arg-type]
            return [feature_ref(found[index]) for index in indices if index in found]

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
            totals = aggregate_tokens(inspector.tokens)
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
                features=sdk_feature(feature),
                _fetch_feature_data=False,
            )
            return [token_activation(token, feature.index_in_sae) for token in inspector.tokens]

    async def autosteer(self, specification: str) -> list[FeatureEdit]:
        """The edits the backend's AutoSteer proposes for a plain-words description."""
        model = await self.model_id()
        with self._call():
            proposed = await self._sdk.features.AutoSteer(specification, model=model)  # type: ignore[arg-type]
            return [
                FeatureEdit(feature_ref(feature), float(value))
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
        attempts = Attempts(self._retry)
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
        self, payload: dict[str, Any], attempts: Attempts, event_reasons: Mapping[str, str]
    ) -> AsyncIterator[str]:
        body = json.dumps(payload).encode()
        try:
            async with self._streams.post(
                self._chat_target,
                self._stream_headers,
                body,
                wait_seconds=attempts.timeout(self._retry.deadline),
            ) as response:
                if response.status_code != 200:
                    text = (await response.read()).decode("utf-8", errors="replace")
                    raise error_for_response(response.status_code, response.headers, text)
                async for delta in stream_text(response.chunks(), event_reasons):
                    yield delta
        except httpx.TransportError as error:
            raise error_for_transport(error, attempts.elapsed()) from error

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
            token = call_deadline.set(time.monotonic() + self._retry.deadline)
            try:
                yield
            except (ValueError, KeyError, TypeError, GoodfireBaseException) as error:
                logger.warning(
                    "Ember backend sent a reply we could not read (%s)", type(error).__name__
                )
                raise BackendUnavailableError("unexpected reply from the server") from error
            finally:
                call_deadline.reset(token)
