"""The HTTP face of the server: the Ember wire API (see shared/ember-api.md §2) over one Runtime."""

import functools
import hashlib
import json
import logging
import math
import secrets
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from server import schemas
from server.controller import EMPTY_PLAN, ControllerError, SteeringPlan, compile_plan
from server.ids import FeatureIds, UnknownFeatureError
from server.presets import ModelBundle
from server.runtime import (
    DEFAULT_MAX_TOKENS,
    Finish,
    PromptError,
    Purpose,
    Runtime,
    SamplingOptions,
    TextChunk,
)

API_PREFIX = "/api/inference/v1"
MAX_LISTED_IDS = 50
AUTOSTEER_FEATURES = 3
AUTOSTEER_STRENGTH = 0.6
ATTRIBUTED_FEATURES = 16

log = logging.getLogger("ember_bot.server")


class Catalog:
    """The served SAE's features as the API names them: UUID, label and index."""

    def __init__(self, bundle: ModelBundle, d_sae: int) -> None:
        self.ids = FeatureIds(bundle.model_id, bundle.sae_id, d_sae)
        self.labels = bundle.labels

    def describe(self, index: int, id_key: str = "id") -> dict[str, Any]:
        return {
            id_key: str(self.ids.uuid_of(index)),
            "label": self.labels.label(index),
            "index_in_sae": index,
        }

    def scored(self, hits: Sequence[tuple[int, float]]) -> dict[str, Any]:
        return {"features": [{**self.describe(i), "relevance": score} for i, score in hits]}

    def check(self, indices: Sequence[int]) -> list[int]:
        unknown = [index for index in indices if index >= len(self.ids)]
        if unknown:
            raise UnknownFeatureError(
                f"Unknown feature index {unknown[0]}: this SAE has {len(self.ids)} features "
                f"(0-{len(self.ids) - 1})."
            )
        return list(indices)

    def resolve(self, feature_ids: Sequence[str]) -> list[int]:
        indices = []
        for text in feature_ids:
            index = self.ids.index_of(text)
            if index is None:
                raise UnknownFeatureError(
                    f"Unknown feature id {text!r}: not a feature of this SAE."
                )
            indices.append(index)
        return indices


