"""Command replies on Discord: answered at once, or as the follow-up of a deferred interaction.

A follow-up carries the reply's text and file, Apply/Cancel buttons for a Confirmation, or, for
streamed columns (/compare), one embed per column under the text, edited at most once a second
until every column is final. Embeds stack rather than sit side by side, but they hold about
2,900 characters each where inline fields hold 1,024; colours and titles tell them apart.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

import discord
from discord.utils import MISSING

from adapters.discord.chat import FAILURE_NOTE
from adapters.discord.render import NO_PINGS, column_embeds, render_reply, reply_file, with_prompt
from adapters.streaming import Column, StreamingColumns
from bot.commands.replies import Confirmation, Reply, StreamedColumns
from bot.domain.errors import EmberBotError
from bot.usecases.chat_turn import ended_early_note

Clock = Callable[[], float]
ViewFor = Callable[[Confirmation], discord.ui.View]
Send = Callable[..., Awaitable[Any]]


async def answer_now(interaction: discord.Interaction, reply: Reply) -> None:
    """Answer an interaction that was not deferred, privately (refusals, bad options)."""
    await interaction.response.send_message(
        render_reply(reply), ephemeral=True, allowed_mentions=NO_PINGS
    )


class Deferred:
    """Delivers one reply to an interaction: deferred at once, then `show` sends the reply as
    its follow-up; if it was refused before deferring, the refusal is answered privately."""

    def __init__(
        self,
        interaction: discord.Interaction,
        show: Callable[[discord.Interaction, Reply], Awaitable[None]],
        *,
        thinking: bool = True,
    ) -> None:
        self._interaction = interaction
        self._show = show
        self._thinking = thinking
        self._deferred = False

    async def begin(self) -> None:
        await self._interaction.response.defer(thinking=self._thinking)
        self._deferred = True

    async def send(self, reply: Reply) -> None:
        if self._deferred:
            await self._show(self._interaction, reply)
        else:
            await answer_now(self._interaction, reply)


class FollowUps:
    """Replaces a deferred interaction's "thinking…" with the reply."""

    def __init__(self, view_for: ViewFor, clock: Clock = time.monotonic) -> None:
        self._view_for = view_for
        self._clock = clock

    async def send(self, interaction: discord.Interaction, reply: Reply) -> None:
        """Private replies go only to the caller: the deferred placeholder is public, so it is
        deleted first."""
        private = reply.ephemeral or reply.is_error
        if private:
            await interaction.delete_original_response()
        send = partial(
            interaction.followup.send, ephemeral=private, allowed_mentions=NO_PINGS, wait=True
        )
        if reply.columns is not None:
            await self._stream_columns(send, render_reply(reply), reply.columns)
            return
        question = reply.confirmation
        await send(
            with_prompt(reply, question.prompt) if question else render_reply(reply),
            file=reply_file(reply) or MISSING,
            view=self._view_for(question) if question else MISSING,
        )

    async def _stream_columns(self, send: Send, text: str, columns: StreamedColumns) -> None:
        stream = StreamingColumns(EmbedColumns(send, text), columns.titles, clock=self._clock)
        await stream.play(columns.run, column_note, FAILURE_NOTE)


def column_note(error: EmberBotError) -> str:
    return f"⚠ {ended_early_note(error)}"


class EmbedColumns:
    """The columns as embeds of one follow-up message, under the reply's text."""

    def __init__(self, send: Send, text: str) -> None:
        self._send = send
        self._text = text

    async def post(self, columns: Sequence[Column]) -> object:
        return await self._send(self._text, embeds=column_embeds(columns))

    async def edit(self, handle: object, columns: Sequence[Column]) -> None:
        assert isinstance(handle, discord.WebhookMessage)
        await handle.edit(embeds=column_embeds(columns), allowed_mentions=NO_PINGS)
