"""Slash commands, the feature picker and Apply/Cancel buttons: ack at once, run the command,
answer via response_url (replies.py).

Replies marked ephemeral (errors, pickers, help) are shown only to the caller; the rest, such as
steering confirmations, go to the channel. A click on Apply or Cancel is answered like a
command: refused privately for someone not allowed (the buttons stay for someone who is; an
expired proposal loses them), else the buttons give way to who answered how, and the outcome
is posted to the channel.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.permissions import SteerPermissions
from adapters.slack.render import (
    ACCEPT,
    CONFIRM_BUTTON,
    FEATURE_SELECT,
    STRENGTH_BUTTON,
    SlackMessage,
    SlackRenderer,
    escape,
    plain_text,
    selected_feature,
    without_buttons,
)
from adapters.slack.replies import ReplyTarget, Respond, SlackReplies, respond_message
from bot.commands.confirmations import EXPIRED, answer
from bot.commands.parsing import coerce_options
from bot.commands.registry import CommandContext, Invocation
from bot.commands.replies import Reply, error_reply
from bot.commands.runner import deliver, run_command, run_text_command
from bot.domain.errors import UserInputError
from bot.domain.types import Actor, SessionKey

log = logging.getLogger(__name__)

PLATFORM = "slack"
STALE_PICKER = "That picker is out of date; run the command again."

Ack = Callable[..., Awaitable[Any]]


class SlackCommands:
    def __init__(
        self,
        ctx: CommandContext,
        permissions: SteerPermissions,
        renderer: SlackRenderer,
        replies: SlackReplies,
    ) -> None:
        self._ctx = ctx
        self._permissions = permissions
        self._renderer = renderer
        self._replies = replies

    def register(self, app: AsyncApp) -> None:
        for name in self._ctx.registry.top_level_names():
            app.command(self._renderer.command(name))(self.on_command)
        app.action(FEATURE_SELECT)(self.on_feature_selected)
        app.action(STRENGTH_BUTTON)(self.on_strength_chosen)
        app.action(CONFIRM_BUTTON)(self.on_confirmation)

    async def on_command(
        self, ack: Ack, command: dict[str, Any], respond: Respond, client: AsyncWebClient
    ) -> None:
        await ack()
        name = command["command"].removeprefix(self._renderer.command(""))
        session = SessionKey(PLATFORM, command.get("team_id", ""), command["channel_id"])
        user_id = command["user_id"]
        actor = Actor(user_id, command.get("user_name") or user_id)
        text = plain_text(command.get("text", ""))  # Slack sends &, <, > as entities
        can_steer = await self._permissions.allows(user_id)
        line = f"/{name} {text}"
        reply = await run_text_command(self._ctx, line, session, actor, can_steer=can_steer)
        await self._replies.send(ReplyTarget(respond, client, command["channel_id"]), reply)

    async def on_feature_selected(self, ack: Ack) -> None:
        await ack()  # the choice stays in the message's state until a strength is clicked

    async def on_strength_chosen(
        self, ack: Ack, body: dict[str, Any], action: dict[str, Any], respond: Respond
    ) -> None:
        await ack()
        session, actor = clicked_by(body)
        reply = await self._apply_choice(body, action, session, actor)
        await self._replies.respond(respond, reply, replace_original=not reply.is_error)

    async def on_confirmation(
        self, ack: Ack, body: dict[str, Any], action: dict[str, Any], respond: Respond
    ) -> None:
        await ack()
        session, actor = clicked_by(body)
        can_steer = await self._permissions.allows(actor.user_id)
        invocation = Invocation(session, actor, {}, can_steer)
        accept = action["action_id"] == ACCEPT
        await deliver(
            self._ctx,
            partial(answer, self._ctx, action["value"], accept, invocation),
            ConfirmationAnswer(self, body, respond, answered_line(accept, actor.display_name)),
        )

    async def show_answer(
        self, body: dict[str, Any], respond: Respond, reply: Reply, answered: str
    ) -> None:
        if reply.is_error:
            await self._refuse(body, reply, respond)
            return
        await mark_answered(body, respond, answered)
        await self._replies.respond(respond, reply)  # to the channel, like a /steer

    async def _refuse(self, body: dict[str, Any], reply: Reply, respond: Respond) -> None:
        """Only the clicker sees why; a question nobody can answer any more loses its buttons."""
        await self._replies.respond(respond, reply)
        if reply.text == EXPIRED:
            await mark_answered(body, respond, "Expired")

    async def _apply_choice(
        self, body: dict[str, Any], action: dict[str, Any], session: SessionKey, actor: Actor
    ) -> Reply:
        steer = self._ctx.registry.get(("steer",))
        assert steer is not None, "the registry always has /steer"
        try:
            choice = json.loads(action["value"])
            selected = selected_feature(body.get("state") or {})
            feature = int(choice["feature"]) if selected is None else selected
            args = coerce_options(steer, {"feature": f"#{feature}", "value": choice["value"]})
        except (KeyError, TypeError, ValueError):
            return error_reply(STALE_PICKER)
        except UserInputError as error:
            return error_reply(error.user_message)
        can_steer = await self._permissions.allows(actor.user_id)
        return await run_command(self._ctx, steer, Invocation(session, actor, args, can_steer))


def answered_line(accept: bool, name: str) -> str:
    return f"{'✅ Applied' if accept else '✖️ Cancelled'} by {name}"


async def mark_answered(body: dict[str, Any], respond: Respond, line: str) -> None:
    """Replace the question with itself minus its buttons, and `line` under it. (Slack sends
    the blocks of a public message only; a private question becomes just the line.)"""
    question = without_buttons((body.get("message") or {}).get("blocks") or [])
    status = {"type": "context", "elements": [{"type": "mrkdwn", "text": escape(line)}]}
    await respond_message(
        respond, SlackMessage(escape(line), [*question, status]), {"replace_original": True}
    )


def clicked_by(body: dict[str, Any]) -> tuple[SessionKey, Actor]:
    """The channel and the user of a block_actions payload."""
    user = body["user"]
    team = (body.get("team") or {}).get("id") or user.get("team_id", "")
    actor = Actor(user["id"], user.get("username") or user.get("name") or user["id"])
    return SessionKey(PLATFORM, team, body["channel"]["id"]), actor


class ConfirmationAnswer:
    """Delivers the answer to an Apply/Cancel click (already acknowledged)."""

    def __init__(
        self, commands: SlackCommands, body: dict[str, Any], respond: Respond, answered: str
    ) -> None:
        self._commands = commands
        self._body = body
        self._respond = respond
        self._answered = answered

    async def begin(self) -> None:
        pass

    async def send(self, reply: Reply) -> None:
        await self._commands.show_answer(self._body, self._respond, reply, self._answered)
