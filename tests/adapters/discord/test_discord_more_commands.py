"""Issue #9 on Discord, through discord.py against the loopback Discord: /autosteer's Apply and
Cancel buttons (on the tiny self-hosted server, which has AutoSteer), /compare's two streamed
columns, /guard-style stops, /inspect charts and /variant import from an attached file (on
FakeEmber)."""

from __future__ import annotations

import io
import json
import struct
from typing import Any

from PIL import Image

from adapters.discord.app import EmberDiscordBot
from bot.commands.confirmations import proposals
from tests.adapters.discord import test_discord_adapter as adapter_tests
from tests.adapters.discord.test_discord_adapter import MEMBER, MOD, Harness, StartBot, session_of
from tests.support.discord_components import IS_COMPONENTS_V2, text_of, walk
from tests.support.discord_components import buttons as all_buttons
from tests.support.fake_discord import (
    APPLICATION_ID,
    EPHEMERAL,
    GENERAL_CHANNEL,
    TOKEN,
    FakeAttachment,
    FakeGateway,
)
from tests.support.fake_ember import Fault
from tests.support.server_fixtures import BackgroundServer

# the adapter tests' fixtures, shared: a bot on the loopback Discord and FakeEmber
clock, fake_discord, start_bot, harness = (
    adapter_tests.clock,
    adapter_tests.fake_discord,
    adapter_tests.start_bot,
    adapter_tests.harness,
)

MARKER = "▌"
PIRATE = 37  # the tiny preset's planted "pirate speech" feature


async def edits(harness: Harness) -> dict[int, float]:
    variant = await harness.ctx.service.variants.active(session_of(GENERAL_CHANNEL))
    return {index: round(edit.value, 3) for index, edit in variant.edits.items()}


def buttons(message: dict[str, Any]) -> list[dict[str, Any]]:
    return all_buttons(message["components"])


def shown_text(message: dict[str, Any]) -> str:
    """The text of a v2 message's text displays, one per line."""
    assert message["flags"] & IS_COMPONENTS_V2
    return text_of(message["components"])


def proposal_token(harness: Harness, message_id: int) -> str:
    """The token the question's buttons carry."""
    apply, _ = buttons(harness.discord.messages[message_id])
    return apply["custom_id"].rsplit(":", 1)[1]


# --- /autosteer: Apply / Cancel -----------------------------------------------------------------


async def autosteer(start_bot: StartBot, tiny_server: BackgroundServer) -> tuple[Harness, int]:
    """A bot on the tiny server, and the message of MOD's /autosteer proposal."""
    harness = await start_bot(goodfire_base_url=tiny_server.base_url)
    token = harness.gateway.slash(MOD, "autosteer", description="talk like a pirate")
    await harness.followup(token)
    (message_id,) = [m for m, body in harness.discord.messages.items() if body["components"]]
    return harness, message_id


async def answered(harness: Harness, message_id: int) -> dict[str, Any]:
    """The question message once its buttons are gone."""
    message = harness.discord.messages[message_id]
    await harness.discord.wait_for(lambda: not buttons(message))
    return message


async def test_autosteer_shows_the_proposal_with_buttons_carrying_its_token(
    start_bot: StartBot, tiny_server: BackgroundServer
):
    harness, message_id = await autosteer(start_bot, tiny_server)
    message = harness.discord.messages[message_id]
    apply, cancel = buttons(message)
    token = apply["custom_id"].removeprefix("ember:confirm:accept:")
    assert await proposals(harness.ctx.service).get(token) is not None
    assert apply["label"] == "Apply" and len(token) == 24
    assert (cancel["label"], cancel["custom_id"]) == ("Cancel", f"ember:confirm:reject:{token}")
    assert "pirate speech" in shown_text(message) and "█" in shown_text(message)
    assert shown_text(message).endswith("\n**Apply these edits?**")
    assert await edits(harness) == {}


async def test_apply_adds_the_edits_removes_the_buttons_and_tells_the_channel(
    start_bot: StartBot, tiny_server: BackgroundServer
):
    harness, message_id = await autosteer(start_bot, tiny_server)
    token = harness.gateway.click(MOD, message_id, "Apply")
    message = await answered(harness, message_id)
    (ack,) = harness.discord.calls_to("POST", f"/interactions/.*/{token}/callback")
    assert ack.json["type"] == 6  # deferred update: the message is edited next
    assert PIRATE in await edits(harness)
    assert shown_text(message).endswith("**Apply these edits?**\n-# ✅ Applied by Mo")
    (outcome,) = await harness.discord.wait_for_call("POST", f"/webhooks/{APPLICATION_ID}/{token}")
    assert outcome.content.startswith('Mo applied to variant "default": "pirate speech" +')
    assert not (outcome.json.get("flags") or 0) & EPHEMERAL


