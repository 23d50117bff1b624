"""HTTP error responses and transport failures, mapped to the bot's error types."""

from __future__ import annotations

import json
from typing import Any

import httpx

from bot.domain.errors import (
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    InvalidRequestError,
    NotFoundError,
    OutOfCreditsError,
    RateLimitedError,
    UnauthorizedError,
)


def _server_detail(body: str) -> str:
    """The server's own explanation: pydantic `detail[].msg` lines, a detail string, or text."""
    try:
        detail = json.loads(body)["detail"]
    except (ValueError, KeyError, TypeError):
        return body.strip()[:200]
    if isinstance(detail, list):
        return "; ".join(_pydantic_line(item) for item in detail if isinstance(item, dict))
    return str(detail)[:200]


def _pydantic_line(item: dict[str, Any]) -> str:
    where = [str(part) for part in item.get("loc", []) if part not in ("body", "query")]
    message = str(item.get("msg", "invalid value"))
    return f"{'.'.join(where)}: {message}" if where else message


def _retry_after(headers: httpx.Headers) -> float | None:
    try:
        return max(0.0, float(headers["Retry-After"]))
    except (KeyError, ValueError):
        return None


def error_for_response(status: int, headers: httpx.Headers, body: str) -> BackendError:
    """Map an HTTP error response to the bot's error taxonomy."""
    if status == 429:
        return RateLimitedError(_retry_after(headers))
    if status in (401, 403):
        return UnauthorizedError()
    if status == 402:
        return OutOfCreditsError()
    if status == 404:
        return NotFoundError(_server_detail(body) or "not found")
    if status >= 500:
        return BackendUnavailableError(f"HTTP {status}")
    return InvalidRequestError(_server_detail(body) or f"HTTP {status}")


def error_for_transport(error: httpx.TransportError, elapsed: float) -> BackendError:
    if isinstance(error, httpx.TimeoutException):
        return BackendTimeoutError(elapsed)
    if isinstance(error, httpx.ConnectError):
        return BackendUnavailableError("cannot connect to the server")
    return BackendUnavailableError("the connection broke off")
