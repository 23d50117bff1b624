"""The fake Slack refuses what Slack refuses on the AI-app methods, through the real slack_sdk
client: what the adapter tests rely on when they see "ok"."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from typing import Any

import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from tests.support.fake_slack import FakeSlack

CHANNEL = "C1GENERAL"


@pytest.fixture
async def client() -> AsyncIterator[tuple[FakeSlack, AsyncWebClient]]:
    async with FakeSlack(streaming=True) as slack:
        yield slack, AsyncWebClient(token=slack.bot_token, base_url=slack.api_url)


async def refusal(call: Awaitable[Any]) -> str:
    with pytest.raises(SlackApiError) as raised:
        await call
    return str(raised.value.response["error"])


async def test_streams_in_channels_need_their_recipient_and_texts_stay_under_12000(client):
    slack, web = client
    start = web.chat_startStream(channel=CHANNEL, thread_ts="1.0", markdown_text="hi")
    assert await refusal(start) == "missing_recipient_user_id"
    opened = await web.chat_startStream(
        channel=CHANNEL, thread_ts="1.0", recipient_user_id="U1", recipient_team_id="T1"
    )
    ts = opened["ts"]
    too_long = web.chat_appendStream(channel=CHANNEL, ts=ts, markdown_text="x" * 12_001)
    assert await refusal(too_long) == "msg_too_long"
    assert await refusal(web.chat_appendStream(channel=CHANNEL, ts=ts)) == "no_text"
    await web.chat_appendStream(channel=CHANNEL, ts=ts, markdown_text="hello")
    await web.chat_stopStream(channel=CHANNEL, ts=ts, markdown_text=" world")
    assert slack.ai.streams[ts].text == "hello world"
    late = web.chat_appendStream(channel=CHANNEL, ts=ts, markdown_text="!")
    assert await refusal(late) == "message_not_in_streaming_state"
    # a DM needs no recipient
    assert (await web.chat_startStream(channel="D1", thread_ts="1.0"))["ok"]


async def test_feedback_buttons_and_prompts_are_checked_like_slack(client):
    slack, web = client
    opened = await web.chat_startStream(channel="D1", thread_ts="1.0", markdown_text="hi")
    label = {"type": "plain_text", "text": "👍" * 76}
    button = {"text": label, "value": "v"}
    feedback = {"type": "feedback_buttons", "positive_button": button, "negative_button": button}
    blocks = [{"type": "context_actions", "elements": [feedback]}]
    stop = web.chat_stopStream(channel="D1", ts=opened["ts"], blocks=blocks)
    assert await refusal(stop) == "invalid_blocks"
    prompts = [{"title": f"t{i}", "message": "m"} for i in range(5)]
    too_many = web.assistant_threads_setSuggestedPrompts(channel_id="D1", prompts=prompts)
    assert await refusal(too_many) == "invalid_arguments"
    status = web.assistant_threads_setStatus(channel_id="D1", thread_ts="", status="x")
    assert await refusal(status) == "invalid_arguments"
    assert slack.ai.suggested_prompts == [] and slack.ai.statuses == []


async def test_without_the_streaming_api_the_methods_are_unknown():
    async with FakeSlack() as slack:
        web = AsyncWebClient(token=slack.bot_token, base_url=slack.api_url)
        start = web.chat_startStream(channel="D1", thread_ts="1.0")
        assert await refusal(start) == "unknown_method"
