"""Slack's AI-app surfaces through the real Bolt app in HTTP mode against the fake Slack: native
streaming (and falling back to chat.update), the thread status, 👍/👎 feedback into the audit
log, and suggested prompts in assistant threads."""

from __future__ import annotations

import json
import math

from adapters.slack.render import escape, plain_text
from adapters.slack.streams import STREAM_BUFFER
from bot.domain.types import Actor, SessionKey
from tests.adapters.slack.test_slack_http import (
    CHANNEL,
    PINGS,
    Harness,
    Start,
    mention,
    start,
)
from tests.support.fake_ember import FakeEmber
from tests.support.fake_slack import SlackFault, interactive_body
from tests.support.fake_slack_ai import StreamedMessage, feedback_click

__all__ = ["start"]  # the HTTP-mode harness, shared

FOOTER = "_variant default · unsteered_"
STORY = " ".join(
    f"Arr, line {i} & café ☕ a<b>c {PINGS if i % 20 == 0 else ''}" for i in range(120)
)


async def stopped_stream(bot: Harness, count: int = 1) -> StreamedMessage:
    """The `count`-th reply stream in CHANNEL, once it is stopped."""
    streams = await bot.slack.wait_for(
        lambda: [s for s in bot.slack.ai.streams_in(CHANNEL) if s.stopped][count - 1 :],
        within=10,
        what="a stopped stream",
    )
    return streams[0]


def words_of(markdown: str) -> list[str]:
    return plain_text(markdown).split()


async def test_a_reply_streams_natively_in_buffer_sized_calls_without_chat_update(
    start: Start, fake_ember: FakeEmber
):
    bot = await start(streaming=True, max_completion_tokens=8000)
    fake_ember.reply_text = lambda messages: STORY
    await bot.event(mention("<@UBOT> tell a long story", ts="1.5"), "Ev1")
    stream = await stopped_stream(bot)

    api = [c.name for c in bot.slack.calls if c.kind == "api"]
    assert api.count("chat.startStream") == 1 and api.count("chat.stopStream") == 1
    appends = api.count("chat.appendStream")
    tokens = len(STORY.split())
    assert 1 <= appends <= math.ceil(len(escape(STORY)) / STREAM_BUFFER), "one call a buffer"
    assert appends < tokens / 10, "not a call per token"
    assert "chat.update" not in api and "chat.postMessage" not in api
    assert all(c.outcome == "ok" for c in bot.slack.calls)

    [start_call] = bot.slack.api_calls("chat.startStream")
    assert start_call.body["thread_ts"] == "1.5", "a reply in the thread of the message"
    assert (stream.recipient_user_id, stream.recipient_team_id) == ("U1ALICE", bot.slack.team_id)
    for ping in ("<!channel>", "<!here>", "<!everyone>", "<@U1ALICE>", "<#C1GENERAL>"):
        assert ping not in stream.text, "model output pings nobody"
    body, footer = stream.text.rsplit("\n\n", 1)
    assert words_of(body) == STORY.split(), "every token, once, in order"
    assert footer == FOOTER
    [feedback] = stream.blocks or []
    assert feedback["type"] == "context_actions"


async def test_the_thread_status_names_the_steering_and_is_cleared(
    start: Start, fake_ember: FakeEmber
):
    bot = await start(streaming=True)
    await bot.command("/steer", "pirate 0.8")
    await bot.event(mention("<@UBOT> ahoy", ts="2.5"), "Ev1")
    await stopped_stream(bot)
    await bot.slack.wait_for(lambda: len(bot.slack.ai.statuses) >= 2, what="status cleared")
    shown, cleared = bot.slack.ai.statuses
    assert (shown.channel_id, shown.thread_ts) == (CHANNEL, "2.5")
    assert shown.status == "is steering pirate speech +0.8…"
    assert "Steering pirate speech +0.8…" in shown.loading_messages
    assert (cleared.thread_ts, cleared.status) == ("2.5", "")
    status_calls = [c.seq for c in bot.slack.api_calls("assistant.threads.setStatus")]
    [started] = bot.slack.api_calls("chat.startStream")
    assert status_calls[0] < started.seq < status_calls[1]


