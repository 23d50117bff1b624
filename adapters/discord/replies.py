"""Command replies on Discord: answered at once, or as the follow-up of a deferred interaction.

A follow-up carries the reply's text and file, or a Components v2 layout (layouts.py) for a
reply with more than text: a table or chart (/inspect), a question with Apply/Cancel buttons
(AutoSteer), a feature picker, or streamed columns (/compare) edited at most once a second
until every column is final.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any

import discord
from discord.utils import MISSING

from adapters.discord.chat import FAILURE_NOTE
from adapters.discord.layouts import ButtonFor, columns_layout, picker_layout, reply_layout
from adapters.discord.render import NO_PINGS, render_reply, reply_file
from adapters.streaming import Column, StreamingColumns
from bot.commands.replies import Confirmation, Reply, StreamedColumns
from bot.domain.errors import EmberBotError
from bot.usecases.chat_turn import ended_early_note

Clock = Callable[[], float]
ButtonsFor = Callable[[Confirmation], list[discord.ui.Item[Any]]]
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

    def __init__(
        self, buttons_for: ButtonsFor, choose_button: ButtonFor, clock: Clock = time.monotonic
    ) -> None:
        self._buttons_for = buttons_for
        self._choose_button = choose_button
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
            await self._stream_columns(send, reply.text, reply.columns)
            return
        view = self.layout(reply)
        if view is None:
            await send(render_reply(reply), file=reply_file(reply) or MISSING)
            return
        await send(view=view, file=reply_file(reply) or MISSING)

    def layout(self, reply: Reply) -> discord.ui.LayoutView | None:
        """The reply's Components v2 layout, or None for a reply that is just text (and file)."""
        if reply.feature_choices:
            return picker_layout(reply, self._choose_button)
        attachment = reply.attachment
        image = attachment.filename if attachment and is_image(attachment.content_type) else None
        question = reply.confirmation
        if reply.table is None and image is None and question is None:
            return None
        return reply_layout(
            reply,
            image=image,
            question=self._buttons_for(question) if question else (),
            prompt=question.prompt if question else "",
        )

    async def _stream_columns(self, send: Send, text: str, columns: StreamedColumns) -> None:
        stream = StreamingColumns(LayoutColumns(send, text), columns.titles, clock=self._clock)
        await stream.play(columns.run, column_note, FAILURE_NOTE)


def is_image(content_type: str) -> bool:
    return content_type.startswith("image/")


def column_note(error: EmberBotError) -> str:
    return f"⚠ {ended_early_note(error)}"


class LayoutColumns:
    """The columns in one follow-up's v2 layout, under the reply's text."""

    def __init__(self, send: Send, text: str) -> None:
        self._send = send
        self._text = text

    async def post(self, columns: Sequence[Column]) -> object:
        return await self._send(view=columns_layout(self._text, columns))

    async def edit(self, handle: object, columns: Sequence[Column]) -> None:
        assert isinstance(handle, discord.WebhookMessage)
        await handle.edit(view=columns_layout(self._text, columns), allowed_mentions=NO_PINGS)
