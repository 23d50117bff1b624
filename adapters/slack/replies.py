"""Sending a command's Reply on Slack.

Text, tables, pickers and questions go through the command's response_url (plain text again if
Slack rejects the blocks). Streamed columns (/compare) need a message the bot can edit, so they
are posted with chat.postMessage and updated with chat.update at most once a second; where the
bot is not a member of the channel it cannot post there, and the final columns come through the
response_url instead. Files are uploaded to the channel (files_upload_v2).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.webhook_response import WebhookResponse

from adapters.slack.chat import FAILED_NOTE, NO_LINKING
from adapters.slack.render import SlackMessage, SlackRenderer, escape
from adapters.streaming import Column, StreamingColumns
from bot.commands.replies import Attachment, Reply
from bot.domain.errors import EmberBotError
from bot.usecases.chat_turn import ended_early_note

log = logging.getLogger(__name__)

Respond = Callable[..., Awaitable[WebhookResponse]]
CANNOT_POST_HERE = ("not_in_channel", "channel_not_found")
INVITE_HINT = "Invite me to this channel (/invite @Ember) to see replies stream."


@dataclass(frozen=True)
class ReplyTarget:
    """Where a command was run: its response_url, and the channel for posts and uploads."""

    respond: Respond
    client: AsyncWebClient
    channel: str


class SlackReplies:
    def __init__(self, renderer: SlackRenderer, clock: Callable[[], float] = time.monotonic):
        self._renderer = renderer
        self._clock = clock

    async def send(self, target: ReplyTarget, reply: Reply) -> None:
        if reply.columns is not None:
            await self._stream_columns(target, reply)
            return
        await self.respond(target.respond, reply)
        if reply.attachment is not None and not reply.ephemeral:
            await self._upload(target, reply.attachment)

    async def respond(
        self, respond: Respond, reply: Reply, *, replace_original: bool = False
    ) -> None:
        """Answer through response_url; if Slack rejects the blocks, send plain text instead."""
        where: dict[str, Any] = (
            {"replace_original": True}
            if replace_original
            else {"response_type": "ephemeral" if reply.ephemeral else "in_channel"}
        )
        fallback = self._renderer.fallback(reply)
        await respond_message(respond, self._renderer.reply(reply), where, fallback.text)

    async def _stream_columns(self, target: ReplyTarget, reply: Reply) -> None:
        assert reply.columns is not None
        titles = reply.columns.titles
        sink = ChannelColumns(target.client, target.channel, self._renderer, reply.text)
        stream = StreamingColumns(sink, titles, clock=self._clock)
        try:
            await stream.start()
        except SlackApiError as error:
            if error.response.get("error") not in CANNOT_POST_HERE:
                raise
            final_only = FinalColumns(target.respond, self._renderer, reply.text)
            stream = StreamingColumns(final_only, titles, clock=self._clock)
        await stream.play(reply.columns.run, column_note, FAILED_NOTE)

    async def _upload(self, target: ReplyTarget, attachment: Attachment) -> None:
        try:
            await target.client.files_upload_v2(
                channel=target.channel,
                file=attachment.content,
                filename=attachment.filename,
                title=attachment.filename,
            )
        except SlackApiError as error:
            code = error.response.get("error")
            log.warning("Slack refused the upload of %s: %s", attachment.filename, code)
            text = (
                f"I couldn't attach {attachment.filename} here ({code}). "
                "Invite me to this channel (/invite @Ember) and try again."
            )
            await target.respond(text=escape(text), response_type="ephemeral")


async def respond_message(
    respond: Respond, message: SlackMessage, where: dict[str, Any], fallback_text: str = ""
) -> None:
    """Send `message` through response_url; if Slack rejects its blocks, send text only."""
    response = await respond(text=message.text, blocks=message.blocks, **where)
    if response.status_code != 200 and message.blocks:
        log.warning("Slack rejected a Block Kit reply (%s); sending text", response.body)
        response = await respond(text=fallback_text or message.text, **where)
    if response.status_code != 200:
        log.warning("Slack rejected a reply: %s %s", response.status_code, response.body)


def column_note(error: EmberBotError) -> str:
    return f"⚠️ {ended_early_note(error)}"


class ChannelColumns:
    """The columns as one channel message, posted then updated."""

    def __init__(
        self, client: AsyncWebClient, channel: str, renderer: SlackRenderer, intro: str
    ) -> None:
        self._client = client
        self._channel = channel
        self._renderer = renderer
        self._intro = intro

    async def post(self, columns: Sequence[Column]) -> object:
        message = self._renderer.columns(self._intro, columns)
        response = await self._client.chat_postMessage(
            channel=self._channel,
            text=message.text,
            blocks=message.blocks,
            unfurl_links=False,
            unfurl_media=False,
            **NO_LINKING,
        )
        return response["ts"]

    async def edit(self, handle: object, columns: Sequence[Column]) -> None:
        message = self._renderer.columns(self._intro, columns)
        await self._client.chat_update(
            channel=self._channel, ts=str(handle), text=message.text, blocks=message.blocks
        )


class FinalColumns:
    """Where the bot cannot post: nothing while streaming, the final columns via response_url."""

    def __init__(self, respond: Respond, renderer: SlackRenderer, intro: str) -> None:
        self._respond = respond
        self._renderer = renderer
        self._intro = intro

    async def post(self, columns: Sequence[Column]) -> object:
        return None

    async def edit(self, handle: object, columns: Sequence[Column]) -> None:
        if any(column.writing for column in columns):
            return
        message = self._renderer.columns(self._intro, columns)
        hint = {"type": "context", "elements": [{"type": "mrkdwn", "text": escape(INVITE_HINT)}]}
        blocks = [*(message.blocks or []), hint]
        await respond_message(
            self._respond, SlackMessage(message.text, blocks), {"response_type": "in_channel"}
        )
