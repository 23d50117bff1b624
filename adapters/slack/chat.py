"""Chat in Slack: mentions, DMs and listened channels, answered with a streamed message.

A placeholder is posted at once, then edited with chat.update at most once a second, rolling
over into a new message before Slack's ~4,000-byte update limit (measured after escaping).
Redelivered events are dropped by event_id, and a mention that also arrives as a plain
message event is answered once, by the message's channel and ts.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.context.async_context import AsyncBoltContext
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.render import escape, plain_text
from adapters.streaming import PlatformLimits, StreamingMessage, split_for_limit, utf8_length
from bot.commands.registry import CommandContext
from bot.domain.errors import UNEXPECTED_ERROR
from bot.domain.types import Actor, SessionKey
from bot.usecases.chat_turn import TurnOutcome, run_chat_turn

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


class SlackChat:
    def __init__(
        self,
        ctx: CommandContext,
        listen_channels: frozenset[str],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ctx = ctx
        self._listen_channels = listen_channels
        self._clock = clock
        self._recent = RecentKeys()

    def register(self, app: AsyncApp) -> None:
        app.event("app_mention")(self.on_mention)
        app.event("message")(self.on_message)

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
        if not is_from_a_person(event, context.bot_user_id) or not self._first_delivery(body):
            return
        channel = event["channel"]
        session = SessionKey(PLATFORM, body.get("team_id") or event.get("team", ""), channel)
        actor = Actor(event["user"], event["user"])
        text = plain_text(event.get("text", ""), context.bot_user_id)
        sink = SlackMessageSink(context.client, channel, event.get("thread_ts"))
        try:
            await self._reply(session, actor, text, sink)
        except SlackApiError as error:
            log.warning("Slack refused a reply in %s: %s", channel, error.response.get("error"))

    async def _reply(
        self, session: SessionKey, actor: Actor, text: str, sink: SlackMessageSink
    ) -> None:
        stream = StreamingMessage(sink, SLACK_LIMITS, clock=self._clock)
        await run_chat_turn(self._ctx.service, session, actor, text, SlackTurn(stream))

    def _first_delivery(self, body: dict[str, Any]) -> bool:
        event = body["event"]
        new_event = self._recent.add(f"event:{body.get('event_id', '')}")
        return new_event and self._recent.add(f"message:{event['channel']}:{event.get('ts')}")