async def test_a_refused_stream_falls_back_to_chat_update_and_keeps_every_token(
    start: Start, fake_ember: FakeEmber
):
    bot = await start(streaming=False, max_completion_tokens=8000)  # Slack answers unknown_method
    fake_ember.reply_text = lambda messages: STORY
    await bot.event(mention("<@UBOT> tell a long story"), "Ev1")
    texts = await bot.final_reply()
    [refused] = bot.slack.api_calls("chat.startStream")
    assert refused.outcome == "unknown_method"
    assert bot.slack.api_calls("chat.update"), "streamed by editing instead"
    shown = plain_text("".join(texts).removesuffix(FOOTER))
    assert shown.split() == STORY.split(), "nothing lost or repeated"

    await bot.event(mention("<@UBOT> again", ts="1.6"), "Ev2")
    await bot.final_reply(replies=2)
    assert len(bot.slack.api_calls("chat.startStream")) == 1, "not asked again"


async def test_a_stream_slack_closes_early_carries_on_under_it_with_every_token(
    start: Start, fake_ember: FakeEmber
):
    bot = await start(streaming=True, max_completion_tokens=8000)
    bot.slack.ai.expire_after_appends = 2
    fake_ember.reply_text = lambda messages: STORY
    await bot.event(mention("<@UBOT> tell a long story", ts="3.5"), "Ev1")
    texts = await bot.final_reply()
    [stream] = bot.slack.ai.streams_in(CHANNEL)
    assert stream.appends == 2 and stream.stopped
    assert [c.outcome for c in bot.slack.api_calls("chat.appendStream")][-1] == (
        "message_not_in_streaming_state"
    )
    assert all(m.thread_ts == "3.5" for m in bot.slack.posted(CHANNEL)), "under the stream"
    carried_on = "".join(texts).removesuffix(FOOTER)
    assert words_of(stream.text) + plain_text(carried_on).split() == STORY.split()


async def test_a_feedback_click_is_stored_in_the_audit_log_with_the_steering(
    start: Start, fake_ember: FakeEmber
):
    bot = await start(streaming=True)
    await bot.command("/steer", "pirate 0.5")
    await bot.event(mention("<@UBOT> ahoy"), "Ev1")
    stream = await stopped_stream(bot)
    click = feedback_click(
        stream,
        good=True,
        team_id=bot.slack.team_id,
        response_url=bot.slack.response_url("feedback-1"),
        user="U2BOB",
    )
    response = await bot.post(interactive_body(click))
    assert response.status == 200
    [thanks] = await bot.slack.wait_for(lambda: bot.slack.responses("feedback-1"), what="thanks")
    assert thanks.body["response_type"] == "ephemeral"

    entries = await bot.ctx.service.steering.audit_log(_session(bot))
    feedback = entries[0]
    assert feedback.action == "feedback" and feedback.actor == "u2bob (U2BOB)"
    assert feedback.detail == {
        "rating": "good",
        "variant": "default",
        "steering": "pirate speech +0.5",
    }
    [history] = await bot.command("/history", "steering")
    assert "rated a reply 👍 (pirate speech +0.5) (variant default)" in history.body["text"]


async def test_a_tampered_feedback_value_changes_nothing(start: Start, fake_ember: FakeEmber):
    bot = await start(streaming=True)
    await bot.event(mention("<@UBOT> ahoy"), "Ev1")
    stream = await stopped_stream(bot)
    clicks = [
        feedback_click(
            stream,
            good=good,
            team_id=bot.slack.team_id,
            response_url=bot.slack.response_url(f"feedback-{number}"),
            user="U2BOB",
        )
        for number, good in enumerate((False, False))
    ]
    clicks[0]["actions"][0]["value"] = json.dumps({"rating": "meh", "variant": "default"})
    for click in clicks:
        await bot.post(interactive_body(click))
    await bot.slack.wait_for(lambda: bot.slack.responses("feedback-1"), what="thanks")
    assert bot.slack.responses("feedback-0") == [], "no thanks for a malformed click"
    [entry] = await bot.ctx.service.steering.audit_log(_session(bot))
    assert entry.detail["rating"] == "bad"


