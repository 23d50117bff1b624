"""Server-sent events: decoding a chat stream's body into its text deltas."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import NamedTuple

import httpx

from bot.domain.errors import BackendUnavailableError, GenerationAbortedError

logger = logging.getLogger(__name__)

_DRAIN_SECONDS = 0.5
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class SSEDecoder:
    """Incremental server-sent-events parser (WHATWG rules: only CR, LF and CRLF end a line).

    Feed it raw bytes as they arrive; it returns the `data` of every completed event. Handles
    events and multi-byte characters split across reads, several events in one read, CRLF, a
    CR/LF pair split across reads, and comment lines (`: keep-alive`).
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial_line = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        return self._lines(self._partial_line + self._decoder.decode(chunk))

    def close(self) -> list[str]:
        """Events still pending at the end of the stream (an unterminated last event counts)."""
        tail = self._partial_line + self._decoder.decode(b"", final=True)
        self._partial_line = ""
        return self._lines(tail + "\n\n")

    def _lines(self, text: str) -> list[str]:
        # A trailing CR may be the first half of a CRLF: keep it for the next read.
        held = "\r" if text.endswith("\r") else ""
        *lines, rest = _LINE_BREAK.split(text[: len(text) - len(held)])
        self._partial_line = rest + held
        events = []
        for line in lines:
            if not line:
                if self._data:
                    events.append("\n".join(self._data))
                    self._data = []
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                if name == "data":
                    self._data.append(value.removeprefix(" "))
        return events


class _Delta(NamedTuple):  # a tuple: built for every event, cheaper than a dataclass
    token_index: int | None
    text: str
    finished: bool
    events: list[str]


def _parse_chunk(data: str) -> list[_Delta]:
    try:
        chunk = json.loads(data)
        events = list(chunk.get("gf_event_names") or [])
        return [
            _Delta(
                choice.get("gf_token_index"),
                (choice.get("delta") or {}).get("content") or "",
                choice.get("finish_reason") is not None,
                events,
            )
            for choice in chunk["choices"]
        ]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise BackendUnavailableError("the reply stream was malformed") from None


async def _sse_data(body: AsyncIterator[bytes]) -> AsyncGenerator[str, None]:
    decoder = SSEDecoder()
    async for chunk in body:
        for data in decoder.feed(chunk):
            yield data
    for data in decoder.close():
        yield data


async def _drain(stream: AsyncIterator[str]) -> None:
    """Read what follows `[DONE]` (normally just the end of the body): only a fully read
    connection goes back to the pool, so stopping at `[DONE]` costs a new connection per reply.
    A server that lingers after `[DONE]` gets `_DRAIN_SECONDS`, then its connection is closed."""
    with contextlib.suppress(TimeoutError, httpx.TransportError):
        async with asyncio.timeout(_DRAIN_SECONDS):
            async for _ in stream:
                pass


async def stream_text(
    body: AsyncIterator[bytes], event_reasons: Mapping[str, str]
) -> AsyncIterator[str]:
    """Text deltas of a 200 SSE chat response's body, deduplicated by gf_token_index.

    `event_reasons` words the abort for the event names we asked for (unknown ones get a
    generic reason).
    """
    seen: set[int] = set()
    events: list[str] = []
    finished = False
    async with contextlib.aclosing(_sse_data(body)) as stream:
        async for data in stream:
            if data == "[DONE]":
                finished = True
                await _drain(stream)
                break
            for delta in _parse_chunk(data):
                events.extend(delta.events)
                finished = finished or delta.finished
                if delta.token_index in seen:
                    continue
                if delta.token_index is not None:
                    seen.add(delta.token_index)
                if delta.text:
                    yield delta.text
    if events:
        logger.info("Ember backend stopped generation on events %s", events)
        reasons = [event_reasons[name] for name in dict.fromkeys(events) if name in event_reasons]
        if reasons:
            raise GenerationAbortedError(" and ".join(reasons) + " fired")
        raise GenerationAbortedError()
    if not finished:
        raise BackendUnavailableError("the reply stream ended early")
