"""The Slack bot in Socket Mode: slack_sdk's client opens a connection through
apps.connections.open on the fake Web API, then the fake pushes envelopes over a loopback
websocket and collects the acks."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from adapters.slack.app import SlackBot, socket_mode
from bot.app import open_context
from bot.commands.registry import CommandContext
from bot.domain.types import SessionKey
from bot.settings import Settings
from tests.support.fake_ember import FakeEmber, Fault
from tests.support.fake_slack import FakeSlack, SlackCall, settings_for

CHANNEL = "C1GENERAL"


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as fake:
        yield fake


@pytest.fixture
async def bot_ctx(settings: Settings, slack: FakeSlack) -> AsyncIterator[CommandContext]:
    async with open_context(settings) as context:
        bot = SlackBot(context, settings_for(slack))
        async with socket_mode(bot, slack.app_token):
            yield context


async def reply_to(slack: FakeSlack, fields: dict[str, str]) -> SlackCall:
    name = fields["response_url"].rsplit("/", 1)[1]
    return (await slack.wait_for(lambda: slack.responses(name), what="reply"))[0]


async def edits(ctx: CommandContext, slack: FakeSlack) -> dict[int, float]:
    variant = await ctx.service.variants.active(SessionKey("slack", slack.team_id, CHANNEL))
    return {index: edit.value for index, edit in variant.edits.items()}


async def test_slash_command_is_acked_with_its_envelope_id_before_the_answer(
    bot_ctx: CommandContext, slack: FakeSlack, fake_ember: FakeEmber
):
    [connection] = slack.api_calls("apps.connections.open")
    assert connection.outcome == "ok", "connected with the app-level token"
    fake_ember.fail_next("/features/search", Fault(delay=0.3))
    fields = slack.slash_command("/steer", "pirate 0.5", channel=CHANNEL)
    envelope_id = await slack.push("slash_commands", fields)
    ack = await slack.wait_ack(envelope_id, within=3.0)
    assert ack.body["envelope_id"] == envelope_id
    reply = await reply_to(slack, fields)
    assert ack.seq < reply.seq, "ack first"
    assert '"pirate speech" (#1201) +0.50' in reply.body["text"]
    assert await edits(bot_ctx, slack) == {1201: 0.5}


async def test_events_are_acked_and_a_redelivered_one_is_answered_once(
    bot_ctx: CommandContext, slack: FakeSlack, fake_ember: FakeEmber
):
    event = {"type": "app_mention", "user": "U1ALICE", "channel": CHANNEL, "ts": "1.5"}
    payload = slack.event_callback({**event, "text": "<@UBOT> ahoy <!here>"}, "Ev1")
    first = await slack.push("events_api", payload)
    again = await slack.push("events_api", payload, retry_attempt=1)
    acks = [await slack.wait_ack(first), await slack.wait_ack(again)]
    assert [a.body["envelope_id"] for a in acks] == [first, again]

    final = await slack.wait_for(
        lambda: [m for m in slack.posted(CHANNEL) if "_variant default" in m.text],
        what="final reply",
    )
    assert final[0].text.startswith("You said: U1ALICE: ahoy @here")
    [placeholder] = slack.api_calls("chat.postMessage")
    assert acks[0].seq < placeholder.seq
    assert len(fake_ember.requests_to("/chat/completions")) == 1


async def test_picker_works_over_socket_mode(bot_ctx: CommandContext, slack: FakeSlack):
    fields = slack.slash_command("/steer", "formal", channel=CHANNEL)
    await slack.push("slash_commands", fields)
    picker = await reply_to(slack, fields)
    click = slack.block_action(picker.body["blocks"], "-0.3", channel=CHANNEL)
    envelope_id = await slack.push("interactive", click)
    await slack.wait_ack(envelope_id)
    confirmation = await reply_to(slack, click)
    assert '"formal writing style" (#2048) -0.30' in confirmation.body["text"]
    assert await edits(bot_ctx, slack) == {2048: -0.3}
