"""Chat on Discord: which messages the bot answers, and the streamed reply to one of them.

The bot answers DMs, messages that mention it, and messages with text in the listen channels.
While it waits for the first token the channel shows "typing" (and "Queued, position N." if
the backend is busy); then the reply streams into a message edited at most once a second
(adapters/streaming.py), rolling over before 2,000 characters, and always ends final: the
full text, a note if something failed or refused, and the variant footer.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from contextlib import AsyncExitStack

import discord

from adapters.discord.permissions import actor_for, session_key
from adapters.discord.render import DISCORD_LIMITS, NO_PINGS
from adapters.streaming import StreamingMessage
from bot.commands.registry import CommandContext
from bot.domain.errors import UNEXPECTED_ERROR
from bot.usecases.chat_turn import TurnOutcome, run_chat_turn
from bot.usecases.ratelimit import queued_message

log = logging.getLogger(__name__)

Clock = Callable[[], float]
CHAT_MESSAGE_TYPES = (discord.MessageType.default, discord.MessageType.reply)
FAILURE_NOTE = f"⚠ {UNEXPECTED_ERROR}"


def is_addressed_to_bot(
    message: discord.Message, bot_id: int, listen_channels: frozenset[int]
) -> bool:
    """A human's message in a DM, mentioning the bot, or with text in a listen channel."""
    if message.author.bot or message.webhook_id or message.type not in CHAT_MESSAGE_TYPES:
        return False
    if message.guild is None or any(user.id == bot_id for user in message.mentions):
        return True
    return message.channel.id in listen_channels and bool(message.content.strip())


def strip_mention(text: str, bot_id: int) -> str:
    return re.sub(rf"<@!?{bot_id}>", " ", text).strip()


class ReplySink:
    """Posts the first message as a reply to the user's, later ones (rollovers) after it."""

    def __init__(self, source: discord.Message) -> None:
        self._source = source
        self._replied = False
        self._notice: discord.Message | None = None

    async def notice(self, text: str) -> None:
        """Show `text` in the first message; the reply's first post replaces it."""
        self._notice = await self.post(text)

    async def post(self, text: str) -> discord.Message:
        if self._notice is not None:
            message, self._notice = self._notice, None
            await self.edit(message, text)
            return message
        channel = self._source.channel
        if self._replied:
            return await channel.send(text, allowed_mentions=NO_PINGS)
        self._replied = True
        reference = self._source.to_reference(fail_if_not_exists=False)
        return await channel.send(
            text, reference=reference, mention_author=False, allowed_mentions=NO_PINGS
        )

    async def edit(self, handle: object, text: str) -> None:
        assert isinstance(handle, discord.Message)
        await handle.edit(content=text, allowed_mentions=NO_PINGS)


class DiscordTurn:
    """One chat turn in a Discord channel: "typing" until the first token, then the reply
    streamed into messages, ending with the note (if any) and the steering footer."""

    def __init__(
        self, channel: discord.abc.Messageable, sink: ReplySink, stream: StreamingMessage
    ) -> None:
        self._channel = channel
        self._sink = sink
        self._stream = stream
        self._typing = AsyncExitStack()

    async def begin(self) -> None:
        await self._typing.enter_async_context(self._channel.typing())

    async def queued(self, position: int) -> None:
        await self._sink.notice(queued_message(position))

    async def push(self, delta: str) -> None:
        await self._typing.aclose()  # the first token ends "typing"; later calls do nothing
        await self._stream.push(delta)

    async def finish(self, outcome: TurnOutcome) -> None:
        await self._typing.aclose()
        note = (
            outcome.note if outcome.kind == "refused" or not outcome.note else f"⚠ {outcome.note}"
        )
        footer = f"-# {outcome.footer}" if outcome.footer else ""
        await self._stream.finish(note, footer)


class ChatResponder:
    def __init__(self, ctx: CommandContext, clock: Clock = time.monotonic) -> None:
        self._ctx = ctx
        self._clock = clock

    async def respond(self, message: discord.Message, bot_id: int) -> None:
        session = session_key(message.guild.id if message.guild else None, message.channel.id)
        sink = ReplySink(message)
        stream = StreamingMessage(sink, DISCORD_LIMITS, clock=self._clock)
        turn = DiscordTurn(message.channel, sink, stream)
        text = strip_mention(message.content, bot_id)
        await run_chat_turn(self._ctx.service, session, actor_for(message.author), text, turn)
