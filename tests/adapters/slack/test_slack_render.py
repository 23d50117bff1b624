"""Pure Slack rendering: escaping both ways, Block Kit limits, the picker, command prefixes."""

import json

from hypothesis import given
from hypothesis import strategies as st

from adapters.slack.chat import RecentKeys, is_from_a_person
from adapters.slack.render import (
    MAX_BLOCKS,
    SECTION_LIMIT,
    SlackRenderer,
    chunk_lines,
    escape,
    plain_text,
    selected_feature,
    table_blocks,
)
from bot.commands.replies import Reply, Table, TableRow
from bot.domain.types import FeatureRef
from tests.support.fake_slack import blocks_are_valid

RENDERER = SlackRenderer("", ("steer", "features", "help"))
PINGS = "<!channel> <!here> <!everyone> <@U123ABC> <#C0GENERAL> <!subteam^S1|@devs>"


def test_escape_neutralises_every_control_sequence():
    escaped = escape(f"{PINGS} & 1 < 2 > 0")
    assert "<" not in escaped and ">" not in escaped
    assert escaped.startswith("&lt;!channel&gt; &lt;!here&gt; &lt;!everyone&gt; &lt;@U123ABC&gt;")
    assert escaped.endswith("&amp; 1 &lt; 2 &gt; 0")


@given(st.text())
def test_escaped_text_reads_back_as_written(text):
    escaped = escape(text)
    assert "<" not in escaped and ">" not in escaped
    assert plain_text(escaped) == text.strip()


def test_incoming_markup_becomes_plain_words():
    text = "<@UBOT> hi <@U1|alice> see <#C1|general>, <https://x.org|docs> &amp; <!here> 1 &lt; 2"
    assert plain_text(text, "UBOT") == "hi @alice see #general, docs & @here 1 < 2"


def test_reply_text_is_escaped_and_names_prefixed_commands():
    renderer = SlackRenderer("ember-", ("steer", "help"))
    message = renderer.reply(Reply("Try /steer #1 0.5 or /help. Not a/steer nor /steering <!here>"))
    assert message.blocks is None
    assert message.text == (
        "Try /ember-steer #1 0.5 or /ember-help. Not a/steer nor /steering &lt;!here&gt;"
    )


def test_tables_become_bar_sections_within_slack_limits():
    rows = [TableRow(f"<@U{i}> " + "very long label " * 10, (-1) ** i * i * 1e6) for i in range(50)]
    blocks = table_blocks(Table("Top <features>", rows, footer="footer & more"))
    assert blocks_are_valid(blocks)
    assert len(blocks) >= 3, "50 rows do not fit one section"
    assert blocks[0]["text"]["text"] == "*Top &lt;features&gt;*"
    sections = [b["text"]["text"] for b in blocks[1:]]
    assert all(s.startswith("```") and s.endswith("```") for s in sections)
    assert all(len(s) <= SECTION_LIMIT for s in sections)
    body = "".join(sections)
    assert body.count("█") > 50 and "&lt;@U1&gt;" in body and "<@" not in body
    assert "footer &amp; more" in body


def test_table_blocks_are_capped_at_fifty():
    table = Table("t", [TableRow(f"feature {i}", i) for i in range(50)], footer="note " * 200)
    blocks = table_blocks(table, max_blocks=2)
    assert len(blocks) == 2 and "more sections not shown" in blocks[-1]["text"]["text"]
    assert 2 < len(table_blocks(table)) <= MAX_BLOCKS


def test_chunk_lines_keeps_every_line_and_respects_the_limit():
    lines = [f"line {i} " + "x" * (i % 40) for i in range(300)] + ["y" * 500]
    chunks = chunk_lines(lines, 200)
    assert all(len(chunk) <= 200 for chunk in chunks)
    assert "\n".join(chunks).split("\n")[:300] == lines[:300]


def test_table_reply_keeps_its_text_above_the_table():
    reply = Reply("Steering <here>", table=Table("Edits", [TableRow("pirate", 0.5)]))
    message = RENDERER.reply(reply)
    assert message.blocks is not None
    assert message.blocks[0]["text"]["text"] == "Steering &lt;here&gt;"
    fallback = RENDERER.fallback(reply)
    assert fallback.blocks is None and "```Edits\npirate" in fallback.text


def test_feature_choices_become_a_select_and_strength_buttons():
    choices = [FeatureRef(1201, "pirate speech " * 10), FeatureRef(1202, "nautical <terms>")]
    reply = Reply('Top matches for "pirate":\n  #1201 pirate speech', feature_choices=choices)
    message = SlackRenderer("ember-", ("steer",)).reply(reply)
    assert message.blocks is not None and blocks_are_valid(message.blocks)
    header, actions, tip = message.blocks
    assert header["text"]["text"] == 'Top matches for "pirate":'
    select, *buttons = actions["elements"]
    assert [o["value"] for o in select["options"]] == ["1201", "1202"]
    assert select["initial_option"] == select["options"][0]
    assert select["options"][1]["text"]["text"] == "#1202 nautical <terms>"
    assert [b["text"]["text"] for b in buttons] == ["-0.5", "-0.3", "+0.3", "+0.5", "+0.8"]
    assert json.loads(buttons[3]["value"]) == {"feature": 1201, "value": 0.5}
    assert "/ember-steer #&lt;index&gt;" in tip["elements"][0]["text"]


def test_selected_feature_reads_the_select_menu_state():
    state = {"values": {"ember_picker": {"ember_feature": {"selected_option": {"value": "42"}}}}}
    assert selected_feature(state) == 42
    assert selected_feature({"values": {}}) is None


def test_only_people_are_answered():
    person = {"user": "U1", "text": "hi"}
    assert is_from_a_person(person, "UBOT")
    assert not is_from_a_person({**person, "user": "UBOT"}, "UBOT")
    assert not is_from_a_person({**person, "bot_id": "B1"}, "UBOT")
    assert not is_from_a_person({**person, "subtype": "message_changed"}, "UBOT")
    assert not is_from_a_person({"subtype": "message_deleted"}, "UBOT")


def test_recent_keys_forget_the_oldest_first():
    recent = RecentKeys(capacity=2)
    assert recent.add("a") and recent.add("b")
    assert not recent.add("a")  # seen; now the most recent
    assert recent.add("c")  # evicts "b"
    assert recent.add("b") and not recent.add("c")
