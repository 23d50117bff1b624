"""Discord REST calls ride out a short outage: a request that could not reach Discord is retried
for up to RETRY_FOR seconds, so the reply is late instead of lost.

discord.py retries 5xx answers and rate limits itself, and connection resets only on macOS and
Windows; a refused or dropped connection ends the call. Only what cannot post twice is retried
here: a request that never connected (any method), or an idempotent one (GET, PUT, PATCH,
DELETE, the typing indicator) whose connection dropped before the answer came.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import discord
from discord.http import HTTPClient, Route

log = logging.getLogger(__name__)

RETRY_FOR = 20.0  # seconds, per request
FIRST_DELAY = 0.25
MAX_DELAY = 4.0
IDEMPOTENT = frozenset({"GET", "PUT", "PATCH", "DELETE"})
DROPPED = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, ConnectionResetError)


def retry_unsent(
    http: HTTPClient, *, within: float = RETRY_FOR, clock: Callable[[], float] = time.monotonic
) -> None:
    """Make `http` retry the requests that did not get through (see the module docstring)."""
    request = http.request

    async def patient(route: Route, **kwargs: Any) -> Any:
        deadline = clock() + within
        delay = FIRST_DELAY
        while True:
            try:
                return await request(route, **kwargs)
            except DROPPED as error:
                if not _unsent_or_idempotent(route, error) or clock() + delay > deadline:
                    raise
                log.warning(
                    "Discord %s %s failed (%s); retrying in %.2g s",
                    route.method,
                    route.path,
                    error,
                    delay,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_DELAY)
            for file in kwargs.get("files") or ():
                if isinstance(file, discord.File):
                    file.reset(seek=True)

    http.request = patient  # type: ignore[method-assign]


def _unsent_or_idempotent(route: Route, error: BaseException) -> bool:
    if isinstance(error, aiohttp.ClientConnectorError):
        return True  # it never connected: nothing was sent
    return route.method in IDEMPOTENT or route.path.endswith("/typing")
