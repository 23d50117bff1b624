"""The feature picker as a Components v2 layout on Discord: a section per feature with a Choose
button, then strength buttons, then /steer run as the command would run it."""

from __future__ import annotations

from typing import Any

from tests.adapters.discord import test_discord_adapter as adapter_tests
from tests.adapters.discord.test_discord_adapter import (
    MEMBER,
    MOD,
    Harness,
    session_of,
)
from tests.support.discord_components import IS_COMPONENTS_V2, buttons, text_of, walk
from tests.support.fake_discord import APPLICATION_ID, EPHEMERAL, GENERAL_CHANNEL

# the adapter tests' fixtures, shared: a bot on the loopback Discord and FakeEmber
clock, fake_discord, start_bot, harness = (
    adapter_tests.clock,
    adapter_tests.fake_discord,
    adapter_tests.start_bot,
    adapter_tests.harness,
)


async def picker(harness: Harness) -> tuple[int, dict[str, Any]]:
    """MOD's /steer pirate (no strength): the picker message, by id."""
    followup = await harness.followup(harness.gateway.slash(MOD, "steer", feature="pirate"))
    (message_id,) = [
        m for m, body in harness.discord.messages.items() if buttons(body["components"])
    ]
    return message_id, followup.json


def labels_of(message: dict[str, Any]) -> list[str]:
    return [b["label"] for b in buttons(message["components"])]


async def edits(harness: Harness) -> dict[int, float]:
    variant = await harness.ctx.service.variants.active(session_of(GENERAL_CHANNEL))
    return {index: edit.value for index, edit in variant.edits.items()}


async def test_the_picker_is_a_v2_layout_with_a_section_and_button_per_feature(harness: Harness):
    _, payload = await picker(harness)
    assert payload["flags"] & IS_COMPONENTS_V2 and payload["flags"] & EPHEMERAL
    assert "content" not in payload and payload["allowed_mentions"]["parse"] == []
    sections = [c for c in walk(payload["components"]) if c["type"] == 9]
    assert sections and all(s["accessory"]["label"] == "Choose" for s in sections)
    first = sections[0]
    assert first["components"][0]["content"] == "**#1201** pirate speech"
    assert first["accessory"]["custom_id"] == "ember:pick:1201"
    assert text_of(payload["components"]).startswith("Give a strength between -1 and 1.")


async def test_choose_then_a_strength_steers_and_tells_the_channel(harness: Harness):
    message_id, _ = await picker(harness)
    choose = harness.gateway.click(MOD, message_id, "Choose")
    message = harness.discord.messages[message_id]
    await harness.discord.wait_for(
        lambda: any(b["label"] == "+0.5" for b in buttons(message["components"]))
    )
    (update,) = harness.discord.calls_to("POST", f"/interactions/.*/{choose}/callback")
    assert update.json["type"] == 7  # the picker message is updated in place
    assert "Steer **#1201** pirate speech how strongly?" in text_of(message["components"])
    assert labels_of(message) == ["-0.5", "-0.3", "+0.3", "+0.5", "+0.8"]

    click = harness.gateway.click(MOD, message_id, "+0.5")
    (outcome,) = await harness.discord.wait_for_call("POST", f"/webhooks/{APPLICATION_ID}/{click}")
    assert 'Mo steered variant "default": "pirate speech" (#1201) +0.50' in outcome.content
    assert not (outcome.json.get("flags") or 0) & EPHEMERAL
    await harness.discord.wait_for(lambda: not buttons(message["components"]))
    assert text_of(message["components"]).endswith("-# ✅ Mo chose +0.5")
    assert await edits(harness) == {1201: 0.5}


async def test_a_strength_clicked_by_someone_not_allowed_is_refused_privately(harness: Harness):
    message_id, _ = await picker(harness)
    harness.gateway.click(MOD, message_id, "Choose")
    message = harness.discord.messages[message_id]
    await harness.discord.wait_for(
        lambda: any(b["label"] == "+0.8" for b in buttons(message["components"]))
    )
    click = harness.gateway.click(MEMBER, message_id, "+0.8")
    (refusal,) = await harness.discord.wait_for_call("POST", f"/webhooks/{APPLICATION_ID}/{click}")
    assert refusal.json["flags"] & EPHEMERAL
    assert "don't have permission" in refusal.content
    assert len(buttons(message["components"])) == 5, "the buttons stay for someone allowed"
    assert await edits(harness) == {}


async def test_choose_clicked_by_someone_not_allowed_is_refused_and_changes_nothing(
    harness: Harness,
):
    message_id, _ = await picker(harness)
    message = harness.discord.messages[message_id]
    before = labels_of(message)
    choose = harness.gateway.click(MEMBER, message_id, "Choose")
    (refusal,) = await harness.discord.wait_for_call("POST", f"/interactions/.*/{choose}/callback")
    assert refusal.json["type"] == 4 and refusal.json["data"]["flags"] & EPHEMERAL
    assert "don't have permission to use /steer" in refusal.json["data"]["content"]
    assert labels_of(message) == before
    assert await edits(harness) == {}
