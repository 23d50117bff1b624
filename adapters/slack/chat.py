"""Chat in Slack: mentions, DMs and listened channels, answered with a streamed message.

Where the workspace has Slack's streaming API, the reply streams natively into the thread of
the message answered (streams.py). Otherwise (or if Slack refuses the stream) a placeholder is
posted at once, then edited with chat.update at most once a second, rolling over into a new
message before Slack's ~4,000-byte update limit (measured after escaping); a workspace that
answered that it has no streaming API is not asked again.
Redelivered events are dropped by event_id, and a mention that also arrives as a plain
message event is answered once, by the message's channel and ts.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.context.async_context import AsyncBoltContext
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.render import escape, plain_text
from adapters.slack.streams import (
    STREAM_BUFFER,
    UNAVAILABLE,
    NativeStreamTurn,
    ThreadStatus,
)
from adapters.streaming import PlatformLimits, StreamingMessage, split_for_limit, utf8_length
from bot.commands.registry import CommandContext
from bot.domain.errors import UNEXPECTED_ERROR
from bot.domain.types import Actor, SessionKey
from bot.usecases.chat_turn import TurnOutcome, run_chat_turn
from bot.usecases.turn_ledger import ORPHAN_NOTE

log = logging.getLogger(__name__)

PLATFORM = "slack"
MESSAGE_BYTES = 3_500  # our rollover point; Slack rejects updates above about 4,000 bytes
TOO_LONG_NOTE = "\n… (cut: Slack found this message too long)"
FAILED_NOTE = f"⚠️ {UNEXPECTED_ERROR}"
# Bot output is plain text: no @name linking, no link previews.
NO_LINKING: dict[str, Any] = {"parse": "none", "link_names": False}


def escaped_bytes(text: str) -> int:
    return utf8_length(escape(text))


SLACK_LIMITS = PlatformLimits(max_length=MESSAGE_BYTES, edit_interval=1.0, measure=escaped_bytes)


class RecentKeys:
    """A bounded set of recently seen keys, oldest forgotten first."""

    def __init__(self, capacity: int = 4096) -> None:
        self._capacity = capacity
        self._keys: OrderedDict[str, None] = OrderedDict()

    def add(self, key: str) -> bool:
        """Remember `key`; True if it was not seen recently."""
        if key in self._keys:
            self._keys.move_to_end(key)
            return False
        self._keys[key] = None
        if len(self._keys) > self._capacity:
            self._keys.popitem(last=False)
        return True


class SlackMessageSink:
    """Posts and edits one channel's (or thread's) messages; every text is escaped."""

    def __init__(self, client: AsyncWebClient, channel: str, thread_ts: str | None) -> None:
        self._client = client
        self._channel = channel
        self._thread_ts = thread_ts

    async def post(self, text: str) -> object:
        response = await self._client.chat_postMessage(
            channel=self._channel,
            thread_ts=self._thread_ts,
            text=escape(text),
            unfurl_links=False,
            unfurl_media=False,
            **NO_LINKING,
        )
        return response["ts"]

    async def edit(self, handle: object, text: str) -> None:
        try:
            await self._update(str(handle), text)
        except SlackApiError as error:
            if error.response.get("error") != "msg_too_long":
                raise
            head, _ = split_for_limit(text, MESSAGE_BYTES // 2, escaped_bytes)
            await self._update(str(handle), head + TOO_LONG_NOTE)

    async def _update(self, ts: str, text: str) -> None:
        await self._client.chat_update(
            channel=self._channel, ts=ts, text=escape(text), **NO_LINKING
        )


class SlackTurn:
    """One chat turn in Slack: a placeholder at once, the reply streamed into it, then the
    note (if any) and the steering footer."""

    def __init__(self, stream: StreamingMessage) -> None:
        self._stream = stream

    async def begin(self) -> None:
        await self._stream.start()

    async def queued(self, position: int) -> None:
        pass  # the placeholder already shows that the bot is on it

    async def push(self, delta: str) -> None:
        await self._stream.push(delta)

    async def finish(self, outcome: TurnOutcome) -> None:
        note = f"⚠️ {outcome.note}" if outcome.note else ""
        footer = f"_{outcome.footer}_" if outcome.footer else ""
        await self._stream.finish(note, footer)


def is_from_a_person(event: dict[str, Any], bot_user_id: str | None) -> bool:
    """False for bots (ourselves included) and for edits, deletions and other subtypes."""
    return (
        "subtype" not in event
        and not event.get("bot_id")
        and bool(event.get("user"))
        and event.get("user") != bot_user_id
    )


async def note_cut_off(client: AsyncWebClient, place: dict[str, str]) -> None:
    """Tell the channel that a reply was cut off by a bot process that died (turn_ledger)."""
    await client.chat_postMessage(
        channel=place["channel"], thread_ts=place["thread_ts"], text=ORPHAN_NOTE, **NO_LINKING
    )


class SlackChat:
    def __init__(
        self,
        ctx: CommandContext,
        listen_channels: frozenset[str],
        *,
        native_streaming: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ctx = ctx
        self._listen_channels = listen_channels
        self._native_streaming = native_streaming
        self._clock = clock
        self._recent = RecentKeys()
        self._without_streaming: set[str] = set()  # teams whose Slack has no streaming API

    def register(self, app: AsyncApp) -> None:
        app.event("app_mention")(self.on_mention)
        app.event("message")(self.on_message)
        self._ctx.service.turns.on_orphan(PLATFORM, partial(note_cut_off, app.client))

    async def on_mention(
        self, body: dict[str, Any], event: dict[str, Any], context: AsyncBoltContext
    ) -> None:
        await self._answer(body, event, context)

    async def on_message(
        self, body: dict[str, Any], event: dict[str, Any], context: AsyncBoltContext
    ) -> None:
        if event.get("channel_type") == "im" or event.get("channel") in self._listen_channels:
            await self._answer(body, event, context)

    async def _answer(
        self, body: dict[str, Any], event: dict[str, Any], context: AsyncBoltContext
    ) -> None:
        if not is_from_a_person(event, context.bot_user_id) or not await self._first_delivery(body):
            return
        channel = event["channel"]
        session = SessionKey(PLATFORM, body.get("team_id") or event.get("team", ""), channel)
        actor = Actor(event["user"], event["user"])
        text = plain_text(event.get("text", ""), context.bot_user_id)
        # Where the reply goes, for a note if this process dies answering (several processes).
        place = {"channel": channel, "thread_ts": event.get("thread_ts") or event.get("ts", "")}
        try:
            async with self._ctx.service.turns.in_flight(PLATFORM, place):
                await self._reply(session, actor, text, event, context)
        except SlackApiError as error:
            log.warning("Slack refused a reply in %s: %s", channel, error.response.get("error"))

    async def _reply(
        self,
        session: SessionKey,
        actor: Actor,
        text: str,
        event: dict[str, Any],
        context: AsyncBoltContext,
    ) -> None:
        def updated_message(under_stream: bool) -> StreamingMessage:
            """chat.update streaming, where the reply would go (or under a started stream)."""
            thread = event.get("thread_ts") or (event.get("ts") if under_stream else None)
            sink = SlackMessageSink(context.client, event["channel"], thread)
            return StreamingMessage(sink, SLACK_LIMITS, clock=self._clock)

        service = self._ctx.service
        if not self._streams_natively(session, context):
            turn = SlackTurn(updated_message(False))
            await run_chat_turn(service, session, actor, text, turn)
            return
        assert context.say_stream is not None
        say_stream = context.say_stream
        native = NativeStreamTurn(
            lambda: say_stream(buffer_size=STREAM_BUFFER),
            updated_message,
            ThreadStatus(context.set_status),
            lambda: service.variants.active(session),
            lambda ts: context.client.chat_stopStream(channel=event["channel"], ts=ts),
            partial(self._stream_refused, session.workspace),
        )
        await run_chat_turn(service, session, actor, text, native)

    def _stream_refused(self, team: str, error: str) -> None:
        if error in UNAVAILABLE:  # not a passing problem: don't ask this workspace again
            self._without_streaming.add(team)

    def _streams_natively(self, session: SessionKey, context: AsyncBoltContext) -> bool:
        return (
            self._native_streaming
            and context.say_stream is not None
            and session.workspace not in self._without_streaming
        )

    async def _first_delivery(self, body: dict[str, Any]) -> bool:
        """False for a redelivery: in this process (event id, or a mention that also came as a
        message), or in any process sharing the database (the message's channel and ts)."""
        event = body["event"]
        new_event = self._recent.add(f"event:{body.get('event_id', '')}")
        message = f"message:{event['channel']}:{event.get('ts')}"
        admission = self._ctx.service.admission
        return (
            new_event
            and self._recent.add(message)
            and await admission.first_delivery(f"slack:{body.get('team_id', '')}:{message}")
        )
