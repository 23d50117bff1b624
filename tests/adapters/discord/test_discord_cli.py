"""`ember-bot discord sync | invite-url` as a user runs them, against the loopback Discord API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

import discord
import pytest
from discord.http import Route

from adapters.discord.app import main
from tests.support.fake_discord import APPLICATION_ID, GUILD_ID, TOKEN, FakeDiscord
from tests.support.faults import bot_token


@pytest.fixture
async def fake_discord(tmp_path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    """A fake Discord API, and an environment whose settings point the CLI at it."""
    async with FakeDiscord() as fake:
        monkeypatch.chdir(tmp_path)  # no stray .env
        monkeypatch.setattr(Route, "BASE", Route.BASE)  # main() sets it; restore it afterwards
        monkeypatch.setenv("DISCORD_BOT_TOKEN", TOKEN)
        monkeypatch.setenv("DISCORD_API_BASE", fake.api_base)
        monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'bot.db'}")
        yield fake


async def run_main(*argv: str) -> int:
    # main() runs its own event loop, so it gets a thread; the fake serves from this loop
    return await asyncio.to_thread(main, list(argv))


async def test_sync_registers_commands_generated_from_the_registry(fake_discord, capsys):
    assert await run_main("sync", "--guild", str(GUILD_ID)) == 0
    assert capsys.readouterr().out == f"Synced 10 commands to guild {GUILD_ID}.\n"
    commands = {c["name"]: c for c in fake_discord.synced_commands[GUILD_ID]}
    assert list(commands) == [
        "steer",
        "features",
        "reset",
        "variant",
        *("inspect", "compare", "autosteer", "guard", "history"),
        "help",
    ]

    feature, value = commands["steer"]["options"]
    assert (feature["name"], feature["type"], feature["required"]) == ("feature", 3, True)
    assert feature["autocomplete"] is True
    assert (value["type"], value["min_value"], value["max_value"]) == (10, -1, 1)
    assert value["required"] is False
    manage_messages = discord.Permissions(manage_messages=True).value
    assert int(commands["steer"]["default_member_permissions"]) == manage_messages

    variant = {o["name"]: o for o in commands["variant"]["options"]}
    assert list(variant) == ["new", "use", "list", "delete", "export", "import"]
    name, pasted, file = variant["import"]["options"]
    assert (name["required"], pasted["type"], file["type"]) == (True, 3, 11)  # 11: attachment
    (what,) = commands["reset"]["options"]
    assert [c["value"] for c in what["choices"]] == ["steering", "history", "all"]
    top, chart, feature = commands["inspect"]["options"]
    assert (top["type"], top["min_value"], top["max_value"]) == (4, 1, 50)
    assert [c["value"] for c in chart["choices"]] == ["yes", "no"]
    assert feature["autocomplete"] is True


async def test_sync_without_guild_registers_globally(fake_discord, capsys):
    assert await run_main("sync") == 0
    assert list(fake_discord.synced_commands) == [None]
    assert "may take up to an hour" in capsys.readouterr().out


async def test_sync_registers_every_command_for_server_and_user_installs_in_every_context(
    fake_discord, capsys
):
    assert await run_main("sync") == 0
    commands = fake_discord.synced_commands[None]
    assert len(commands) == 10
    for command in commands:
        assert sorted(command["integration_types"]) == [0, 1], command["name"]  # guild, user
        # 0: servers, 1: DMs with the bot, 2: group DMs and other DMs (user installs)
        assert sorted(command["contexts"]) == [0, 1, 2], command["name"]


def invite_parameters(url: str) -> dict[str, list[str]]:
    parts = urlsplit(url.strip())
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "discord.com", "/oauth2/authorize")
    return parse_qs(parts.query)


async def test_invite_url_asks_for_bot_and_commands_scopes_and_few_permissions(
    fake_discord, monkeypatch, capsys
):
    monkeypatch.setenv("DISCORD_BOT_TOKEN", bot_token(APPLICATION_ID))
    assert await run_main("invite-url") == 0
    query = invite_parameters(capsys.readouterr().out)
    assert query["client_id"] == [str(APPLICATION_ID)]  # read from the token
    assert fake_discord.calls == []  # no network
    assert query["scope"] == ["bot applications.commands"]
    permissions = discord.Permissions(int(query["permissions"][0]))
    assert permissions.send_messages and permissions.read_message_history
    assert not (permissions.administrator or permissions.mention_everyone)


async def test_user_install_url_asks_only_for_commands(fake_discord, monkeypatch, capsys):
    monkeypatch.setenv("DISCORD_BOT_TOKEN", bot_token(APPLICATION_ID))
    assert await run_main("invite-url", "--user") == 0
    query = invite_parameters(capsys.readouterr().out)
    assert query["client_id"] == [str(APPLICATION_ID)]
    assert query["scope"] == ["applications.commands"] and query["integration_type"] == ["1"]
    assert "permissions" not in query


async def test_missing_token_explains_where_to_get_one(fake_discord, monkeypatch, capsys):
    monkeypatch.delenv("DISCORD_BOT_TOKEN")
    assert await run_main("sync") == 2
    assert "DISCORD_BOT_TOKEN is not set" in capsys.readouterr().err
    assert fake_discord.calls == []
