"""Feature lookup routes: by id, by index, and by what their labels say."""

from typing import Annotated, Any

from fastapi import APIRouter, Query

from server.api import schemas
from server.api.served import Served

MAX_LISTED_IDS = 50

router = APIRouter()


@router.get("/features/")
async def list_features(
    served: Served,
    feature_id: Annotated[list[str] | None, Query(max_length=MAX_LISTED_IDS)] = None,
) -> dict[str, Any]:
    catalog = served.catalog
    return {"features": [catalog.describe(i) for i in catalog.resolve(feature_id or [])]}


@router.get("/features/search")
async def search(
    served: Served,
    model: Annotated[str, Query()],
    query: Annotated[str, Query(max_length=1000)] = "",
    page: Annotated[int, Query(ge=1, le=1000)] = 1,
    per_page: Annotated[int, Query(alias="perPage", ge=1, le=100)] = 10,
) -> dict[str, Any]:
    """Every feature ranked by relevance to `query` (see server/model/search/blend.py): a page
    is always full while the SAE has features left."""
    hits = await served.search.search(query, top_k=page * per_page)
    return served.catalog.scored(hits[(page - 1) * per_page :])


@router.post("/features/rerank")
async def rerank(body: schemas.RerankRequest, served: Served) -> dict[str, Any]:
    catalog = served.catalog
    indices = catalog.resolve(body.feature_ids)
    return catalog.scored(await served.search.rerank(body.query, indices, top_k=body.top_k))


@router.post("/features/lookup")
async def lookup(body: schemas.LookupRequest, served: Served) -> dict[str, Any]:
    indices = served.catalog.check(body.indices)
    return {"features": [served.catalog.describe(i, id_key="uuid") for i in indices]}
