"""The Discord bot: slash commands from the registry, streamed chat, no pings, and its CLI.

    ember-bot discord                      run the bot
    ember-bot discord sync [--guild ID]    register the slash commands (globally, or in one guild)
    ember-bot discord invite-url           print the link that adds the bot to a server

Commands are never synced on connect: `sync` does it on purpose, and guilds listed in
DISCORD_DEV_GUILD_IDS are synced once at start-up (guild commands update instantly).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from functools import partial
from typing import Any

import discord
from discord import app_commands
from discord.http import Route

from adapters.discord.chat import ChatResponder, Clock, is_addressed_to_bot
from adapters.discord.commands import SlashCommands
from adapters.discord.confirmations import ConfirmationButtons
from adapters.discord.render import NO_PINGS
from adapters.discord.replies import FollowUps
from adapters.discord.settings import DiscordSettings
from bot.commands.registry import CommandContext
from bot.settings import NO_BACKEND_HELP, Settings, load_or_report, load_settings_or_report

log = logging.getLogger(__name__)

SCOPES = ("bot", "applications.commands")
# what the bot does in channels; command replies are interaction webhooks and need none
PERMISSIONS = discord.Permissions(
    view_channel=True,
    send_messages=True,
    send_messages_in_threads=True,
    read_message_history=True,  # to post its reply as a reply to the user's message
)
NO_TOKEN_HELP = (
    "DISCORD_BOT_TOKEN is not set. Create an application at "
    "https://discord.com/developers/applications, add a bot, and put its token in .env."
)
BAD_TOKEN_HELP = "Discord rejected DISCORD_BOT_TOKEN. Reset the token in the Developer Portal."


def bot_intents(settings: DiscordSettings) -> discord.Intents:
    """Guild and DM messages; mentions and DMs carry their text without the privileged
    Message Content intent, which only listen channels need."""
    intents = discord.Intents.none()
    intents.guilds = intents.guild_messages = intents.dm_messages = True
    intents.message_content = bool(settings.listen_channels)
    return intents


class EmberDiscordBot(discord.Client):
    def __init__(
        self,
        ctx: CommandContext,
        settings: DiscordSettings,
        *,
        clock: Clock = time.monotonic,
        **options: Any,
    ) -> None:
        super().__init__(
            intents=bot_intents(settings), allowed_mentions=NO_PINGS, max_messages=None, **options
        )
        self.tree = app_commands.CommandTree(self)
        buttons = ConfirmationButtons(ctx, settings.steer_role_set)
        buttons.install(self)
        follow_ups = FollowUps(buttons.view, clock)
        SlashCommands(ctx, follow_ups, settings.steer_role_set).install(self.tree)
        self._chat = ChatResponder(ctx, clock)
        self._listen_channels = settings.listen_channels
        self._dev_guilds = settings.dev_guilds

    async def on_message(self, message: discord.Message) -> None:
        if self.user and is_addressed_to_bot(message, self.user.id, self._listen_channels):
            await self._chat.respond(message, self.user.id)

    async def start_up(self, token: str) -> None:
        """Log in over REST and sync the dev guilds' commands; `connect()` then opens the
        gateway. Nothing syncs on (re)connect."""
        await self.login(token)
        for guild_id in self._dev_guilds:
            count = await self.sync_commands(guild_id)
            log.info("synced %d commands to dev guild %d", count, guild_id)

    async def sync_commands(self, guild_id: int | None = None) -> int:
        """Register the commands globally (can take up to an hour to show) or in one guild."""
        guild = discord.Object(guild_id) if guild_id else None
        if guild is not None:
            self.tree.copy_global_to(guild=guild)
        synced = await self.tree.sync(guild=guild)
        return len(synced)


def invite_url(client_id: int) -> str:
    return discord.utils.oauth_url(client_id, permissions=PERMISSIONS, scopes=SCOPES)


def use_api_base(settings: DiscordSettings) -> None:
    """Send every REST call, webhook and interaction callback to DISCORD_API_BASE: they all
    build their URLs from `Route.BASE`, process-wide."""
    Route.BASE = settings.api_base


async def serve(ctx: CommandContext, settings: DiscordSettings) -> None:
    """Run the bot until cancelled (`bot.app.run_app` drains it on SIGTERM/SIGINT)."""
    use_api_base(settings)
    async with EmberDiscordBot(ctx, settings) as bot:
        await bot.start_up(settings.bot_token.get_secret_value())
        await bot.connect()


def main(argv: list[str]) -> int:
    """`ember-bot discord [sync [--guild ID] | invite-url [--client-id ID]]`; `argv` are the
    words after `discord`."""
    args = _parser().parse_args(argv)
    if args.action == "invite-url" and args.client_id:
        print(invite_url(args.client_id))
        return 0
    settings = load_settings_or_report()
    discord_settings = load_or_report(DiscordSettings)
    if settings is None or discord_settings is None:
        return 2
    token = discord_settings.bot_token.get_secret_value()
    if not token:
        print(NO_TOKEN_HELP, file=sys.stderr)
        return 2
    if args.action is None and not settings.has_backend:
        print(NO_BACKEND_HELP, file=sys.stderr)
        return 2
    from bot.app import run_blocking  # imports goodfire (slow); invite-url needs none of it

    return run_blocking(
        settings,
        _run_action(args, settings, discord_settings),
        platforms=(discord_settings,),
        setup_errors=(discord.LoginFailure,),
        describe=lambda _: BAD_TOKEN_HELP,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ember-bot discord", description="Run the Discord bot.")
    actions = parser.add_subparsers(dest="action")
    sync = actions.add_parser("sync", help="register the slash commands with Discord")
    sync.add_argument("--guild", type=int, metavar="ID", help="only in this guild (instant)")
    invite = actions.add_parser("invite-url", help="print the URL that adds the bot to a server")
    invite.add_argument("--client-id", type=int, metavar="ID", help="application ID (default: ask)")
    return parser


async def _run_action(
    args: argparse.Namespace, settings: Settings, discord_settings: DiscordSettings
) -> None:
    from bot.app import open_context, run_app  # imports goodfire (slow); invite-url needs none

    if args.action is None:
        # drains on SIGTERM/SIGINT
        await run_app(settings, partial(serve, settings=discord_settings))
        return
    use_api_base(discord_settings)
    token = discord_settings.bot_token.get_secret_value()
    if args.action == "invite-url":
        print(invite_url(await _application_id(token)))
        return
    async with open_context(settings) as ctx, EmberDiscordBot(ctx, discord_settings) as bot:
        await bot.login(token)
        count = await bot.sync_commands(args.guild)
    where = f"guild {args.guild}" if args.guild else "all guilds (may take up to an hour)"
    print(f"Synced {count} commands to {where}.")


async def _application_id(token: str) -> int:
    async with discord.Client(intents=discord.Intents.none()) as client:
        await client.login(token)
        assert client.application_id is not None  # login fetches the application
        return client.application_id
