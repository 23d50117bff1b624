"""Slash commands and the feature picker: ack at once, run the command, answer via response_url.

Replies marked ephemeral (errors, pickers, help) are shown only to the caller; the rest, such as
steering confirmations, go to the channel.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_sdk.webhook.webhook_response import WebhookResponse

from adapters.slack_permissions import SteerPermissions
from adapters.slack_render import (
    FEATURE_SELECT,
    STRENGTH_BUTTON,
    SlackRenderer,
    plain_text,
    selected_feature,
)
from bot.commands import (
    CommandContext,
    Invocation,
    coerce_options,
    run_command,
    run_text_command,
)
from bot.errors import UserInputError
from bot.replies import Reply, error_reply
from bot.service import Actor, SessionKey

log = logging.getLogger(__name__)

PLATFORM = "slack"
STALE_PICKER = "That picker is out of date; run the command again."

Respond = Callable[..., Awaitable[WebhookResponse]]
Ack = Callable[..., Awaitable[Any]]


class SlackCommands:
    def __init__(
        self, ctx: CommandContext, permissions: SteerPermissions, renderer: SlackRenderer
    ) -> None:
        self._ctx = ctx
        self._permissions = permissions
        self._renderer = renderer

    def register(self, app: AsyncApp) -> None:
        for name in self._ctx.registry.top_level_names():
            app.command(self._renderer.command(name))(self.on_command)
        app.action(FEATURE_SELECT)(self.on_feature_selected)
        app.action(STRENGTH_BUTTON)(self.on_strength_chosen)

    async def on_command(self, ack: Ack, command: dict[str, Any], respond: Respond) -> None:
        await ack()
        name = command["command"].removeprefix(self._renderer.command(""))
        session = SessionKey(PLATFORM, command.get("team_id", ""), command["channel_id"])
        user_id = command["user_id"]
        actor = Actor(user_id, command.get("user_name") or user_id)
        text = plain_text(command.get("text", ""))  # Slack sends &, <, > as entities
        can_steer = await self._permissions.allows(user_id)
        line = f"/{name} {text}"
        reply = await run_text_command(self._ctx, line, session, actor, can_steer=can_steer)
        await self._send(respond, reply)

    async def on_feature_selected(self, ack: Ack) -> None:
        await ack()  # the choice stays in the message's state until a strength is clicked

    async def on_strength_chosen(
        self, ack: Ack, body: dict[str, Any], action: dict[str, Any], respond: Respond
    ) -> None:
        await ack()
        user = body["user"]
        team = (body.get("team") or {}).get("id") or user.get("team_id", "")
        session = SessionKey(PLATFORM, team, body["channel"]["id"])
        actor = Actor(user["id"], user.get("username") or user.get("name") or user["id"])
        reply = await self._apply_choice(body, action, session, actor)
        await self._send(respond, reply, replace_original=not reply.is_error)

    async def _apply_choice(
        self, body: dict[str, Any], action: dict[str, Any], session: SessionKey, actor: Actor
    ) -> Reply:
        steer = self._ctx.registry.get(("steer",))
        assert steer is not None, "the registry always has /steer"
        try:
            choice = json.loads(action["value"])
            feature = selected_feature(body.get("state") or {}) or int(choice["feature"])
            args = coerce_options(steer, {"feature": f"#{feature}", "value": choice["value"]})
        except (KeyError, TypeError, ValueError):
            return error_reply(STALE_PICKER)
        except UserInputError as error:
            return error_reply(error.user_message)
        can_steer = await self._permissions.allows(actor.user_id)
        return await run_command(self._ctx, steer, Invocation(session, actor, args, can_steer))

    async def _send(
        self, respond: Respond, reply: Reply, *, replace_original: bool = False
    ) -> None:
        """Answer through response_url; if Slack rejects the blocks, send plain text instead."""
        where: dict[str, Any] = (
            {"replace_original": True}
            if replace_original
            else {"response_type": "ephemeral" if reply.ephemeral else "in_channel"}
        )
        message = self._renderer.reply(reply)
        response = await respond(text=message.text, blocks=message.blocks, **where)
        if response.status_code != 200 and message.blocks:
            log.warning("Slack rejected a Block Kit reply (%s); sending text", response.body)
            response = await respond(text=self._renderer.fallback(reply).text, **where)
        if response.status_code != 200:
            log.warning("Slack rejected a reply: %s %s", response.status_code, response.body)
