"""The API-key check: 401 to API requests without `Authorization: Bearer <api_key>`."""

import secrets

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send


class BearerAuth:
    """ASGI middleware guarding every path under `prefix` (other paths, /health, stay open)."""

    def __init__(self, app: ASGIApp, api_key: str, prefix: str) -> None:
        self._app = app
        self._expected = f"Bearer {api_key}".encode()
        self._prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self._prefix):
            sent = dict(scope["headers"]).get(b"authorization", b"")
            if not secrets.compare_digest(sent, self._expected):
                detail = "Missing or wrong API key: send 'Authorization: Bearer <key>'."
                await JSONResponse({"detail": detail}, status_code=401)(scope, receive, send)
                return
        await self._app(scope, receive, send)
