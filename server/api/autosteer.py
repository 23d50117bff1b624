"""AutoSteer and auto-conditional: steering and conditions from a plain-words specification."""

import math
import re
from typing import Any

from fastapi import APIRouter

from server.api import schemas
from server.api.served import Served
from server.engine.controller import EMPTY_PLAN
from server.model.ids import UnknownFeatureError

AUTOSTEER_CANDIDATES = 10
AUTOSTEER_MAX_EDITS = 5
AUTOSTEER_KEEP_SHARE = 0.6  # of the best feature's relevance
AUTOSTEER_STRENGTH = 0.6
# How specifications ask ("talk like a pirate", "make it more formal"): left out of the search.
_INSTRUCTION_TEXT = (
    "be being sound sounding talk talking speak speaking write writing act acting behave reply "
    "respond answer like as more less very really much make it its please always you your a an "
    "the in with of to and not no never without avoid stop don't dont"
)
INSTRUCTION_WORDS = frozenset(_INSTRUCTION_TEXT.split())
# "less formal", "not sad", "stop talking like a pirate": steer those features down.
NEGATION = re.compile(r"\b(not|never|less|fewer|without|avoid|stop|don'?t|doesn'?t)\b", re.I)

router = APIRouter()


@router.post("/features/auto-edits")
async def auto_edits(body: schemas.SpecificationRequest, served: Served) -> dict[str, Any]:
    """AutoSteer (README "Feature search and AutoSteer"): the blended feature search over what
    the specification describes (its instruction words left out), whose activation part is the
    features that fire on those words of the specification.

    The best feature, and up to AUTOSTEER_MAX_EDITS - 1 more whose relevance is at least
    AUTOSTEER_KEEP_SHARE of its, are steered: the best at AUTOSTEER_STRENGTH, the others in
    proportion to their relevance, all divided by sqrt(n) so that several edits together stay
    about as strong as one; negative when the specification asks for less of it.
    """
    catalog = served.catalog
    hits = await served.search.search(focus(body.specification), top_k=AUTOSTEER_CANDIDATES)
    if not hits:
        return {"edits": []}
    best = max(hits[0][1], 1e-9)
    chosen = [(index, score) for index, score in hits if score >= AUTOSTEER_KEEP_SHARE * best]
    chosen = (chosen or hits[:1])[:AUTOSTEER_MAX_EDITS]
    sign = -1.0 if NEGATION.search(body.specification) else 1.0
    damping = sign * AUTOSTEER_STRENGTH / math.sqrt(len(chosen))
    edits = [
        [catalog.describe(index), round(damping * max(score, 1e-9) / best, 3)]
        for index, score in chosen
    ]
    return {"edits": edits}


def focus(specification: str) -> str:
    """What the specification describes: its words but the instruction words, or all of it."""
    words = specification.split()
    kept = [word for word in words if word.lower().strip(".,!?;:\"'") not in INSTRUCTION_WORDS]
    return " ".join(kept) or specification


@router.post("/features/auto-conditional")
async def auto_conditional(body: schemas.SpecificationRequest, served: Served) -> dict[str, Any]:
    """The best-matching feature, firing above half its peak on the specification itself."""
    hits = await served.search.search(body.specification, top_k=1)
    if not hits:  # an SAE with no features to offer
        raise UnknownFeatureError(f"No feature matches {body.specification!r}.")
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
