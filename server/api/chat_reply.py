"""Replies to /chat/completions in the shape the goodfire SDK parses."""

import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from server.engine.generation import Finish, TextChunk

log = logging.getLogger("ember_bot.server")

# Stand-ins that occur nowhere else in a chunk, to find where its text and index go.
_TEXT_MARK = "\x00text\x00"
_INDEX_MARK = 987_654_321_012_345


class ChatReply:
    """Chat completion bodies: one JSON object, or server-sent events with one chunk each."""

    def __init__(self, model_id: str, fingerprint: str) -> None:
        self._head = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "created": int(time.time()),
            "model": model_id,
            "system_fingerprint": fingerprint,
        }

    async def collect(self, events: AsyncIterator[TextChunk | Finish]) -> dict[str, Any]:
        parts: list[str] = []
        finish: Finish | None = None
        async for event in events:
            if isinstance(event, TextChunk):
                parts.append(event.text)
            else:
                finish = event
        assert finish is not None, "a generation always ends with a Finish"
        message = {"role": "assistant", "content": "".join(parts)}
        return {
            **self._head,
            "object": "chat.completion",
            "gf_event_names": list(finish.events) or None,
            "choices": [{"index": 0, "message": message, "finish_reason": finish.reason}],
            "usage": {
                "prompt_tokens": finish.prompt_tokens,
                "completion_tokens": finish.completion_tokens,
                "total_tokens": finish.prompt_tokens + finish.completion_tokens,
            },
        }

    async def stream(
        self, events: AsyncGenerator[TextChunk | Finish, None]
    ) -> AsyncIterator[bytes]:
        """One `data:` event per write (the SDK's parser needs whole events), then [DONE].

        A text event is the pre-encoded template around the JSON of its text and index: a few
        microseconds of the GIL per token instead of a dict and a json.dumps of the whole chunk.
        """
        before_text, before_index, after_index = self._text_event_template()
        index = 0
        try:
            async for event in events:
                if isinstance(event, TextChunk):
                    text = json.dumps(event.text).replace("data: ", "data:\\u0020")
                    yield b"".join(
                        (before_text, text.encode(), before_index, b"%d" % index, after_index)
                    )
                else:
                    yield self._event(self._chunk(index, "", event.reason, list(event.events)))
                index += 1
        except Exception:
            log.exception("generation failed mid-stream")
            yield self._event({"error": {"message": "Generation failed on the server."}})
            return
        finally:
            await events.aclose()
        yield b"data: [DONE]\n\n"

    def _text_event_template(self) -> tuple[bytes, bytes, bytes]:
        """`_event(_chunk(index, text, None, None))` cut around its text and its index."""
        marked = self._event(self._chunk(_INDEX_MARK, _TEXT_MARK, None, None))
        before_text, rest = marked.split(json.dumps(_TEXT_MARK).encode())
        before_index, after_index = rest.split(b"%d" % _INDEX_MARK)
        return before_text, before_index, after_index

    def _chunk(
        self, index: int, text: str, reason: str | None, events: list[str] | None
    ) -> dict[str, Any]:
        choice = {
            "index": 0,
            "delta": {"role": "assistant", "content": text},
            "gf_token_index": index,
            "finish_reason": reason,
        }
        return {
            **self._head,
            "object": "chat.completion.chunk",
            "gf_event_names": events or None,
            "choices": [choice],
        }

    @staticmethod
    def _event(payload: dict[str, Any]) -> bytes:
        # ASCII-only JSON survives reads split inside a character; escaping the space of a
        # literal "data: " in the text keeps the SDK from splitting the event there.
        text = json.dumps(payload).replace("data: ", "data:\\u0020")
        return f"data: {text}\n\n".encode()
