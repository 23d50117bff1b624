"""The HTTP face of the server: the Ember wire API (see docs/ember-api.md §2) over one engine."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from server.api import attribution, autosteer, chat, features, models
from server.api.auth import BearerAuth
from server.api.errors import add_error_handlers
from server.api.model_check import check_requested_model
from server.api.served import ServedModel
from server.engine.interface import Engine
from server.engine.runtime import Runtime
from server.model.presets import ModelBundle

API_PREFIX = "/api/inference/v1"
ROUTERS = (models.router, chat.router, attribution.router, features.router, autosteer.router)


def create_app(
    bundle: ModelBundle, *, api_key: str | None = None, engine: Engine | None = None
) -> FastAPI:
    """The Ember-compatible API over `bundle` (model, tokenizer, SAE, layer, labels, ids), run
    by `engine` (default: the transformers Runtime over the bundle's model)."""
    runtime = engine if engine is not None else Runtime(bundle)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        yield
        runtime.close()

    app = FastAPI(title="ember-bot server", lifespan=lifespan)
    app.state.served = ServedModel.build(bundle, runtime)
    for router in ROUTERS:
        app.include_router(router, prefix=API_PREFIX, dependencies=[Depends(check_requested_model)])
    add_error_handlers(app)

    @app.get("/health")
    async def health() -> dict[str, str | int]:
        """Liveness, and what is served (`ember-bot doctor` reports it; hosted Ember lacks it)."""
        return {
            "status": "ok",
            "model": bundle.model_id,
            "sae": bundle.sae_id,
            "layer": bundle.layer,
            "labels": len(bundle.labels),
            "search": app.state.served.search.mode,
            "engine": runtime.name,
        }

    if api_key:
        app.add_middleware(BearerAuth, api_key=api_key, prefix=API_PREFIX)
    return app