async def test_cancel_changes_nothing_and_removes_the_buttons(
    start_bot: StartBot, tiny_server: BackgroundServer
):
    harness, message_id = await autosteer(start_bot, tiny_server)
    token = proposal_token(harness, message_id)
    harness.gateway.click(MOD, message_id, "Cancel")
    message = await answered(harness, message_id)
    assert shown_text(message).endswith("-# ✖️ Cancelled by Mo")
    assert await edits(harness) == {}
    assert await proposals(harness.ctx.service).get(token) is None


async def test_a_click_by_someone_not_allowed_is_refused_privately_and_the_buttons_stay(
    start_bot: StartBot, tiny_server: BackgroundServer
):
    harness, message_id = await autosteer(start_bot, tiny_server)
    token = harness.gateway.click(MEMBER, message_id, "Apply")
    (refusal,) = await harness.discord.wait_for_call("POST", f"/webhooks/{APPLICATION_ID}/{token}")
    assert refusal.json["flags"] & EPHEMERAL
    assert refusal.content == "Only Mo or someone who may steer here can answer."
    assert len(buttons(harness.discord.messages[message_id])) == 2
    assert await edits(harness) == {}


async def test_an_expired_proposal_says_so_and_loses_its_buttons(
    start_bot: StartBot, tiny_server: BackgroundServer
):
    harness, message_id = await autosteer(start_bot, tiny_server)
    await proposals(harness.ctx.service).take(
        proposal_token(harness, message_id)
    )  # as if it expired
    click = harness.gateway.click(MOD, message_id, "Apply")
    message = await answered(harness, message_id)
    (notice,) = harness.discord.calls_to("POST", f"/webhooks/{APPLICATION_ID}/{click}")
    assert notice.json["flags"] & EPHEMERAL and "expired" in notice.content
    assert shown_text(message).endswith("\n-# Expired")


async def test_buttons_sent_before_a_restart_still_work(
    start_bot: StartBot, tiny_server: BackgroundServer
):
    harness, message_id = await autosteer(start_bot, tiny_server)
    async with EmberDiscordBot(
        harness.ctx, harness.discord_settings, clock=harness.clock, guild_ready_timeout=0.01
    ) as bot:
        await bot.start_up(TOKEN)
        gateway = FakeGateway(bot, harness.discord)  # a client that never saw the message sent
        gateway.connect()
        gateway.click(MOD, message_id, "Apply")
        await answered(harness, message_id)
    assert PIRATE in await edits(harness)


# --- /compare: streamed columns -----------------------------------------------------------------


async def compare(harness: Harness, prompt: str) -> str:
    await harness.followup(harness.gateway.slash(MOD, "steer", feature="pirate", value=0.5))
    return harness.gateway.slash(MEMBER, "compare", prompt=prompt)


def column_texts(components: list[dict[str, Any]]) -> list[str]:
    """The columns' texts in a /compare layout: the text displays after the intro."""
    _, *columns = [c["content"] for c in walk(components) if c["type"] == 10]
    return columns


async def final_columns(harness: Harness) -> list[str]:
    """The columns of the /compare message ("### title\\ntext"), once none is still writing."""

    def columns() -> list[str]:
        layouts = [m for m in harness.discord.messages.values() if m["flags"] & IS_COMPONENTS_V2]
        return column_texts(layouts[0]["components"]) if layouts else []

    await harness.discord.wait_for(
        lambda: bool(columns()) and all(MARKER not in text for text in columns())
    )
    return columns()


async def test_compare_streams_both_answers_in_one_v2_layout_edited_at_most_once_a_second(
    harness: Harness,
):
    harness.clock.step = 0.05  # every read of the clock moves time on
    harness.ember.reply_text = " ".join(f"word{i}" for i in range(120))
    token = await compare(harness, "tell me a story")
    post = await harness.followup(token)
    base, steered = await final_columns(harness)
    assert post.json["flags"] & IS_COMPONENTS_V2 and "content" not in post.json
    assert text_of(post.json["components"]).startswith("Same prompt, same seed")
    titles = [text.split("\n", 1)[0] for text in column_texts(post.json["components"])]
    assert titles == ["### base", "### steered: default · pirate speech +0.5"]
    edits = harness.discord.calls_to("PATCH", f"/webhooks/{APPLICATION_ID}/{token}/messages/\\d+")
    *streaming, last = [post, *edits]
    assert len(streaming) >= 3
    times = [call.at for call in streaming]
    assert all(later - earlier >= 1.0 for earlier, later in zip(times, times[1:], strict=False))
    assert all(
        any(text.endswith(MARKER) for text in column_texts(call.json["components"]))
        for call in streaming
    )
    assert column_texts(last.json["components"]) == [base, steered]
    assert base.split("\n", 1)[1] == steered.split("\n", 1)[1] == harness.ember.reply_text
    assert harness.discord.refusals == []


