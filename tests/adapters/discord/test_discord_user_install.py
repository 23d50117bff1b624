"""A user-installed Ember in a group DM the bot is not in: slash commands answer as interaction
follow-ups, and steering there is that conversation's own session."""

from __future__ import annotations

from bot.domain.types import SessionKey
from tests.adapters.discord import test_discord_adapter as adapter_tests
from tests.adapters.discord.test_discord_adapter import MEMBER, Harness, session_of
from tests.support.fake_discord import GENERAL_CHANNEL, GROUP_DM_CHANNEL

clock, fake_discord, start_bot, harness = (
    adapter_tests.clock,
    adapter_tests.fake_discord,
    adapter_tests.start_bot,
    adapter_tests.harness,
)


async def test_steering_in_a_group_dm_is_that_conversations_own_session(harness: Harness):
    token = harness.gateway.slash_in_group_dm(MEMBER, "steer", feature="pirate", value=0.5)
    followup = await harness.followup(token)
    assert 'Max steered variant "default": "pirate speech" (#1201) +0.50' in followup.content
    private = SessionKey("discord", "dm", str(GROUP_DM_CHANNEL))
    steered = await harness.ctx.service.variants.active(private)
    assert {i: e.value for i, e in steered.edits.items()} == {1201: 0.5}
    server = await harness.ctx.service.variants.active(session_of(GENERAL_CHANNEL))
    assert server.edits == {}, "the server channel's steering is untouched"
    calls = harness.discord.calls
    assert not [c for c in calls if c.path.startswith(f"/channels/{GROUP_DM_CHANNEL}")], (
        "no channel messages: the bot is not in that conversation"
    )
