"""The /models route: the one model served, with its SAE."""

from typing import Any

from fastapi import APIRouter

from server.api.served import Served

router = APIRouter()


@router.get("/models")
async def models(served: Served) -> dict[str, Any]:
    entry = {
        "id": served.model_id,
        "object": "model",
        "owned_by": "ember-bot",
        "sae": served.bundle.sae_id,
        "layer": served.bundle.layer,
        "d_sae": served.runtime.d_sae,
    }
    return {"object": "list", "data": [entry]}
