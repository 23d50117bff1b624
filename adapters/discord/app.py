"""The Discord bot: slash commands from the registry, streamed chat, no pings, and its CLI.

    ember-bot discord                      run the bot
    ember-bot discord sync [--guild ID]    register the slash commands (globally, or in one guild)
    ember-bot discord invite-url [--user]  print the link that adds the bot to a server (or,
                                           --user, installs it for yourself)

Commands are never synced on connect: `sync` does it on purpose, and guilds listed in
DISCORD_DEV_GUILD_IDS are synced once at start-up (guild commands update instantly).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import logging
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import aiohttp
import discord
from discord import app_commands
from discord.http import Route

from adapters.discord.chat import ChatResponder, Clock, is_addressed_to_bot
from adapters.discord.commands import SlashCommands
from adapters.discord.confirmations import ConfirmationButtons
from adapters.discord.picker import FeaturePicker
from adapters.discord.render import NO_PINGS
from adapters.discord.replies import FollowUps
from adapters.discord.retries import retry_unsent
from adapters.discord.settings import DiscordSettings
from bot.commands.registry import CommandContext
from bot.domain.errors import SetupError
from bot.settings import NO_BACKEND_HELP, Settings, load_or_report, load_settings_or_report
from bot.usecases.turn_ledger import ORPHAN_NOTE

log = logging.getLogger(__name__)

# A text bot: discord.py's "voice will NOT be supported" warnings would only alarm people.
discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False

SCOPES = ("bot", "applications.commands")
# Installable in servers and by a person for themselves (then usable where the bot is not a
# member); every command works in servers, in DMs with the bot, and in group DMs and other
# people's DMs (user installs). A DM's steering is that conversation's own session.
INSTALLS = app_commands.AppInstallationType(guild=True, user=True)
CONTEXTS = app_commands.AppCommandContext(guild=True, dm_channel=True, private_channel=True)
USER_INSTALL = 1  # integration_type of a user install in an OAuth2 URL
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
UNREADABLE_TOKEN_HELP = (
    "DISCORD_BOT_TOKEN does not look like a bot token, so it names no application: copy it again "
    "(Bot → Reset Token), or pass --client-id (General Information → Application ID)."
)
INTENT_HELP = (
    "Discord refused the Message Content intent that DISCORD_LISTEN_CHANNEL_IDS needs: switch it "
    "on under Bot → Privileged Gateway Intents in the Developer Portal, or unset the setting."
)
LOGIN_TIMEOUT = 30.0  # seconds for Discord to answer the login (a few retries of its own)
BAD_TOKEN_CLOSE_CODE = 4004  # the gateway's "authentication failed"


class DiscordSetupError(SetupError):
    """Discord could not be reached, or refused the token or an intent; the message says which."""


@asynccontextmanager
async def reaching_discord(
    api_base: str, within: float | None = LOGIN_TIMEOUT
) -> AsyncIterator[None]:
    """Turn Discord refusing or being out of reach (for `within` seconds; None: no limit) into
    one DiscordSetupError line."""
    try:
        async with asyncio.timeout(within):
            yield
    except discord.LoginFailure:
        raise DiscordSetupError(BAD_TOKEN_HELP) from None
    except discord.PrivilegedIntentsRequired:
        raise DiscordSetupError(INTENT_HELP) from None
    except discord.ConnectionClosed as error:
        if error.code != BAD_TOKEN_CLOSE_CODE:
            raise
        raise DiscordSetupError(BAD_TOKEN_HELP) from None
    except discord.HTTPException as error:
        raise DiscordSetupError(
            f"Discord answered {error.status} at {api_base} ({error.text or 'no detail'}); "
            "try again later (https://discordstatus.com)."
        ) from None
    except TimeoutError:
        raise DiscordSetupError(
            f"Discord did not answer at {api_base} within {LOGIN_TIMEOUT:g} s; check the "
            "network, or DISCORD_API_BASE."
        ) from None
    except (aiohttp.ClientError, OSError) as error:
        raise DiscordSetupError(
            f"Could not reach Discord at {api_base} ({error}); check the network, or "
            "DISCORD_API_BASE."
        ) from None


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
        self.tree = app_commands.CommandTree(
            self, allowed_installs=INSTALLS, allowed_contexts=CONTEXTS
        )
        buttons = ConfirmationButtons(ctx, settings.steer_role_set)
        buttons.install(self)
        picker = FeaturePicker(ctx, settings.steer_role_set)
        picker.install(self)
        follow_ups = FollowUps(buttons.buttons, picker.choose_button, clock)
        SlashCommands(ctx, follow_ups, settings.steer_role_set).install(self.tree)
        self._chat = ChatResponder(ctx, clock)
        self._admission = ctx.service.admission
        self._turns = ctx.service.turns
        self._turns.on_orphan("discord", self.note_cut_off)
        self._listen_channels = settings.listen_channels
        self._dev_guilds = settings.dev_guilds

    async def on_message(self, message: discord.Message) -> None:
        if not self.user or not is_addressed_to_bot(message, self.user.id, self._listen_channels):
            return
        # Two processes given the same shard both receive the message: one answers.
        if not await self._admission.first_delivery(f"discord:message:{message.id}"):
            return
        place = {"channel": str(message.channel.id), "message": str(message.id)}
        async with self._turns.in_flight("discord", place):  # noted if this process dies
            await self._chat.respond(message, self.user.id)

    async def note_cut_off(self, place: dict[str, str]) -> None:
        """Reply to the message whose answer a dead process cut off (turn_ledger)."""
        channel = self.get_partial_messageable(int(place["channel"]))
        await channel.send(
            ORPHAN_NOTE,
            reference=discord.MessageReference(
                message_id=int(place["message"]),
                channel_id=int(place["channel"]),
                fail_if_not_exists=False,
            ),
        )

    async def start_up(self, token: str) -> None:
        """Log in over REST and sync the dev guilds' commands; `connect()` then opens the
        gateway. Nothing syncs on (re)connect. Once logged in, a REST call that cannot reach
        Discord is retried for a while (a login that cannot fails at once, in one line)."""
        await self.login(token)
        retry_unsent(self.http)
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


def invite_url(client_id: int, *, user: bool = False) -> str:
    """The link that adds the bot to a server, or (`user`) installs it for oneself."""
    if user:
        url = discord.utils.oauth_url(client_id, scopes=("applications.commands",))
        return f"{url}&integration_type={USER_INSTALL}"
    return discord.utils.oauth_url(client_id, permissions=PERMISSIONS, scopes=SCOPES)


def application_id(token: str) -> int | None:
    """The application a bot token belongs to: its first dot-separated part is the
    application's id, base64-encoded. None if the token is not shaped like that."""
    first = token.strip().split(".", 1)[0]
    try:
        decoded = base64.urlsafe_b64decode(first + "=" * (-len(first) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return int(decoded) if decoded.isdigit() else None


def use_api_base(settings: DiscordSettings) -> None:
    """Send every REST call, webhook and interaction callback to DISCORD_API_BASE: they all
    build their URLs from `Route.BASE`, process-wide."""
    Route.BASE = settings.api_base


class ShardedEmberDiscordBot(EmberDiscordBot, discord.AutoShardedClient):
    """The same bot on some of the gateway shards (DISCORD_SHARD_IDS of DISCORD_SHARD_COUNT):
    processes running different shards share the work, and the database the state."""


def build_bot(ctx: CommandContext, settings: DiscordSettings) -> EmberDiscordBot:
    if not settings.shard_count:
        return EmberDiscordBot(ctx, settings)
    ids = settings.shards or None
    return ShardedEmberDiscordBot(ctx, settings, shard_ids=ids, shard_count=settings.shard_count)


async def serve(ctx: CommandContext, settings: DiscordSettings) -> None:
    """Run the bot until cancelled (`bot.app.run_app` drains it on SIGTERM/SIGINT)."""
    use_api_base(settings)
    async with build_bot(ctx, settings) as bot:
        async with reaching_discord(settings.api_base):
            await bot.start_up(settings.bot_token.get_secret_value())
        async with reaching_discord(settings.api_base, within=None):
            await bot.connect()  # discord.py reconnects (and resumes) by itself after outages


async def token_problem(settings: DiscordSettings) -> str | None:
    """None if Discord accepts DISCORD_BOT_TOKEN at DISCORD_API_BASE; else what is wrong."""
    use_api_base(settings)
    try:
        async with (
            reaching_discord(settings.api_base),
            discord.Client(intents=discord.Intents.none()) as client,
        ):
            await client.login(settings.bot_token.get_secret_value())
    except DiscordSetupError as error:
        return str(error)
    return None


def main(argv: list[str]) -> int:
    """`ember-bot discord [sync [--guild ID] | invite-url [--client-id ID]]`; `argv` are the
    words after `discord`."""
    args = _parser().parse_args(argv)
    if args.action == "invite-url":
        return _print_invite_url(args.client_id, user=args.user)
    settings = load_settings_or_report()
    shards = {"shard_ids": args.shard_ids, "shard_count": args.shard_count}
    discord_settings = load_or_report(
        DiscordSettings, **{name: value for name, value in shards.items() if value is not None}
    )
    if settings is None or discord_settings is None:
        return 2
    token = discord_settings.bot_token.get_secret_value()
    if not token:
        print(NO_TOKEN_HELP, file=sys.stderr)
        return 2
    if args.action is None and not settings.has_backend:
        print(NO_BACKEND_HELP, file=sys.stderr)
        return 2
    from bot.app import run_blocking  # imports goodfire (slow)

    return run_blocking(
        settings, _run_action(args, settings, discord_settings), platforms=(discord_settings,)
    )


def _print_invite_url(client_id: int | None, *, user: bool = False) -> int:
    """The invite link, worked out offline: the token names its application."""
    if client_id is None:
        discord_settings = load_or_report(DiscordSettings)
        if discord_settings is None:
            return 2
        token = discord_settings.bot_token.get_secret_value()
        if not token:
            print(NO_TOKEN_HELP, file=sys.stderr)
            return 2
        client_id = application_id(token)
        if client_id is None:
            print(UNREADABLE_TOKEN_HELP, file=sys.stderr)
            return 2
    print(invite_url(client_id, user=user))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ember-bot discord", description="Run the Discord bot.")
    parser.add_argument(
        "--shard-ids", metavar="0,1", help="shards this process runs (default DISCORD_SHARD_IDS)"
    )
    parser.add_argument(
        "--shard-count", type=int, metavar="N", help="shards in all (default DISCORD_SHARD_COUNT)"
    )
    actions = parser.add_subparsers(dest="action")
    sync = actions.add_parser("sync", help="register the slash commands with Discord")
    sync.add_argument("--guild", type=int, metavar="ID", help="only in this guild (instant)")
    invite = actions.add_parser("invite-url", help="print the URL that adds the bot to a server")
    invite.add_argument(
        "--client-id", type=int, metavar="ID", help="application ID (default: read from the token)"
    )
    invite.add_argument(
        "--user", action="store_true", help="the link that installs the app for yourself"
    )
    return parser


async def _run_action(
    args: argparse.Namespace, settings: Settings, discord_settings: DiscordSettings
) -> None:
    from bot.app import open_context, run_app  # imports goodfire (slow)

    if args.action is None:
        # drains on SIGTERM/SIGINT
        await run_app(settings, partial(serve, settings=discord_settings))
        return
    use_api_base(discord_settings)
    token = discord_settings.bot_token.get_secret_value()
    async with (
        open_context(settings) as ctx,
        EmberDiscordBot(ctx, discord_settings) as bot,
        reaching_discord(discord_settings.api_base),
    ):
        await bot.login(token)
        count = await bot.sync_commands(args.guild)
    where = f"guild {args.guild}" if args.guild else "all guilds (may take up to an hour)"
    print(f"Synced {count} commands to {where}.")
