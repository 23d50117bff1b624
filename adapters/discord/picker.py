"""The feature picker's buttons on Discord: Choose a feature, then a strength.

"Choose" (custom_id `ember:pick:<index>`) turns the picker into a row of strength buttons for
that feature (`ember:steer:<index>:<value>`); a strength runs /steer as the command would (the
same permission check and rate limit): the picker gives way to who steered how, and the outcome
is posted to the channel; a refusal is shown only to the clicker. Both buttons are dynamic
items, so a picker keeps working after the bot restarts.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import discord
from discord import ui

from adapters.discord.layouts import ACCENT, answered_layout, layout, section_text
from adapters.discord.permissions import actor_for, can_steer, session_key
from adapters.discord.render import NO_PINGS, render_reply
from adapters.discord.replies import Deferred
from bot.commands.parsing import coerce_options
from bot.commands.registry import CommandContext, Invocation
from bot.commands.replies import Reply
from bot.commands.runner import deliver, run_command
from bot.domain.types import FeatureRef

CHOOSE_ID = "ember:pick:{feature}"
CHOOSE_TEMPLATE = r"ember:pick:(?P<feature>\d+)"
STRENGTH_ID = "ember:steer:{feature}:{value:g}"
STRENGTH_TEMPLATE = r"ember:steer:(?P<feature>\d+):(?P<value>-?\d+(?:\.\d+)?)"
STRENGTHS = (-0.5, -0.3, 0.3, 0.5, 0.8)

OnChoose = Callable[[discord.Interaction, int], Awaitable[None]]
OnStrength = Callable[[discord.Interaction, int, float], Awaitable[None]]


class ChooseButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=CHOOSE_TEMPLATE):
    def __init__(self, feature: int) -> None:
        custom_id = CHOOSE_ID.format(feature=feature)
        super().__init__(
            discord.ui.Button(
                label="Choose", style=discord.ButtonStyle.primary, custom_id=custom_id
            )
        )
        self.feature = feature

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> ChooseButton:
        return cls(int(match["feature"]))

    @staticmethod
    def bound_to(on_choose: OnChoose) -> type[ChooseButton]:
        class BoundChooseButton(ChooseButton, template=CHOOSE_TEMPLATE):
            async def callback(self, interaction: discord.Interaction) -> None:
                await on_choose(interaction, self.feature)

        return BoundChooseButton


class StrengthButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=STRENGTH_TEMPLATE):
    def __init__(self, feature: int, value: float) -> None:
        custom_id = STRENGTH_ID.format(feature=feature, value=value)
        style = discord.ButtonStyle.success if value > 0 else discord.ButtonStyle.danger
        super().__init__(discord.ui.Button(label=f"{value:+.1f}", style=style, custom_id=custom_id))
        self.feature = feature
        self.value = value

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> StrengthButton:
        return cls(int(match["feature"]), float(match["value"]))

    @staticmethod
    def bound_to(on_strength: OnStrength) -> type[StrengthButton]:
        class BoundStrengthButton(StrengthButton, template=STRENGTH_TEMPLATE):
            async def callback(self, interaction: discord.Interaction) -> None:
                await on_strength(interaction, self.feature, self.value)

        return BoundStrengthButton


class FeaturePicker:
    def __init__(self, ctx: CommandContext, steer_roles: frozenset[str]) -> None:
        self._ctx = ctx
        self._steer_roles = steer_roles
        self._choose = ChooseButton.bound_to(self.on_choose)
        self._strength = StrengthButton.bound_to(self.on_strength)

    def install(self, client: discord.Client) -> None:
        client.add_dynamic_items(self._choose, self._strength)

    def choose_button(self, feature: FeatureRef) -> ui.Item[Any]:
        return self._choose(feature.index_in_sae)

    async def on_choose(self, interaction: discord.Interaction, feature: int) -> None:
        """The picker becomes this feature's strength buttons, for those who may steer here
        (the picker is shared by the channel: one viewer's click changes it for everyone)."""
        if not can_steer(interaction.user, interaction.permissions, self._steer_roles):
            await interaction.response.send_message(
                "You don't have permission to use /steer in this channel.",
                ephemeral=True,
                allowed_mentions=NO_PINGS,
            )
            return
        name = section_text(interaction.message, CHOOSE_ID.format(feature=feature))
        container: ui.Container[Any] = ui.Container(
            ui.TextDisplay(f"Steer {name or f'#{feature}'} how strongly?"),
            ui.ActionRow(*(self._strength(feature, value) for value in STRENGTHS)),
            accent_colour=ACCENT,
        )
        await interaction.response.edit_message(view=layout(container), allowed_mentions=NO_PINGS)

    async def on_strength(
        self, interaction: discord.Interaction, feature: int, value: float
    ) -> None:
        steer = self._ctx.registry.get(("steer",))
        assert steer is not None, "the registry always has /steer"
        actor = actor_for(interaction.user)
        invocation = Invocation(
            session_key(interaction.guild_id, interaction.channel_id),
            actor,
            coerce_options(steer, {"feature": f"#{feature}", "value": value}),
            can_steer=can_steer(interaction.user, interaction.permissions, self._steer_roles),
        )

        async def show(interaction: discord.Interaction, reply: Reply) -> None:
            if reply.is_error:
                await interaction.followup.send(
                    render_reply(reply), ephemeral=True, allowed_mentions=NO_PINGS
                )
                return
            line = f"-# ✅ {actor.display_name} chose {value:+.1f}"
            await interaction.edit_original_response(
                view=answered_layout(interaction.message, line), allowed_mentions=NO_PINGS
            )
            await interaction.followup.send(render_reply(reply), allowed_mentions=NO_PINGS)

        produce = partial(run_command, self._ctx, steer, invocation)
        await deliver(self._ctx, produce, Deferred(interaction, show, thinking=False))
