"""How the engine's refusals reach the client: 404 for unknown features, 400 for what the serving
engine cannot do, 422 for the rest."""

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from server.engine.controller import ControllerError
from server.engine.interface import UnsupportedByEngine
from server.engine.prompts import PromptError
from server.model.ids import UnknownFeatureError


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(UnknownFeatureError)
    async def unknown_feature(_request: Request, error: UnknownFeatureError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=404)

    @app.exception_handler(UnsupportedByEngine)
    async def unsupported(_request: Request, error: UnsupportedByEngine) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=400)

    for error_type, field in ((PromptError, "messages"), (ControllerError, "controller")):
        app.add_exception_handler(error_type, _unprocessable(field))


def _unprocessable(field: str) -> Any:
    """A handler answering 422 in pydantic's shape, blaming body field `field`."""

    async def handle(_request: Request, error: Exception) -> JSONResponse:
        detail = [{"type": "value_error", "loc": ["body", field], "msg": str(error)}]
        return JSONResponse({"detail": detail}, status_code=422)

    return handle
