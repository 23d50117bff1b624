"""Routes that read the model: next-token logits, feature activations per token, contrasts,
decoder neighbours and logit attribution."""

from typing import Any

from fastapi import APIRouter, Response
from fastapi.exceptions import RequestValidationError

from server.api import schemas
from server.api.feature_report import features_report
from server.api.served import Served

ATTRIBUTED_FEATURES = 16
JSON = "application/json"

router = APIRouter()


@router.post("/chat-attribution/compute-logits")
async def compute_logits(body: schemas.LogitsRequest, served: Served) -> dict[str, Any]:
    plan = served.plan(body.controller)
    prompt = served.prompt(body.messages, "score")
    logits = await served.runtime.logits(prompt, plan, body.top_k or 10, body.filter_vocabulary)
    return {"logits": logits}


@router.post("/chat-attribution/compute-features")
async def compute_features(body: schemas.FeaturesRequest, served: Served) -> Response:
    plan = served.plan(body.controller)
    include = body.include_feature_indexes
    if include is not None:
        served.catalog.check(include)
    prompt = served.prompt(body.messages, "read")
    rows = await served.runtime.inspect(prompt, plan, body.aggregate_by, include)
    return Response(features_report(rows, served.catalog.identify), media_type=JSON)


@router.post("/chat-attribution/contrast")
async def contrast(body: schemas.ContrastRequest, served: Served) -> dict[str, Any]:
    prompts_1 = [served.prompt(messages, "read") for messages in body.dataset_1]
    prompts_2 = [served.prompt(messages, "read") for messages in body.dataset_2]
    toward_1, toward_2 = await served.runtime.contrast(
        prompts_1, prompts_2, body.k_to_remove, body.k_to_add
    )
    return {
        "dataset_1_features": [served.catalog.describe(i) for i in toward_1],
        "dataset_2_features": [served.catalog.describe(i) for i in toward_2],
    }


@router.post("/attributions/neighbors")
async def neighbors(body: schemas.NeighborsRequest, served: Served) -> dict[str, Any]:
    indices = served.catalog.check(body.feature_indices)
    found = await served.runtime.neighbors(indices, body.top_k)
    return {"neighbors": [served.catalog.describe(index) for index, _cosine in found]}


@router.post("/attributions/compute-logit-attribution")
async def logit_attribution(body: schemas.AttributionRequest, served: Served) -> dict[str, Any]:
    prompt = served.prompt(body.messages, "read")
    if not body.start_index <= body.end_index < len(prompt):
        raise _invalid(
            ("body", "endIndex"),
            f"startIndex..endIndex must lie within 1..{len(prompt) - 1} (the conversation "
            f"has {len(prompt)} tokens) with startIndex <= endIndex.",
            body.end_index,
        )
    found = await served.runtime.attribute(
        prompt, body.start_index, body.end_index, ATTRIBUTED_FEATURES
    )
    to_ablate = [
        {
            "id": str(served.catalog.ids.uuid_of(item.index)),
            "value": item.value,
            "tokens": [
                {"index": position, "activation_strength": value}
                for position, value in item.activations
            ],
        }
        for item in found
    ]
    return {"to_ablate": to_ablate, "num_input_tokens": len(prompt)}


def _invalid(loc: tuple[str, ...], message: str, value: Any) -> RequestValidationError:
    return RequestValidationError(
        [{"type": "value_error", "loc": loc, "msg": message, "input": value}]
    )
