"""`PooledHTTP`: the HTTP wrapper the goodfire SDK is given in place of its own."""

from __future__ import annotations

from typing import Any

import httpx

from bot.backend.errors import error_for_response, error_for_transport
from bot.backend.retries import Attempts, RetryPolicy, call_deadline


class PooledHTTP:
    """Stands in for goodfire's `AsyncHTTPWrapper`: shared client, async retries, typed errors."""

    def __init__(self, client: httpx.AsyncClient, policy: RetryPolicy) -> None:
        self._client = client
        self._policy = policy

    async def get(
        self,
        url: str,
        headers: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        timeout: float | None = 10,  # noqa: ASYNC109 - the SDK's wrapper signature
    ) -> httpx.Response:
        return await self.request("GET", url, headers=headers, params=params, cap=timeout)

    async def post(
        self,
        url: str,
        headers: dict[str, Any] | None = None,
        json: Any = None,
        timeout: float | None = 10,  # noqa: ASYNC109 - the SDK's wrapper signature
    ) -> httpx.Response:
        return await self.request("POST", url, headers=headers, json=json, cap=timeout)

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        json: Any = None,
        cap: float | None = 10,
    ) -> httpx.Response:
        """One successful (2xx/3xx) response, after retries; anything else as a BackendError."""
        attempts = Attempts(self._policy, call_deadline.get())
        while True:
            try:
                response = await self._client.request(
                    method,
                    url,
                    headers=headers,
                    params=params,
                    json=json,
                    timeout=attempts.timeout(cap or self._policy.deadline),
                )
            except httpx.TransportError as error:
                await attempts.backoff_or_raise(error_for_transport(error, attempts.elapsed()))
                continue
            if response.status_code < 400:
                return response
            await attempts.backoff_or_raise(
                error_for_response(response.status_code, response.headers, response.text)
            )
