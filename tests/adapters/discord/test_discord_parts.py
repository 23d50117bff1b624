"""Pure pieces of the Discord adapter: message rendering and intents."""

from __future__ import annotations

import discord

from adapters.discord.app import bot_intents
from adapters.discord.render import (
    EMBEDS_TOTAL,
    column_embeds,
    discord_length,
    render_reply,
    truncate,
)
from adapters.discord.settings import DiscordSettings
from adapters.streaming import CUT_NOTE, Column
from bot.commands.replies import Reply, Table, TableRow


def test_big_table_drops_rows_with_a_count_and_stays_in_one_code_block():
    rows = [TableRow(f"feature number {i} " + "x" * 40, i / 100, f"#{i}") for i in range(100)]
    text = render_reply(Reply("Top features:", table=Table("Activations", rows)))
    assert discord_length(text) <= 2000
    assert text.startswith("Top features:\n```\nActivations\n")
    assert text.count("```") == 2 and text.endswith("```")
    assert "more\n```" in text and "… and " in text


def test_truncate_keeps_whole_lines_and_closes_a_cut_code_block():
    text = "intro\n```\n" + "\n".join(f"row {i}" for i in range(500)) + "\n```"
    cut = truncate(text, 300)
    assert discord_length(cut) <= 300
    assert cut.count("```") == 2
    assert cut.endswith("more lines not shown") and "row 0\n" in cut


def test_length_counts_utf16_units_like_discord():
    assert discord_length("a") == 1 and discord_length("🙂") == 2


def test_intents_exclude_message_content_unless_listen_channels_are_set():
    settings = DiscordSettings(_env_file=None)  # type: ignore[call-arg]
    assert bot_intents(settings) == discord.Intents(
        guilds=True, guild_messages=True, dm_messages=True
    )
    listening = settings.model_copy(update={"listen_channel_ids": "123"})
    assert bot_intents(listening).message_content


def test_long_columns_are_cut_with_a_note_to_fit_one_messages_embeds():
    long_title = "steered: " + "pirate speech +0.5, " * 20
    columns = [
        Column("base", "🙂 word " * 2000, writing=True),
        Column(long_title, "line\n" * 2000, note="⚠ Generation stopped", writing=False),
    ]
    base, steered = column_embeds(columns)
    assert sum(len(embed) for embed in (base, steered)) <= EMBEDS_TOTAL
    assert base.description.endswith(f"\n{CUT_NOTE} ▌")
    assert steered.description.endswith(f"\n{CUT_NOTE}\n\n⚠ Generation stopped")
    assert len(steered.title) <= 100 and base.colour != steered.colour
    assert column_embeds([Column("base")])[0].description == "… ▌"
    assert column_embeds([Column("base", writing=False)])[0].description == "(no reply)"
