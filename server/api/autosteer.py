"""AutoSteer and auto-conditional: steering and conditions from a plain-words specification."""

import math
from typing import Any

from fastapi import APIRouter

from server.api import schemas
from server.api.served import Served
from server.engine.controller import EMPTY_PLAN
from server.model.ids import UnknownFeatureError

AUTOSTEER_FEATURES = 3
AUTOSTEER_STRENGTH = 0.6

router = APIRouter()


@router.post("/features/auto-edits")
async def auto_edits(body: schemas.SpecificationRequest, served: Served) -> dict[str, Any]:
    """AutoSteer, as a heuristic: the label search's best hits, at moderate strengths.

    Up to AUTOSTEER_FEATURES features whose relevance is at least half the best one's; the
    best gets AUTOSTEER_STRENGTH, the others proportionally less, all divided by sqrt(n) so
    that several edits together stay about as strong as one.
    """
    catalog = served.catalog
    hits = catalog.labels.search(body.specification, top_k=AUTOSTEER_FEATURES)
    if not hits or hits[0][1] <= 0:
        return {"edits": []}
    best = hits[0][1]
    chosen = [(index, score) for index, score in hits if score >= best / 2]
    damping = AUTOSTEER_STRENGTH / math.sqrt(len(chosen))
    edits = [[catalog.describe(index), round(damping * score / best, 3)] for index, score in chosen]
    return {"edits": edits}


@router.post("/features/auto-conditional")
async def auto_conditional(body: schemas.SpecificationRequest, served: Served) -> dict[str, Any]:
    """The best-matching feature, firing above half its peak on the specification itself."""
    hits = served.catalog.labels.search(body.specification, top_k=1)
    if not hits:
        raise UnknownFeatureError(f"No feature label matches {body.specification!r}.")
    index = hits[0][0]
    prompt = served.prompt([schemas.Message(role="user", content=body.specification)], "read")
    rows = await served.runtime.inspect(prompt, EMPTY_PLAN, "max", [index])
    peak = max(value for row in rows for _index, value in row.activations)
    feature = {**served.catalog.describe(index, id_key="uuid"), "max_activation_strength": 1}
    conditional = {
        "left_hand": {"features": [feature]},
        "right_hand": peak / 2,
        "operator": ">",
    }
    return {"conditional": {"conditionals": [conditional], "operator": "AND"}}
