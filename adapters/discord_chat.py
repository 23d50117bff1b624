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

from adapters.discord_access import actor_for, session_key
from adapters.discord_render import DISCORD_LIMITS, NO_PINGS
from adapters.streaming import StreamingMessage, ended_early_note
from bot.commands.handlers import steering_footer
from bot.commands.registry import CommandContext
from bot.domain.errors import UNEXPECTED_ERROR, UserInputError
from bot.ops.lifecycle import ShuttingDownError
from bot.usecases.ratelimit import queued_message
from bot.usecases.service import Actor, SessionKey

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


class ChatResponder:
    def __init__(self, ctx: CommandContext, clock: Clock = time.monotonic) -> None:
        self._ctx = ctx
        self._clock = clock

    async def respond(self, message: discord.Message, bot_id: int) -> None:
        session = session_key(message.guild.id if message.guild else None, message.channel.id)
        actor = actor_for(message.author)
        text = strip_mention(message.content, bot_id)
        sink = ReplySink(message)
        stream = StreamingMessage(sink, DISCORD_LIMITS, clock=self._clock)
        try:
            async with self._ctx.service.lifecycle.track():  # a shutdown waits for the final edit
                note, footer = await self._turn(message.channel, session, actor, text, sink, stream)
                await stream.finish(note, footer)
        except ShuttingDownError as error:
            await sink.post(error.user_message)

    async def _turn(
        self,
        channel: discord.abc.Messageable,
        session: SessionKey,
        actor: Actor,
        text: str,
        sink: ReplySink,
        stream: StreamingMessage,
    ) -> tuple[str, str]:
        """Stream one chat turn into `stream`; returns the final note and footer."""
        async with AsyncExitStack() as typing:
            await typing.enter_async_context(channel.typing())

            async def show(delta: str) -> None:
                await typing.aclose()  # the first token ends "typing"; later calls do nothing
                await stream.push(delta)

            async def queued(position: int) -> None:
                await sink.notice(queued_message(position))

            try:
                result = await self._ctx.service.chat(session, actor, text, show, queued)
            except UserInputError as error:  # bad input, rate limits: nothing was stored
                return error.user_message, ""
            except Exception:
                log.exception("chat turn failed in %s", session)
                return FAILURE_NOTE, ""
        note = f"⚠ {ended_early_note(result.error)}" if result.error else ""
        return note, f"-# {steering_footer(result.variant)}"
