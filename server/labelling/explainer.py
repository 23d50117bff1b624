"""An OpenAI-compatible chat endpoint as the explainer: our own server's chat route, a local
vLLM or Ollama, or a hosted API (its key from the environment, never logged).

`base_url` is the API root that `/chat/completions` and `/models` hang from, e.g.
`http://localhost:11434/v1`, `https://api.openai.com/v1`, or `http://host:8000/api/inference/v1`
for `ember-bot serve`. Requests are deterministic (temperature 0, a fixed seed) where the
endpoint honours it. Transport errors, 429 and 5xx are retried with backoff; whatever still
fails raises ExplainerError with one line.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from server.labelling.prompts import Messages

RETRIES = 3
BACKOFF_SECONDS = 1.0
SEED = 0


class ExplainerError(RuntimeError):
    """The explainer cannot be used (one line, for the CLI)."""


class Explainer:
    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        timeout: float = 120.0,
        concurrency: int = 8,
        retries: int = RETRIES,
    ) -> None:
        self.base_url = base_url.rstrip("/").removesuffix("/chat/completions")
        self.model = model or ""
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(headers=headers, timeout=timeout)
        self._slots = asyncio.Semaphore(concurrency)
        self._retries = retries

    async def __aenter__(self) -> Explainer:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self._client.aclose()

    async def connect(self) -> str:
        """Check the endpoint answers; pick its first listed model when none was named."""
        response = await self._request("GET", "/models", retries=0)  # down at the start: say so
        if self.model:
            return self.model
        try:
            self.model = str(response.json()["data"][0]["id"])
        except (ValueError, KeyError, IndexError, TypeError):
            raise ExplainerError(
                f"The explainer at {self.base_url} lists no models at /models; name one with "
                "--explainer-model."
            ) from None
        return self.model

    async def ask(self, messages: Messages, max_tokens: int) -> str:
        """The assistant's reply to `messages`."""
        body = {
            "model": self.model,
            "messages": messages,
            "temperature": 0,
            "seed": SEED,
            "max_completion_tokens": max_tokens,
            "stream": False,
        }
        async with self._slots:
            response = await self._request("POST", "/chat/completions", json=body)
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            content = None
        if not isinstance(content, str):
            raise ExplainerError(
                f"The explainer at {self.base_url} did not answer with an OpenAI chat completion "
                f"(got {_snippet(response.text)})."
            )
        return content

    async def _request(
        self, method: str, path: str, retries: int | None = None, **options: Any
    ) -> httpx.Response:
        url = f"{self.base_url}{path}"
        retries = self._retries if retries is None else retries
        problem = ""
        for attempt in range(retries + 1):
            if attempt:
                await asyncio.sleep(BACKOFF_SECONDS * 2 ** (attempt - 1))
            try:
                response = await self._client.request(method, url, **options)
            except httpx.TransportError as error:
                problem = f"not reachable ({type(error).__name__}: {error or 'no answer'})"
                continue
            if response.status_code == 429 or response.status_code >= 500:
                problem = f"failing (HTTP {response.status_code})"
                continue
            if response.status_code >= 400:
                raise ExplainerError(
                    f"The explainer at {url} refused the request: HTTP {response.status_code} "
                    f"{_snippet(response.text)} (check --explainer-model and the API key)."
                )
            return response
        raise ExplainerError(
            f"The explainer at {url} is {problem} ({retries + 1} tries); start it or point "
            "--explainer at a running one."
        )


def _snippet(text: str, limit: int = 120) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= limit else flat[:limit] + "…")
