"""The Discord adapter through a real discord.py client, a loopback Discord API and FakeEmber.

Gateway events go through discord.py's own parsers (FakeGateway); everything the bot does
comes back as HTTP requests to FakeDiscord, and the assertions read that traffic.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import discord
import pytest
from discord.http import Route

from adapters.discord.app import EmberDiscordBot
from adapters.discord.settings import DiscordSettings
from bot.app import open_context
from bot.commands.registry import Command, CommandContext
from bot.domain.types import Actor, SessionKey
from bot.settings import Settings
from tests.support.discord_components import IS_COMPONENTS_V2, text_of, walk
from tests.support.fake_discord import (
    APPLICATION_ID,
    DM_CHANNEL,
    EPHEMERAL,
    GENERAL_CHANNEL,
    GUILD_ID,
    LISTEN_CHANNEL,
    STEERER_ROLE,
    TOKEN,
    DiscordCall,
    FakeClock,
    FakeDiscord,
    FakeGateway,
    FakeUser,
)
from tests.support.fake_ember import FakeEmber, FakeFeature, Fault

MOD = FakeUser(501, "Mo", permissions=discord.Permissions(manage_messages=True))
MEMBER = FakeUser(502, "Max")
STELLA = FakeUser(503, "Stella", roles=(STEERER_ROLE,))
SETUP = Actor("test-setup", "Setup")


@dataclass
class Harness:
    bot: EmberDiscordBot
    gateway: FakeGateway
    discord: FakeDiscord
    ember: FakeEmber
    clock: FakeClock
    ctx: CommandContext
    discord_settings: DiscordSettings

    async def followup(self, token: str) -> DiscordCall:
        """The follow-up message of an interaction, once it has been sent."""
        calls = await self.discord.wait_for_call("POST", f"/webhooks/{APPLICATION_ID}/{token}")
        return calls[0]


StartBot = Callable[..., Awaitable[Harness]]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def fake_discord(clock: FakeClock) -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord(clock=lambda: clock.now) as fake:
        yield fake


@pytest.fixture
async def start_bot(
    settings: Settings,
    fake_ember: FakeEmber,
    fake_discord: FakeDiscord,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[StartBot]:
    """Start the bot with some settings changed (and commands added); it logs in and receives
    READY + GUILD_CREATE."""
    monkeypatch.setattr(Route, "BASE", fake_discord.api_base)
    async with AsyncExitStack() as stack:

        async def start(
            *,
            extra_commands: tuple[Command, ...] = (),
            discord_overrides: dict[str, Any] | None = None,
            **setting_overrides: Any,
        ) -> Harness:
            ctx = await stack.enter_async_context(
                open_context(settings.model_copy(update=setting_overrides))
            )
            for command in extra_commands:
                ctx.registry.add(command)
            discord_settings = DiscordSettings(
                _env_file=None,  # type: ignore[call-arg]
                **(discord_overrides or {}),
            )
            bot = EmberDiscordBot(ctx, discord_settings, clock=clock, guild_ready_timeout=0.01)
            await stack.enter_async_context(bot)
            await bot.start_up(TOKEN)
            gateway = FakeGateway(bot, fake_discord)
            gateway.connect()
            return Harness(bot, gateway, fake_discord, fake_ember, clock, ctx, discord_settings)

        yield start
    assert_nobody_pinged(fake_discord)
    assert fake_discord.refusals == [], "every payload passes Discord's checks"


@pytest.fixture
async def harness(start_bot: StartBot) -> Harness:
    return await start_bot()


def assert_nobody_pinged(fake: FakeDiscord) -> None:
    """Every payload carrying message text forbids every kind of mention."""
    for call in fake.message_calls():
        mentions = call.allowed_mentions
        assert mentions is not None, f"{call.method} {call.path} has no allowed_mentions"
        assert mentions.get("parse") == [], call
        assert not mentions.get("users") and not mentions.get("roles"), call
        assert not mentions.get("replied_user"), call


# --- slash commands ---------------------------------------------------------------------------


async def test_steer_defers_then_follows_up_publicly(harness: Harness):
    token = harness.gateway.slash(MOD, "steer", feature="pirate", value=0.5)
    followup = await harness.followup(token)
    first, *_ = harness.discord.interaction_calls(token)
    assert first.path.endswith("/callback") and first.json["type"] == 5  # deferred, "thinking…"
    assert 'Mo steered variant "default": "pirate speech" (#1201) +0.50' in followup.content
    assert not (followup.json.get("flags") or 0) & EPHEMERAL


async def test_command_error_replaces_the_public_placeholder_with_an_ephemeral_message(
    harness: Harness,
):
    token = harness.gateway.slash(MOD, "variant use", name="nope")
    followup = await harness.followup(token)
    defer, delete, _ = harness.discord.interaction_calls(token)
    assert defer.json["type"] == 5
    assert (delete.method, delete.path.rsplit("/", 1)[-1]) == ("DELETE", "@original")
    assert followup.json["flags"] & EPHEMERAL
    assert followup.content.startswith('No variant named "nope" in this channel.')


async def test_member_without_manage_messages_is_refused_at_once_and_nothing_changes(
    harness: Harness,
):
    token = harness.gateway.slash(MEMBER, "steer", feature="pirate", value=0.5)
    (refusal,) = await harness.discord.wait_for_call("POST", f"/interactions/.*/{token}/callback")
    assert refusal.json["type"] == 4  # answered directly, no "thinking…" first
    assert refusal.json["data"]["flags"] & EPHEMERAL
    assert refusal.json["data"]["content"] == (
        "You don't have permission to use /steer in this channel."
    )
    assert harness.ember.requests_to("/features/search") == []
    variant = await harness.ctx.service.variants.active(session_of(GENERAL_CHANNEL))
    assert variant.edits == {}


async def test_configured_steer_roles_replace_manage_messages(start_bot: StartBot):
    harness = await start_bot(discord_overrides={"steer_roles": "steerers"})
    allowed = harness.gateway.slash(STELLA, "reset")
    refused = harness.gateway.slash(MOD, "reset")
    assert "Cleared all steering" in (await harness.followup(allowed)).content
    (refusal,) = await harness.discord.wait_for_call("POST", f"/interactions/.*/{refused}/callback")
    assert "don't have permission" in refusal.json["data"]["content"]


async def test_steering_too_fast_gets_a_private_try_again_in_n_seconds(start_bot: StartBot):
    harness = await start_bot(steer_user_burst=1, steer_user_per_minute=1)
    await harness.followup(harness.gateway.slash(MOD, "steer", feature="pirate", value=0.5))
    followup = await harness.followup(harness.gateway.slash(MOD, "steer", feature="cats", value=1))
    assert followup.json["flags"] & EPHEMERAL
    assert re.fullmatch(r"Slow down — try again in \d+ s\.", followup.content)
    variant = await harness.ctx.service.variants.active(session_of(GENERAL_CHANNEL))
    assert [e.feature.label for e in variant.edits.values()] == ["pirate speech"]


async def test_feature_autocomplete_offers_at_most_25_choices_of_at_most_100_chars(
    harness: Harness,
):
    harness.ember.features = [
        FakeFeature(100 + i, f"pirate talk variant {i} " + "very long label " * 10, ("arr",))
        for i in range(40)
    ]
    token = harness.gateway.autocomplete(MEMBER, "steer", focused="feature", feature="pirate")
    (answer,) = await harness.discord.wait_for_call("POST", f"/interactions/.*/{token}/callback")
    assert answer.json["type"] == 8  # autocomplete result
    choices = answer.json["data"]["choices"]
    assert len(choices) == 25
    assert all(len(c["name"]) <= 100 and c["name"].startswith("pirate talk") for c in choices)
    assert all(re.fullmatch(r"#1[0-3]\d", c["value"]) for c in choices)


async def test_variant_autocomplete_lists_the_channels_variants_by_prefix(harness: Harness):
    for name in ("pirate", "poet", "sage"):
        await harness.ctx.service.variants.create(session_of(GENERAL_CHANNEL), name, SETUP)
    token = harness.gateway.autocomplete(MEMBER, "variant use", focused="name", name="p")
    (answer,) = await harness.discord.wait_for_call("POST", f"/interactions/.*/{token}/callback")
    assert [c["value"] for c in answer.json["data"]["choices"]] == ["pirate", "poet"]


async def test_inspect_renders_a_code_block_table_with_bars(harness: Harness):
    harness.ember.reply_text = "Arr, the pirate ship sails!"
    harness.gateway.message(MEMBER, f"<@{APPLICATION_ID}> talk like a pirate", mentions_bot=True)
    await wait_for_final_reply(harness, GENERAL_CHANNEL)
    followup = await harness.followup(harness.gateway.slash(MEMBER, "inspect"))
    assert followup.json["flags"] & IS_COMPONENTS_V2, "a Components v2 layout"
    table = text_of(followup.json["components"]).split("```")[1]
    assert "Top features in the last exchange" in table
    pirate_row = next(line for line in table.splitlines() if line.startswith("pirate speech"))
    assert "█" in pirate_row and "#1201" in pirate_row


async def test_long_lists_are_cut_to_the_message_limit_with_a_count(harness: Harness):
    harness.ember.features = [
        FakeFeature(100 + i, f"pirate feature number {i} " + "x" * 60, ("arr",)) for i in range(50)
    ]
    token = harness.gateway.slash(MEMBER, "features search", query="pirate", top=50)
    components = (await harness.followup(token)).json["components"]
    assert len(list(walk(components))) <= 40, "a picker of 10, the rest listed"
    assert len(text_of(components)) <= 4000
    assert re.search(r"\n… \d+ more lines not shown\n", text_of(components))
    assert harness.discord.refusals == []


async def test_variant_export_is_sent_as_a_json_file(harness: Harness):
    await harness.followup(harness.gateway.slash(MOD, "steer", feature="pirate", value=0.5))
    followup = await harness.followup(harness.gateway.slash(MEMBER, "variant export"))
    ((filename, content),) = followup.files
    assert filename == "variant-active.json"
    (edit,) = json.loads(content)["edits"]
    assert (edit["index_in_sae"], edit["value"]) == (1201, 0.5)


async def test_dev_guild_commands_sync_once_at_start_up_never_on_reconnect(start_bot: StartBot):
    harness = await start_bot(discord_overrides={"dev_guild_ids": str(GUILD_ID)})
    harness.gateway.connect()  # a reconnect: READY and GUILD_CREATE again
    await harness.followup(harness.gateway.slash(MEMBER, "help"))
    syncs = [c for c in harness.discord.calls if c.method == "PUT"]
    assert [c.path for c in syncs] == [f"/applications/{APPLICATION_ID}/guilds/{GUILD_ID}/commands"]


# --- chat ---------------------------------------------------------------------------------------


async def test_answers_mentions_dms_and_listen_channels_but_not_other_messages(
    start_bot: StartBot,
):
    harness = await start_bot(discord_overrides={"listen_channel_ids": str(LISTEN_CHANNEL)})
    harness.gateway.message(MEMBER, "just chatting with friends")
    harness.gateway.message(MEMBER, "", channel_id=LISTEN_CHANNEL)  # e.g. only an image
    harness.gateway.message(MEMBER, "anyone here?", channel_id=LISTEN_CHANNEL)
    harness.gateway.message(MOD, "hello in private", channel_id=DM_CHANNEL)
    harness.gateway.message(STELLA, f"<@{APPLICATION_ID}> hello there", mentions_bot=True)
    for channel in (LISTEN_CHANNEL, DM_CHANNEL, GENERAL_CHANNEL):
        await wait_for_final_reply(harness, channel)
    asked = [r.json["messages"][-1]["content"] for r in harness.ember.requests_to("/completions")]
    assert sorted(asked) == ["Max: anyone here?", "Mo: hello in private", "Stella: hello there"]
    assert harness.bot.intents.message_content  # listen channels need message text


async def test_reply_streams_after_typing_with_edits_at_most_once_a_second(harness: Harness):
    harness.clock.step = 0.05  # every read of the clock moves time on
    harness.ember.reply_text = " ".join(f"word{i}" for i in range(150))
    harness.gateway.message(MEMBER, f"<@{APPLICATION_ID}> tell me a story", mentions_bot=True)
    (final,) = await wait_for_final_reply(harness, GENERAL_CHANNEL)
    channel = f"/channels/{GENERAL_CHANNEL}"
    typing, first_post, *edits = [c for c in harness.discord.calls if c.path.startswith(channel)]
    assert typing.path == f"{channel}/typing" and first_post.path == f"{channel}/messages"
    *streaming, last = edits
    assert len(streaming) >= 3
    assert all(edit.content.endswith(" ▌") for edit in [first_post, *streaming])
    times = [call.at for call in [first_post, *streaming]]
    assert all(later - earlier >= 1.0 for earlier, later in zip(times, times[1:], strict=False))
    assert last.content == final
    assert final.startswith("word0 word1") and "word149" in final
    assert final.endswith("\n\n-# variant default · unsteered")


async def test_long_reply_rolls_over_before_2000_chars_without_breaking_code(harness: Harness):
    code = "\n".join(f"print('line-{i:03}-of-a-long-program')" for i in range(150))
    harness.ember.reply_text = f"Here you go:\n```python\n{code}\n```\nEnjoy."
    harness.gateway.message(MEMBER, f"<@{APPLICATION_ID}> write code", mentions_bot=True)
    messages = await wait_for_final_reply(harness, GENERAL_CHANNEL)
    assert len(messages) >= 3
    assert 1900 < len(messages[0]) <= 2000  # filled up to the limit, then rolled over
    assert all(len(m) <= 2000 and m.count("```") % 2 == 0 for m in messages)
    assert all(m.startswith("```python\n") for m in messages[1:-1])
    joined = "".join(messages)
    assert all(f"line-{i:03}-of" in joined for i in range(150))
    assert messages[-1].endswith("-# variant default · unsteered")


async def test_model_output_with_mentions_pings_no_one(harness: Harness):
    harness.ember.reply_text = "@everyone <@123> <@&456> look!"
    harness.gateway.message(MEMBER, f"<@{APPLICATION_ID}> ping them", mentions_bot=True)
    (final,) = await wait_for_final_reply(harness, GENERAL_CHANNEL)
    assert final.startswith("@everyone <@123> <@&456> look!")
    reply_payloads = [c for c in harness.discord.message_calls() if "@everyone" in c.content]
    assert reply_payloads
    for call in reply_payloads:
        assert call.allowed_mentions["parse"] == []
        assert not call.allowed_mentions.get("users") and not call.allowed_mentions.get("roles")


async def test_backend_failure_mid_stream_finalises_the_partial_reply_with_a_note(
    harness: Harness,
):
    harness.ember.reply_text = "one two three four five six"
    harness.ember.fail_next("/chat/completions", Fault(die_after_tokens=3))
    harness.gateway.message(MEMBER, f"<@{APPLICATION_ID}> count", mentions_bot=True)
    (final,) = await wait_for_final_reply(harness, GENERAL_CHANNEL)
    partial, note = final.split("\n\n", 1)
    assert partial == "one two three "
    assert note.startswith("⚠ Reply cut short: ") and "▌" not in final


async def test_chatting_too_fast_gets_a_try_again_in_n_seconds(start_bot: StartBot):
    harness = await start_bot(chat_user_burst=1, chat_user_per_minute=1)
    harness.gateway.message(MEMBER, f"<@{APPLICATION_ID}> first", mentions_bot=True)
    harness.gateway.message(MEMBER, f"<@{APPLICATION_ID}> second", mentions_bot=True)
    messages = await wait_for_final_reply(harness, GENERAL_CHANNEL, count=2)
    assert any(re.fullmatch(r"Slow down — try again in \d+ s\.", m) for m in messages)
    assert len(harness.ember.requests_to("/chat/completions")) == 1


async def test_a_turn_waiting_for_the_backend_shows_its_queue_position_then_the_reply(
    start_bot: StartBot,
):
    harness = await start_bot(backend_max_concurrency=1)
    harness.ember.fail_next("/chat/completions", Fault(delay=0.5))  # whoever goes first is slow
    harness.gateway.message(MEMBER, f"<@{APPLICATION_ID}> first", mentions_bot=True)
    harness.gateway.message(MOD, "second", channel_id=DM_CHANNEL)
    for channel in (GENERAL_CHANNEL, DM_CHANNEL):
        await wait_for_final_reply(harness, channel)
    (notice,) = [c for c in harness.discord.message_calls() if c.content == "Queued, position 1."]
    queued_channel = int(notice.path.split("/")[2])
    (reply,) = harness.discord.channel_messages(queued_channel)  # the notice became the reply
    assert reply.startswith("You said:") and reply.endswith("-# variant default · unsteered")


# --- helpers ------------------------------------------------------------------------------------


def session_of(channel_id: int) -> SessionKey:
    return SessionKey("discord", str(GUILD_ID), str(channel_id))


async def wait_for_final_reply(harness: Harness, channel_id: int, count: int = 1) -> list[str]:
    """The channel's messages once `count` replies have ended (footer, note or cooldown)."""

    def finished() -> int:
        endings = ("-# variant", "⚠", "try again in")
        return sum(
            any(ending in m for ending in endings) and not m.endswith("▌")
            for m in harness.discord.channel_messages(channel_id)
        )

    await harness.discord.wait_for(lambda: finished() >= count)
    return harness.discord.channel_messages(channel_id)
