"""A chat reply streamed with Slack's native streaming API, in the thread of the message answered.

slack_sdk's chat stream (Bolt's `say_stream`) buffers the text: chat.startStream opens the reply
with the first STREAM_BUFFER characters, chat.appendStream adds each next buffer-full and
chat.stopStream the rest, the note, the steering footer and 👍/👎 feedback buttons; so the number
of calls follows the length of the reply, not its tokens. While the reply is prepared the
thread's status says what the bot does ("is thinking…", "is steering pirate speech +0.8…"),
cleared at the end.

If Slack refuses the stream (a workspace or channel without the API, a stream it ended early,
a piece too long), the reply carries on as a chat.update stream (chat.py) from the first text
Slack did not take, so no token is lost: under the stream in its thread if it had started, else
where a chat.update reply goes anyway.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from slack_bolt.context.set_status.async_set_status import AsyncSetStatus
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_chat_stream import AsyncChatStream

from adapters.slack.render import escape, feedback_block
from adapters.streaming import StreamingMessage
from bot.domain.summary import edits_summary
from bot.domain.types import VariantState
from bot.usecases.chat_turn import TurnOutcome
from bot.usecases.ratelimit import queued_message

log = logging.getLogger(__name__)

STREAM_BUFFER = 256  # characters (escaped) per chat.startStream / appendStream call
# Slack's answers that mean the workspace or channel has no streaming, not a passing problem.
UNAVAILABLE = frozenset(
    {
        "unknown_method",
        "not_allowed_token_type",
        "feature_not_enabled",
        "method_not_supported_for_channel_type",
        "missing_scope",
        "not_allowed",
    }
)
THINKING = "is thinking…"
CLOSED = "message_not_in_streaming_state"  # Slack ended the stream itself (after ~5 minutes)

OpenStream = Callable[[], Awaitable[AsyncChatStream]]
FallbackFor = Callable[[bool], StreamingMessage]  # True: under the started stream


def status_for(variant: VariantState) -> tuple[str, list[str]]:
    """The thread status while a reply is prepared, and Slack's rotating loading messages."""
    if not variant.edits:
        return THINKING, ["Thinking…"]
    steering = edits_summary(variant)
    return f"is steering {steering}…", ["Thinking…", f"Steering {steering}…"]


class ThreadStatus:
    """assistant.threads.setStatus for one thread, best effort: a refusal is only logged."""

    def __init__(self, set_status: AsyncSetStatus | None) -> None:
        self._set_status = set_status
        self.shown = False

    async def show(self, status: str, loading_messages: list[str] | None = None) -> None:
        if await self._call(status, loading_messages):
            self.shown = True

    async def clear(self) -> None:
        if self.shown and await self._call(""):
            self.shown = False

    async def _call(self, status: str, loading_messages: list[str] | None = None) -> bool:
        if self._set_status is None:
            return False
        try:
            await self._set_status(status=status, loading_messages=loading_messages)
        except SlackApiError as error:
            log.info("Slack refused the thread status: %s", error.response.get("error"))
            return False
        return True


class NativeStreamTurn:
    """One chat turn (a TurnSink) streamed with chat.startStream, falling back to chat.update."""

    def __init__(
        self,
        open_stream: OpenStream,
        fallback_for: FallbackFor,
        status: ThreadStatus,
        variant_of: Callable[[], Awaitable[VariantState]],
        close_stream: Callable[[str], Awaitable[object]],
        on_refusal: Callable[[str], None] = lambda code: None,
    ) -> None:
        self._open_stream = open_stream
        self._close_stream = close_stream
        self._on_refusal = on_refusal
        self._fallback_for = fallback_for
        self._status = status
        self._variant_of = variant_of
        self._stream: AsyncChatStream | None = None
        self._fallback: StreamingMessage | None = None
        self._variant: VariantState | None = None
        self._unsent = ""  # text Slack has not taken yet (the SDK's buffer, unescaped)

    async def begin(self) -> None:
        self._variant = await self._variant_of()
        await self._status.show(*status_for(self._variant))

    async def queued(self, position: int) -> None:
        await self._status.show(queued_message(position))

    async def push(self, delta: str) -> None:
        if self._fallback is not None:
            await self._fallback.push(delta)
            return
        self._unsent += delta
        try:
            stream = await self._started()
            if await stream.append(markdown_text=escape(delta)) is not None:
                self._unsent = ""  # the buffer went out
        except SlackApiError as error:
            await self._fall_back(error)

    async def finish(self, outcome: TurnOutcome) -> None:
        note = f"⚠️ {outcome.note}" if outcome.note else ""
        footer = f"_{outcome.footer}_" if outcome.footer else ""
        try:
            if self._fallback is None:
                try:
                    await self._stop(outcome, note, footer)
                    return
                except SlackApiError as error:
                    await self._fall_back(error)
            assert self._fallback is not None
            await self._fallback.finish(note, footer)
        finally:
            await self._status.clear()

    async def _started(self) -> AsyncChatStream:
        if self._stream is None:
            self._stream = await self._open_stream()
        return self._stream

    async def _stop(self, outcome: TurnOutcome, note: str, footer: str) -> None:
        """The last text (the note and footer under the reply) and, under a reply the model
        made, the feedback buttons."""
        stream = await self._started()
        tail = escape("\n".join(part for part in (note, footer) if part))
        has_text = stream.ts is not None or bool(self._unsent)
        text = (f"\n\n{tail}" if tail else "") if has_text else (tail or "(no reply)")
        blocks = None
        if outcome.kind in ("answered", "cut_short") and self._variant is not None:
            blocks = [feedback_block(self._variant)]
        await stream.stop(markdown_text=text, blocks=blocks)
        self._unsent = ""

    async def _fall_back(self, error: SlackApiError) -> None:
        refusal = str(error.response.get("error") or "")
        log.info("Slack refused the reply stream (%s): continuing with chat.update", refusal)
        self._on_refusal(refusal)
        started = self._stream.ts if self._stream is not None else None
        if started and refusal != CLOSED:
            await self._stop_quietly(started)  # Slack keeps it open: end what it shows
        self._fallback = self._fallback_for(started is not None)
        await self._fallback.start()
        if self._unsent:
            await self._fallback.push(self._unsent)
        self._unsent = ""

    async def _stop_quietly(self, ts: str) -> None:
        try:
            await self._close_stream(ts)
        except SlackApiError as error:
            log.info("Slack refused to stop the stream: %s", error.response.get("error"))
