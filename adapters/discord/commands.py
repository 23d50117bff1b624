"""Slash commands generated from the command registry, and how one interaction runs them.

Each registry Command becomes an app command (a first word shared by several paths becomes a
group) whose options are typed from the Args; an "attachment" Arg is a file option whose text
(at most `max_command_chars` bytes, UTF-8) is the value. A callback validates the options and
refuses the unauthorised at once, else defers, runs the command through the core (which also
applies the rate limits) and sends the Reply as a follow-up (replies.py): public normally,
ephemeral for errors and private replies.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from typing import Any, TypeVar

import discord
from discord import app_commands

from adapters.discord.permissions import actor_for, can_steer, session_key
from adapters.discord.replies import Deferred, FollowUps, answer_now
from bot.commands.parsing import coerce_options
from bot.commands.registry import Arg, Command, CommandContext, Invocation, Permission
from bot.commands.render import shorten
from bot.commands.replies import error_reply
from bot.commands.runner import deliver, run_command
from bot.domain.errors import EmberBotError, UserInputError

log = logging.getLogger(__name__)

AUTOCOMPLETE_DEADLINE = 2.5  # seconds; Discord ignores suggestions that come after 3 s
MAX_CHOICES = 25
MAX_CHOICE_NAME = 100
MAX_DESCRIPTION = 100

T = TypeVar("T")
Choices = list[app_commands.Choice[str]]
Completer = Callable[[discord.Interaction, str], Coroutine[Any, Any, Choices]]


class SlashCommands:
    """Builds the app commands for a CommandTree and runs the core for each interaction."""

    def __init__(
        self, ctx: CommandContext, follow_ups: FollowUps, steer_roles: frozenset[str]
    ) -> None:
        self._ctx = ctx
        self._follow_ups = follow_ups
        self._steer_roles = steer_roles
        self._completers: dict[str, Completer] = {
            "feature": self.complete_feature,
            "variant": self.complete_variant,
        }

    def install(self, tree: app_commands.CommandTree) -> None:
        registry = self._ctx.registry
        for name in registry.top_level_names():
            if (command := registry.get((name,))) is not None:
                tree.add_command(self._app_command(command))
                continue
            group = app_commands.Group(
                name=name, description=_fit_description(registry.group_descriptions.get(name, name))
            )
            for child in registry.children(name):
                group.add_command(self._app_command(child))
            tree.add_command(group)

    # --- building ---------------------------------------------------------------------------

    def _app_command(self, command: Command) -> app_commands.Command[Any, ..., None]:
        callback = self._callback(command)
        app_commands.describe(**{a.name: _fit_description(a.description) for a in command.args})(
            callback
        )
        choices = {
            a.name: [app_commands.Choice(name=c, value=c) for c in a.choices]
            for a in command.args
            if a.kind == "choice"
        }
        if choices:
            app_commands.choices(**choices)(callback)
        completers = {
            a.name: self._completers[a.autocomplete] for a in command.args if a.autocomplete
        }
        if completers:
            app_commands.autocomplete(**completers)(callback)
        if command.permission is Permission.STEER and not self._steer_roles:
            # a hint for Discord's UI; the check that counts is in `run`
            app_commands.default_permissions(manage_messages=True)(callback)
        return app_commands.Command(
            name=command.path[-1],
            description=_fit_description(command.description),
            callback=callback,
        )

    def _callback(self, command: Command) -> Callable[..., Coroutine[Any, Any, None]]:
        async def callback(interaction: discord.Interaction, **options: Any) -> None:
            await self.run(interaction, command, options)

        # discord.py reads option names and types from the signature
        callback.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [
                inspect.Parameter(
                    "interaction",
                    inspect.Parameter.POSITIONAL_OR_KEYWORD,
                    annotation=discord.Interaction,
                ),
                *(_parameter(arg) for arg in command.args),
            ]
        )
        return callback

    # --- running ----------------------------------------------------------------------------

    async def run(
        self, interaction: discord.Interaction, command: Command, options: dict[str, Any]
    ) -> None:
        try:
            files = await read_attachments(options, self._ctx.settings.max_command_chars)
            args = coerce_options(command, options | files)
        except UserInputError as error:
            await answer_now(interaction, error_reply(error.user_message))
            return
        invocation = Invocation(
            session_key(interaction.guild_id, interaction.channel_id),
            actor_for(interaction.user),
            args,
            can_steer=can_steer(interaction.user, interaction.permissions, self._steer_roles),
        )
        if command.permission is Permission.STEER and not invocation.can_steer:
            # run_command words the refusal without running the handler: answer at once
            await answer_now(interaction, await run_command(self._ctx, command, invocation))
            return
        delivery = Deferred(interaction, self._follow_ups.send)
        await deliver(self._ctx, partial(run_command, self._ctx, command, invocation), delivery)

    # --- autocomplete -----------------------------------------------------------------------

    async def complete_feature(self, interaction: discord.Interaction, current: str) -> Choices:
        """Features matching what the user has typed: name = label, value = "#index"."""
        query = current.strip()
        if not query or "=" in query:  # nothing yet, or batch syntax the user types freely
            return []
        search = self._ctx.service.steering.search(query, MAX_CHOICES)
        features = await _within_deadline(search, "feature search")
        return [
            app_commands.Choice(
                name=shorten(f.label, MAX_CHOICE_NAME) or f"#{f.index_in_sae}",
                value=f"#{f.index_in_sae}",
            )
            for f in (features or [])[:MAX_CHOICES]
        ]

    async def complete_variant(self, interaction: discord.Interaction, current: str) -> Choices:
        session = session_key(interaction.guild_id, interaction.channel_id)
        listing = await _within_deadline(self._ctx.service.variants.list(session), "variant list")
        prefix = current.strip().lower()
        names = [v.name for v in listing.variants if v.name.startswith(prefix)] if listing else []
        return [app_commands.Choice(name=n, value=n) for n in names[:MAX_CHOICES]]


async def _within_deadline(work: Awaitable[T], what: str) -> T | None:
    """Suggestions are best effort: a slow or failing backend just means none."""
    try:
        return await asyncio.wait_for(work, AUTOCOMPLETE_DEADLINE)
    except (EmberBotError, TimeoutError) as error:
        log.info("autocomplete %s gave up: %s", what, error)
        return None


def _parameter(arg: Arg) -> inspect.Parameter:
    annotation = _annotation(arg)
    return inspect.Parameter(
        arg.name,
        inspect.Parameter.KEYWORD_ONLY,
        annotation=annotation if arg.required else annotation | None,
        default=inspect.Parameter.empty if arg.required else None,
    )


def _annotation(arg: Arg) -> Any:
    """The option type: text and choices are strings, numbers keep their min/max."""
    if arg.kind in ("text", "choice"):
        return str
    if arg.kind == "attachment":
        return discord.Attachment
    number_type = int if arg.kind == "integer" else float
    if arg.minimum is None and arg.maximum is None:
        return number_type
    low = None if arg.minimum is None else number_type(arg.minimum)
    high = None if arg.maximum is None else number_type(arg.maximum)
    return app_commands.Range[number_type, low, high]


async def read_attachments(options: dict[str, Any], limit: int) -> dict[str, str]:
    """The text of every attached file among `options`, by option name."""
    return {
        name: await attachment_text(value, limit)
        for name, value in options.items()
        if isinstance(value, discord.Attachment)
    }


async def attachment_text(file: discord.Attachment, limit: int) -> str:
    """A small file's text; bigger ones are refused before downloading."""
    name = shorten(file.filename, 60)
    if file.size > limit:
        raise UserInputError(
            f"{name} is {file.size:,} bytes; attach a file of at most {limit:,} bytes."
        )
    try:
        content = await file.read()
    except discord.HTTPException:
        raise UserInputError(f"Could not download {name}; try attaching it again.") from None
    return content.decode("utf-8", errors="replace")


def _fit_description(text: str) -> str:
    return shorten(text, MAX_DESCRIPTION) or "…"
