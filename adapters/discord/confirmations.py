"""Apply / Cancel buttons for a Reply's Confirmation, and what a click on one does.

Each button's custom_id carries the confirmation's token ("ember:confirm:accept:<token>"), and
a DynamicItem registered on the client routes clicks by that pattern: the buttons keep working
after the bot reconnects or restarts, on messages this process never sent. The pending proposal
lives in the core, which answers "expired" if it no longer knows the token.

A click is answered like a command: the clicker's permission is computed the same way, and a
refusal is shown only to them (the buttons stay for someone allowed; an expired proposal loses
them). An answer replaces the buttons with who answered how, and the outcome is posted to the
channel like a /steer.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import discord

from adapters.discord.layouts import answered_layout
from adapters.discord.permissions import actor_for, can_steer, session_key
from adapters.discord.render import NO_PINGS, render_reply
from adapters.discord.replies import Deferred
from bot.commands.confirmations import EXPIRED, answer
from bot.commands.registry import CommandContext, Invocation
from bot.commands.render import shorten
from bot.commands.replies import Confirmation, Reply
from bot.commands.runner import deliver

CUSTOM_ID = "ember:confirm:{choice}:{token}"
TEMPLATE = r"ember:confirm:(?P<choice>accept|reject):(?P<token>[^:]+)"
MAX_CUSTOM_ID = 100
MAX_LABEL = 80

OnClick = Callable[[discord.Interaction, str, bool], Awaitable[None]]


class ConfirmButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=TEMPLATE):
    """Apply or Cancel for one token; `bound_to` makes the class whose clicks do something."""

    def __init__(self, token: str, accept: bool, label: str) -> None:
        custom_id = CUSTOM_ID.format(choice="accept" if accept else "reject", token=token)
        if len(custom_id) > MAX_CUSTOM_ID:
            raise ValueError(f"confirmation token too long for a custom_id: {token!r}")
        style = discord.ButtonStyle.success if accept else discord.ButtonStyle.secondary
        label = shorten(label, MAX_LABEL) or ("Apply" if accept else "Cancel")
        super().__init__(discord.ui.Button(label=label, style=style, custom_id=custom_id))
        self.token = token
        self.accept = accept

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> ConfirmButton:
        label = getattr(item, "label", None) or ""
        return cls(match["token"], match["choice"] == "accept", label)

    @staticmethod
    def bound_to(on_click: OnClick) -> type[ConfirmButton]:
        """A subclass whose clicks call `on_click(interaction, token, accept)`."""

        class BoundConfirmButton(ConfirmButton, template=TEMPLATE):
            async def callback(self, interaction: discord.Interaction) -> None:
                await on_click(interaction, self.token, self.accept)

        return BoundConfirmButton


class ConfirmationButtons:
    def __init__(self, ctx: CommandContext, steer_roles: frozenset[str]) -> None:
        self._ctx = ctx
        self._steer_roles = steer_roles
        self._button = ConfirmButton.bound_to(self.on_click)

    def install(self, client: discord.Client) -> None:
        """Route clicks on any of our buttons, including those sent before a restart."""
        client.add_dynamic_items(self._button)

    def buttons(self, confirmation: Confirmation) -> list[discord.ui.Item[Any]]:
        """Apply and Cancel, for the question's action row."""
        return [
            self._button(confirmation.token, True, confirmation.accept_label),
            self._button(confirmation.token, False, confirmation.reject_label),
        ]

    async def on_click(self, interaction: discord.Interaction, token: str, accept: bool) -> None:
        actor = actor_for(interaction.user)
        invocation = Invocation(
            session_key(interaction.guild_id, interaction.channel_id),
            actor,
            {},
            can_steer=can_steer(interaction.user, interaction.permissions, self._steer_roles),
        )

        async def show(interaction: discord.Interaction, reply: Reply) -> None:
            if reply.is_error:
                await refuse(interaction, reply)
                return
            await mark_answered(interaction, answered_line(accept, actor.display_name))
            await interaction.followup.send(render_reply(reply), allowed_mentions=NO_PINGS)

        produce = partial(answer, self._ctx, token, accept, invocation)
        # acknowledged at once; the question's message is edited next
        await deliver(self._ctx, produce, Deferred(interaction, show, thinking=False))


def answered_line(accept: bool, name: str) -> str:
    return f"-# {'✅ Applied' if accept else '✖️ Cancelled'} by {name}"


async def refuse(interaction: discord.Interaction, reply: Reply) -> None:
    """Only the clicker sees why; a question nobody can answer any more loses its buttons."""
    await interaction.followup.send(render_reply(reply), ephemeral=True, allowed_mentions=NO_PINGS)
    if reply.text == EXPIRED:
        await mark_answered(interaction, "-# Expired")


async def mark_answered(interaction: discord.Interaction, line: str) -> None:
    """Remove the question's buttons and add `line` under it (the question is a v2 layout)."""
    await interaction.edit_original_response(
        view=answered_layout(interaction.message, line), allowed_mentions=NO_PINGS
    )
