"""Discord over several processes: `ember-bot discord --shard-ids 0,1 --shard-count 4`, and
the note for a reply a dead process cut off."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import discord
import pytest
from discord.http import Route

from adapters.discord.app import EmberDiscordBot, build_bot
from adapters.discord.settings import DiscordSettings
from bot.commands.registry import CommandContext
from bot.usecases.turn_ledger import ORPHAN_NOTE
from tests.support.fake_discord import GENERAL_CHANNEL, TOKEN, FakeDiscord


def discord_settings(**values: object) -> DiscordSettings:
    return DiscordSettings(_env_file=None, bot_token="x", **values)  # type: ignore[call-arg]


async def test_a_process_runs_only_its_shards_of_the_total(ctx: CommandContext):
    async with build_bot(ctx, discord_settings(shard_ids="0,1", shard_count=4)) as bot:
        assert isinstance(bot, discord.AutoShardedClient) and isinstance(bot, EmberDiscordBot)
        assert (bot.shard_ids, bot.shard_count) == ([0, 1], 4)
    async with build_bot(ctx, discord_settings(shard_count=2)) as every_shard:
        assert (every_shard.shard_ids, every_shard.shard_count) == (None, 2)
    async with build_bot(ctx, discord_settings()) as unsharded:
        assert not isinstance(unsharded, discord.AutoShardedClient)


@pytest.mark.parametrize(
    ("flags", "problem"),
    [
        (
            ["--shard-ids", "0,4", "--shard-count", "4"],
            "DISCORD_SHARD_IDS: must each be below DISCORD_SHARD_COUNT (4) (got '0,4')",
        ),
        (
            ["--shard-ids", "1"],
            "DISCORD_SHARD_IDS: needs DISCORD_SHARD_COUNT (the total) too (got '1')",
        ),
        (
            ["--shard-ids", "one", "--shard-count", "2"],
            "DISCORD_SHARD_IDS: must be comma-separated shard numbers (0, 1, …) (got 'one')",
        ),
    ],
)
def test_shards_that_do_not_fit_are_one_config_error(flags, problem, tmp_path):
    root = Path(__file__).parents[3]
    environment = {**os.environ, "DISCORD_BOT_TOKEN": "x", "PYTHONPATH": str(root)}
    command = [sys.executable, "-m", "adapters", "discord", *flags]
    done = subprocess.run(
        command, capture_output=True, text=True, env=environment, cwd=tmp_path, timeout=60
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"config error: {problem}"]


async def test_a_reply_cut_off_by_a_dead_process_is_noted_under_its_message(
    ctx: CommandContext, monkeypatch: pytest.MonkeyPatch
):
    """What a surviving process posts when the turn ledger hands it a dead process's turn."""
    async with FakeDiscord() as fake:
        monkeypatch.setattr(Route, "BASE", fake.api_base)
        async with EmberDiscordBot(ctx, discord_settings()) as bot:
            await bot.login(TOKEN)
            await bot.note_cut_off({"channel": str(GENERAL_CHANNEL), "message": "12345"})
    assert fake.channel_messages(GENERAL_CHANNEL) == [ORPHAN_NOTE]
    [call] = fake.message_calls()
    assert call.json["message_reference"]["message_id"] == 12345
    assert call.json["allowed_mentions"]["parse"] == []  # the note pings nobody
