"""Pure pieces of the Discord adapter: message rendering and intents."""

from __future__ import annotations

import re

import discord

from adapters.discord.app import bot_intents
from adapters.discord.layouts import columns_layout, picker_layout
from adapters.discord.render import discord_length, render_reply, truncate
from adapters.discord.settings import DiscordSettings
from adapters.streaming import CUT_NOTE, Column
from bot.commands.replies import Reply, Table, TableRow
from bot.domain.types import FeatureRef
from tests.support.discord_components import IS_COMPONENTS_V2, message_problem, text_of, walk


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


def v2_payload(view: discord.ui.LayoutView) -> dict:
    return {"flags": IS_COMPONENTS_V2, "components": view.to_components()}


def test_long_columns_are_cut_with_a_note_to_fit_one_v2_layout():
    long_title = "steered: " + "pirate speech +0.5, " * 20
    columns = [
        Column("base", "🙂 word " * 2000, writing=True),
        Column(long_title, "line\n" * 2000, note="⚠ Generation stopped", writing=False),
    ]
    view = columns_layout("Same prompt, same seed.", columns)
    assert message_problem(v2_payload(view)) == ""
    intro, base, steered = [t for t in walk(view.to_components()) if t["type"] == 10]
    assert sum(discord_length(t["content"]) for t in (intro, base, steered)) <= 4000
    assert base["content"].startswith("### base\n")
    assert base["content"].endswith(f"\n{CUT_NOTE} ▌")
    assert steered["content"].endswith(f"\n{CUT_NOTE}\n\n⚠ Generation stopped")
    assert len(steered["content"].split("\n", 1)[0]) <= len("### ") + 100
    empty = columns_layout("intro", [Column("base"), Column("steered", writing=False)])
    texts = [t["content"] for t in walk(empty.to_components()) if t["type"] == 10]
    assert texts == ["intro", "### base\n… ▌", "### steered\n(no reply)"]


def test_a_picker_with_many_features_stays_within_40_components_and_lists_the_rest():
    features = [FeatureRef(i, f"feature {i} " + "x" * 80) for i in range(60)]
    reply = Reply('Features matching "x":\n...', feature_choices=features)
    view = picker_layout(
        reply, lambda f: discord.ui.Button(label="Choose", custom_id=f"c{f.index_in_sae}")
    )
    payload = v2_payload(view)
    assert message_problem(payload) == ""
    assert len(list(walk(payload["components"]))) <= 40
    assert re.search(r"… \d+ more lines not shown", text_of(payload["components"]))


def test_the_fake_refuses_what_discord_refuses():
    text = {"type": 10, "content": "hi"}
    assert "flag" in message_problem({"components": [text]})
    assert "content" in message_problem(
        {"flags": IS_COMPONENTS_V2, "content": "x", "components": [text]}
    )
    too_many = [{"type": 10, "content": "x"}] * 41
    assert "41 components" in message_problem({"flags": IS_COMPONENTS_V2, "components": too_many})
    long = [{"type": 10, "content": "x" * 2001}] * 2
    assert "characters" in message_problem({"flags": IS_COMPONENTS_V2, "components": long})
    gallery = {"type": 12, "items": [{"media": {"url": "attachment://chart.png"}}]}
    v2 = {"flags": IS_COMPONENTS_V2, "components": [gallery]}
    assert "no file" in message_problem(v2)
    assert message_problem(v2, ["chart.png"]) == ""
    section = {"type": 9, "components": [text]}
    assert "accessory" in message_problem({"flags": IS_COMPONENTS_V2, "components": [section]})