class BearerAuth:
    """Answers 401 to API requests without `Authorization: Bearer <api_key>`."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self._app = app
        self._expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(API_PREFIX):
            sent = dict(scope["headers"]).get(b"authorization", b"")
            if not secrets.compare_digest(sent, self._expected):
                detail = "Missing or wrong API key: send 'Authorization: Bearer <key>'."
                await JSONResponse({"detail": detail}, status_code=401)(scope, receive, send)
                return
        await self._app(scope, receive, send)


def create_app(bundle: ModelBundle, *, api_key: str | None = None) -> FastAPI:
    """The Ember-compatible API over `bundle` (model, tokenizer, SAE, layer, labels, ids)."""
    runtime = Runtime(bundle)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        runtime.close()

    app = FastAPI(title="ember-bot server", lifespan=lifespan)
    app.include_router(_api_router(bundle, runtime))
    _add_error_handlers(app)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "model": bundle.model_id}

    if api_key:
        app.add_middleware(BearerAuth, api_key=api_key)
    return app


def _api_router(bundle: ModelBundle, runtime: Runtime) -> APIRouter:
    model_id: str = bundle.model_id
    router = APIRouter(prefix=API_PREFIX, dependencies=[Depends(served_model_check(model_id))])
    catalog = Catalog(bundle, runtime.d_sae)
    fingerprint = "fp_" + hashlib.sha256(f"{model_id}|{bundle.sae_id}".encode()).hexdigest()[:12]

    def plan_of(body: Any) -> SteeringPlan:
        return compile_plan(body.controller, runtime.d_sae)

    def prompt_of(messages: Sequence[schemas.Message], purpose: Purpose) -> list[int]:
        return runtime.encode_chat([m.model_dump() for m in messages], purpose)

    @router.get("/models")
    async def models() -> dict[str, Any]:
        entry = {
            "id": model_id,
            "object": "model",
            "owned_by": "ember-bot",
            "sae": bundle.sae_id,
            "layer": bundle.layer,
            "d_sae": runtime.d_sae,
        }
        return {"object": "list", "data": [entry]}

    @router.post("/chat/completions")
    async def chat_completions(body: schemas.ChatCompletionRequest) -> Any:
        plan = plan_of(body)
        prompt = prompt_of(body.messages, "generate")
        events = runtime.generate(prompt, _sampling(body), plan)
        reply = _Reply(model_id, fingerprint)
        if body.stream:
            return StreamingResponse(
                reply.stream(events),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        return await reply.collect(events)

    @router.post("/chat-attribution/compute-logits")
    async def compute_logits(body: schemas.LogitsRequest) -> dict[str, Any]:
        plan = plan_of(body)
        prompt = prompt_of(body.messages, "score")
        logits = await runtime.logits(prompt, plan, body.top_k or 10, body.filter_vocabulary)
        return {"logits": logits}

    @router.post("/chat-attribution/compute-features")
    async def compute_features(body: schemas.FeaturesRequest) -> dict[str, Any]:
        plan = plan_of(body)
        include = body.include_feature_indexes
        if include is not None:
            catalog.check(include)
        prompt = prompt_of(body.messages, "read")
        rows = await runtime.inspect(prompt, plan, body.aggregate_by, include)
        describe = functools.cache(catalog.describe)  # the same few features on every token
        tokens = [
            {
                "token": row.token,
                "attributions": [
                    {**describe(index), "activation_strength": value}
                    for index, value in row.activations
                ],
            }
            for row in rows
        ]
        return {"tokens": tokens}

    @router.get("/features/")
    async def list_features(
        feature_id: Annotated[list[str] | None, Query(max_length=MAX_LISTED_IDS)] = None,
    ) -> dict[str, Any]:
        return {"features": [catalog.describe(i) for i in catalog.resolve(feature_id or [])]}

    @router.get("/features/search")
    async def search(
        model: Annotated[str, Query()],
        query: Annotated[str, Query(max_length=1000)] = "",
        page: Annotated[int, Query(ge=1, le=1000)] = 1,
        per_page: Annotated[int, Query(alias="perPage", ge=1, le=100)] = 10,
    ) -> dict[str, Any]:
        hits = catalog.labels.search(query, top_k=page * per_page) if query.strip() else []
        return catalog.scored(hits[(page - 1) * per_page :])

    @router.post("/features/rerank")
    async def rerank(body: schemas.RerankRequest) -> dict[str, Any]:
        indices = catalog.resolve(body.feature_ids)
        return catalog.scored(catalog.labels.rerank(body.query, indices, top_k=body.top_k))

    @router.post("/features/lookup")
    async def lookup(body: schemas.LookupRequest) -> dict[str, Any]:
        indices = catalog.check(body.indices)
        return {"features": [catalog.describe(i, id_key="uuid") for i in indices]}

    @router.post("/attributions/neighbors")
    async def neighbors(body: schemas.NeighborsRequest) -> dict[str, Any]:
        indices = catalog.check(body.feature_indices)
        found = await runtime.neighbors(indices, body.top_k)
        return {"neighbors": [catalog.describe(index) for index, _cosine in found]}

    @router.post("/chat-attribution/contrast")
    async def contrast(body: schemas.ContrastRequest) -> dict[str, Any]:
        prompts_1 = [prompt_of(messages, "read") for messages in body.dataset_1]
        prompts_2 = [prompt_of(messages, "read") for messages in body.dataset_2]
        toward_1, toward_2 = await runtime.contrast(
            prompts_1, prompts_2, body.k_to_remove, body.k_to_add
        )
        return {
            "dataset_1_features": [catalog.describe(i) for i in toward_1],
            "dataset_2_features": [catalog.describe(i) for i in toward_2],
        }

    @router.post("/features/auto-edits")
    async def auto_edits(body: schemas.SpecificationRequest) -> dict[str, Any]:
        """AutoSteer, as a heuristic: the label search's best hits, at moderate strengths.

        Up to AUTOSTEER_FEATURES features whose relevance is at least half the best one's; the
        best gets AUTOSTEER_STRENGTH, the others proportionally less, all divided by sqrt(n) so
        that several edits together stay about as strong as one.
        """
        hits = catalog.labels.search(body.specification, top_k=AUTOSTEER_FEATURES)
        if not hits or hits[0][1] <= 0:
            return {"edits": []}
        best = hits[0][1]
        chosen = [(index, score) for index, score in hits if score >= best / 2]
        damping = AUTOSTEER_STRENGTH / math.sqrt(len(chosen))
        edits = [
            [catalog.describe(index), round(damping * score / best, 3)] for index, score in chosen
        ]
        return {"edits": edits}

    @router.post("/features/auto-conditional")
    async def auto_conditional(body: schemas.SpecificationRequest) -> dict[str, Any]:
        """The best-matching feature, firing above half its peak on the specification itself."""
        hits = catalog.labels.search(body.specification, top_k=1)
        if not hits:
            raise UnknownFeatureError(f"No feature label matches {body.specification!r}.")
        index = hits[0][0]
        prompt = prompt_of([schemas.Message(role="user", content=body.specification)], "read")
        rows = await runtime.inspect(prompt, EMPTY_PLAN, "max", [index])
        peak = max(value for row in rows for _index, value in row.activations)
        feature = {**catalog.describe(index, id_key="uuid"), "max_activation_strength": 1}
        conditional = {
            "left_hand": {"features": [feature]},
            "right_hand": peak / 2,
            "operator": ">",
        }
        return {"conditional": {"conditionals": [conditional], "operator": "AND"}}

    @router.post("/attributions/compute-logit-attribution")
    async def logit_attribution(body: schemas.AttributionRequest) -> dict[str, Any]:
        prompt = prompt_of(body.messages, "read")
        if not body.start_index <= body.end_index < len(prompt):
            raise _invalid(
                ("body", "endIndex"),
                f"startIndex..endIndex must lie within 1..{len(prompt) - 1} (the conversation "
                f"has {len(prompt)} tokens) with startIndex <= endIndex.",
                body.end_index,
            )
        found = await runtime.attribute(
            prompt, body.start_index, body.end_index, ATTRIBUTED_FEATURES
        )
        to_ablate = [
            {
                "id": str(catalog.ids.uuid_of(item.index)),
                "value": item.value,
                "tokens": [
                    {"index": position, "activation_strength": value}
                    for position, value in item.activations
                ],
            }
            for item in found
        ]
        return {"to_ablate": to_ablate, "num_input_tokens": len(prompt)}

    @router.post("/chat/tokenize")
    async def tokenize(body: schemas.TokenizeRequest) -> dict[str, Any]:
        prompt = prompt_of(body.messages, "read")
        return {"tokens": [{"value": token} for token in runtime.token_strings(prompt)]}

    return router


def served_model_check(model_id: str) -> Callable[[Request], Awaitable[None]]:
    """A dependency answering 422, in pydantic's words, to a request naming another model.

    The model is read from the query string, or from the JSON body of a POST (an unreadable
    body is left to the route's own validation).
    """

    async def check(request: Request) -> None:
        where, named = "query", request.query_params.get("model")
        if request.method == "POST":
            try:
                body = json.loads(await request.body())
            except ValueError:
                return
            where, named = "body", body.get("model") if isinstance(body, dict) else None
        if named is not None and named != model_id:
            expected = f"'{model_id}'"
            raise RequestValidationError(
                [
                    {
                        "type": "literal_error",
                        "loc": (where, "model"),
                        "msg": f"Input should be {expected}",
                        "input": named,
                        "ctx": {"expected": expected},
                    }
                ]
            )

    return check


def _sampling(body: schemas.ChatCompletionRequest) -> SamplingOptions:
    stop = [body.stop] if isinstance(body.stop, str) else body.stop or []
    return SamplingOptions(
        max_tokens=body.max_completion_tokens or DEFAULT_MAX_TOKENS,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        stop=tuple(stop),
    )


class _Reply:
    """Chat completion bodies: one JSON object, or server-sent events with one chunk each."""

    def __init__(self, model_id: str, fingerprint: str) -> None:
        self._head = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "created": int(time.time()),
            "model": model_id,
            "system_fingerprint": fingerprint,
        }

    async def collect(self, events: AsyncIterator[TextChunk | Finish]) -> dict[str, Any]:
        parts: list[str] = []
        finish: Finish | None = None
        async for event in events:
            if isinstance(event, TextChunk):
                parts.append(event.text)
            else:
                finish = event
        assert finish is not None, "a generation always ends with a Finish"
        message = {"role": "assistant", "content": "".join(parts)}
        return {
            **self._head,
            "object": "chat.completion",
            "gf_event_names": list(finish.events) or None,
            "choices": [{"index": 0, "message": message, "finish_reason": finish.reason}],
            "usage": {
                "prompt_tokens": finish.prompt_tokens,
                "completion_tokens": finish.completion_tokens,
                "total_tokens": finish.prompt_tokens + finish.completion_tokens,
            },
        }

    async def stream(
        self, events: AsyncGenerator[TextChunk | Finish, None]
    ) -> AsyncIterator[bytes]:
        """One `data:` event per write (the SDK's parser needs whole events), then [DONE]."""
        index = 0
        try:
            async for event in events:
                if isinstance(event, TextChunk):
                    yield self._event(self._chunk(index, event.text, None, None))
                else:
                    yield self._event(self._chunk(index, "", event.reason, list(event.events)))
                index += 1
        except Exception:
            log.exception("generation failed mid-stream")
            yield self._event({"error": {"message": "Generation failed on the server."}})
            return
        finally:
            await events.aclose()
        yield b"data: [DONE]\n\n"

    def _chunk(
        self, index: int, text: str, reason: str | None, events: list[str] | None
    ) -> dict[str, Any]:
        choice = {
            "index": 0,
            "delta": {"role": "assistant", "content": text},
            "gf_token_index": index,
            "finish_reason": reason,
        }
        return {
            **self._head,
            "object": "chat.completion.chunk",
            "gf_event_names": events or None,
            "choices": [choice],
        }

    @staticmethod
    def _event(payload: dict[str, Any]) -> bytes:
        # ASCII-only JSON survives reads split inside a character; escaping the space of a
        # literal "data: " in the text keeps the SDK from splitting the event there.
        text = json.dumps(payload).replace("data: ", "data:\\u0020")
        return f"data: {text}\n\n".encode()


def _invalid(loc: tuple[str, ...], message: str, value: Any) -> RequestValidationError:
    return RequestValidationError(
        [{"type": "value_error", "loc": loc, "msg": message, "input": value}]
    )


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(UnknownFeatureError)
    async def unknown_feature(_request: Request, error: UnknownFeatureError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=404)

    for error_type, field in ((PromptError, "messages"), (ControllerError, "controller")):
        app.add_exception_handler(error_type, _unprocessable(field))


def _unprocessable(field: str) -> Any:
    """A handler answering 422 in pydantic's shape, blaming body field `field`."""

    async def handle(_request: Request, error: Exception) -> JSONResponse:
        detail = [{"type": "value_error", "loc": ["body", field], "msg": str(error)}]
        return JSONResponse({"detail": detail}, status_code=422)

    return handle