async def test_refusals_stream_a_note_and_offer_no_feedback(start: Start):
    bot = await start(streaming=True)
    await bot.event(mention("<@UBOT>"), "Ev1")
    stream = await stopped_stream(bot)
    assert stream.text == "⚠️ Say something to chat with the model."
    assert stream.blocks is None


async def test_an_assistant_thread_offers_prompts_from_the_steering_and_popular_features(
    start: Start,
):
    bot = await start(streaming=True)
    dm = "D1ALICE"
    session = _session(bot, dm)
    await bot.ctx.service.steering.steer(session, [("pirate", 0.8)], _actor())
    started = {
        "type": "assistant_thread_started",
        "assistant_thread": {
            "user_id": "U1ALICE",
            "channel_id": dm,
            "thread_ts": "5.5",
            "context": {"channel_id": CHANNEL, "team_id": bot.slack.team_id},
        },
        "event_ts": "5.6",
    }
    await bot.event(started, "Ev1")
    [call] = await bot.slack.wait_for(
        lambda: bot.slack.api_calls("assistant.threads.setSuggestedPrompts"), what="prompts"
    )
    assert call.outcome == "ok" and call.body["thread_ts"] == "5.5"
    titles = [p["title"] for p in call.body["prompts"]]
    assert titles[0] == "Chat steered by pirate speech +0.8"
    assert "What would steering “pirate speech” change?" in titles
    assert 1 <= len(titles) <= 4


def _session(bot: Harness, channel: str = CHANNEL) -> SessionKey:
    return SessionKey("slack", bot.slack.team_id, channel)


def _actor() -> Actor:
    return Actor("U1ALICE", "alice")


async def test_a_message_in_an_assistant_thread_streams_its_reply_into_that_thread(
    start: Start, fake_ember: FakeEmber
):
    bot = await start(streaming=True)
    message = {"type": "message", "channel_type": "im", "channel": "D1ALICE", "user": "U1ALICE"}
    await bot.event(message | {"text": "ahoy", "ts": "6.1", "thread_ts": "6.0"}, "Ev1")
    [stream] = await bot.slack.wait_for(
        lambda: [s for s in bot.slack.ai.streams_in("D1ALICE") if s.stopped], what="the reply"
    )
    assert stream.thread_ts == "6.0"
    assert words_of(stream.text)[:4] == ["You", "said:", "U1ALICE:", "ahoy"]
    await bot.slack.wait_for(lambda: len(bot.slack.ai.statuses) == 2, what="status cleared")
    assert [(s.thread_ts, bool(s.status)) for s in bot.slack.ai.statuses] == [
        ("6.0", True),
        ("6.0", False),
    ]


async def test_a_piece_slack_refuses_ends_the_stream_and_the_rest_follows_under_it(
    start: Start, fake_ember: FakeEmber
):
    bot = await start(streaming=True, max_completion_tokens=8000)
    fake_ember.reply_text = lambda messages: STORY
    bot.slack.fail_next("chat.appendStream", SlackFault(), SlackFault.rejected("msg_too_long"))
    await bot.event(mention("<@UBOT> tell a long story", ts="4.5"), "Ev1")
    texts = await bot.final_reply()
    [stream] = bot.slack.ai.streams_in(CHANNEL)
    assert stream.stopped and stream.appends == 1, "stopped, not left streaming"
    [stop] = bot.slack.api_calls("chat.stopStream")
    assert stop.outcome == "ok" and not stop.body.get("chunks")
    carried_on = plain_text("".join(texts).removesuffix(FOOTER)).split()
    assert words_of(stream.text) + carried_on == STORY.split(), "every token, once"