async def test_a_generation_stopped_mid_stream_ends_its_column_with_a_note(harness: Harness):
    harness.ember.reply_text = "one two three four five six"
    harness.ember.fail_next("/chat/completions", Fault(abort_after_tokens=3))  # either column
    await compare(harness, "count")
    texts = [text.split("\n", 1)[1] for text in await final_columns(harness)]
    full, stopped = sorted(texts, key=lambda text: "⚠" in text)
    assert full == "one two three four five six"
    text, note = stopped.split("\n\n")
    assert text == "one two three" and note.startswith("⚠ Generation stopped")


async def test_a_chat_reply_stopped_by_a_guard_ends_with_the_reason(harness: Harness):
    harness.ember.reply_text = "one two three four five six"
    harness.ember.fail_next("/chat/completions", Fault(abort_after_tokens=3))
    harness.gateway.message(MEMBER, f"<@{APPLICATION_ID}> count", mentions_bot=True)
    await harness.discord.wait_for(
        lambda: any("⚠" in m for m in harness.discord.channel_messages(GENERAL_CHANNEL))
    )
    (final,) = harness.discord.channel_messages(GENERAL_CHANNEL)
    text, tail = final.split("\n\n")
    note, footer = tail.split("\n")
    assert text == "one two three " and MARKER not in final
    assert note.startswith("⚠ Generation stopped") and footer.startswith("-# variant default")


# --- files --------------------------------------------------------------------------------------


async def test_inspect_chart_reaches_discord_as_a_png_of_sensible_size(harness: Harness):
    harness.ember.reply_text = "Arr, the pirate ship sails!"
    harness.gateway.message(MEMBER, f"<@{APPLICATION_ID}> talk like a pirate", mentions_bot=True)
    await harness.discord.wait_for(
        lambda: any("-# variant" in m for m in harness.discord.channel_messages(GENERAL_CHANNEL))
    )
    followup = await harness.followup(harness.gateway.slash(MEMBER, "inspect", chart="yes"))
    ((filename, content),) = followup.files
    assert filename == "inspect.png"
    assert content[:8] == b"\x89PNG\r\n\x1a\n" and content[12:16] == b"IHDR"
    width, height = struct.unpack(">II", content[16:24])
    assert 400 <= width <= 2000 and 100 <= height <= 2000
    assert Image.open(io.BytesIO(content)).size == (width, height)
    assert followup.json["flags"] & IS_COMPONENTS_V2
    components = followup.json["components"]
    assert "pirate speech" in text_of(components)  # the table still carries the numbers
    (gallery,) = [c for c in walk(components) if c["type"] == 12]
    assert gallery["items"][0]["media"]["url"] == "attachment://inspect.png"


VARIANT = {
    "base_model": "meta-llama/Llama-3.3-70B-Instruct",
    "edits": [
        {"feature_id": "", "feature_label": "pirate speech", "index_in_sae": 1201, "value": 0.4}
    ],
    "scopes": [],
}


async def test_variant_import_reads_an_attached_json_file(harness: Harness):
    file = FakeAttachment("pirate.json", json.dumps(VARIANT).encode())
    token = harness.gateway.slash(MOD, "variant import", name="shared", file=file)
    followup = await harness.followup(token)
    assert followup.content.startswith('Imported variant "shared" with 1 edits')
    assert await edits(harness) == {1201: 0.4}


async def test_an_attached_file_too_big_is_refused_without_downloading_it(harness: Harness):
    limit = harness.ctx.settings.max_command_chars
    file = FakeAttachment("huge.json", b" " * (limit + 1))
    token = harness.gateway.slash(MOD, "variant import", name="shared", file=file)
    (refusal,) = await harness.discord.wait_for_call("POST", f"/interactions/.*/{token}/callback")
    assert refusal.json["data"]["flags"] & EPHEMERAL
    assert refusal.json["data"]["content"] == (
        f"huge.json is {limit + 1:,} bytes; attach a file of at most {limit:,} bytes."
    )
    assert harness.discord.calls_to("GET", "/attachments/.*") == []
