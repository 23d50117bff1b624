"""The Slack bot in HTTP mode, end to end: the real AsyncApp served on loopback, signed requests
posted to it, and its Web API and response_url calls landing on a fake Slack."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from adapters.slack.app import SlackBot, http_server
from adapters.slack.chat import MESSAGE_BYTES, TOO_LONG_NOTE
from adapters.slack.manifest import build_manifest
from adapters.slack.render import plain_text
from bot.app import open_context
from bot.commands.registry import CommandContext
from bot.domain.types import SessionKey
from bot.settings import Settings
from tests.support.fake_ember import FakeEmber, Fault
from tests.support.fake_slack import (
    FakeSlack,
    SlackCall,
    SlackFault,
    form_body,
    interactive_body,
    settings_for,
    signed_headers,
)

CHANNEL = "C1GENERAL"
LISTENED = "C2LISTEN"
JSON = "application/json"
MARKER = "▌"
PINGS = "<!channel> <!here> <!everyone> <@U1ALICE> <#C1GENERAL>"


class StepClock:
    """Virtual time: every reading advances it, so a fast stream looks like a slow one."""

    def __init__(self, step: float) -> None:
        self.now = 0.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


@dataclass
class Harness:
    slack: FakeSlack
    ctx: CommandContext
    url: str
    http: aiohttp.ClientSession

    async def post(
        self,
        body: str,
        *,
        content_type: str = "",
        secret: str | None = None,
        timestamp: float | None = None,
        extra_headers: dict[str, str] | None = None,
    ) -> aiohttp.ClientResponse:
        headers = signed_headers(
            self.slack.signing_secret if secret is None else secret,
            body,
            timestamp=timestamp,
            content_type=content_type,
        )
        async with self.http.post(
            self.url, data=body.encode(), headers={**headers, **(extra_headers or {})}
        ) as response:
            await response.read()
            return response

    async def command(
        self, command: str, text: str, *, user: str = "U1ALICE", responses: int = 1
    ) -> list[SlackCall]:
        """POST a signed slash command; return the replies sent to its response_url."""
        fields = self.slack.slash_command(command, text, user=user, channel=CHANNEL)
        response = await self.post(form_body(fields))
        assert response.status == 200
        name = fields["response_url"].rsplit("/", 1)[1]
        return await self.slack.wait_for(
            lambda: len(self.slack.responses(name)) >= responses and self.slack.responses(name),
            what=f"reply to {command} {text}",
        )

    async def click(self, blocks: list[dict[str, Any]], button: str, **options: Any) -> SlackCall:
        payload = self.slack.block_action(blocks, button, channel=CHANNEL, **options)
        response = await self.post(interactive_body(payload))
        assert response.status == 200
        name = payload["response_url"].rsplit("/", 1)[1]
        replies = await self.slack.wait_for(lambda: self.slack.responses(name), what="reply")
        return replies[0]

    async def event(self, event: dict[str, Any], event_id: str, retry: int = 0) -> None:
        """POST a signed event callback; `retry` > 0 marks a redelivery, as Slack does."""
        retry_headers = {"X-Slack-Retry-Num": str(retry), "X-Slack-Retry-Reason": "timeout"}
        response = await self.post(
            json.dumps(self.slack.event_callback(event, event_id)),
            content_type=JSON,
            extra_headers=retry_headers if retry else None,
        )
        assert response.status == 200

    async def edits(self, channel: str = CHANNEL) -> dict[int, float]:
        session = SessionKey("slack", self.slack.team_id, channel)
        variant = await self.ctx.service.variants.active(session)
        return {index: edit.value for index, edit in variant.edits.items()}

    async def final_reply(self, channel: str = CHANNEL, *, replies: int = 1) -> list[str]:
        """Wait until `replies` chat answers are final; return all message texts, in order."""

        def finished() -> list[str] | None:
            texts = [m.text for m in self.slack.posted(channel)]
            done = sum("_variant " in t or "⚠️" in t for t in texts)
            return texts if done >= replies and not texts[-1].endswith(MARKER) else None

        return await self.slack.wait_for(finished, within=10, what="final chat reply")


Start = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def start(settings: Settings) -> AsyncIterator[Start]:
    """Start the bot in HTTP mode against a fresh fake Slack; settings overrides as kwargs."""
    async with AsyncExitStack() as stack:

        async def start_bot(
            *,
            clock: Callable[[], float] = time.monotonic,
            usergroups: dict[str, list[str]] | None = None,
            streaming: bool = False,
            slack_overrides: dict[str, Any] | None = None,
            **overrides: Any,
        ) -> Harness:
            # The fake stamps calls with virtual time too, but must not advance it.
            reading = (lambda: clock.now) if isinstance(clock, StepClock) else clock
            slack = FakeSlack(clock=reading, usergroups=usergroups or {}, streaming=streaming)
            await stack.enter_async_context(slack)
            values = settings.model_dump() | overrides
            bot_settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]
            ctx = await stack.enter_async_context(open_context(bot_settings))
            bot = SlackBot(ctx, settings_for(slack, **(slack_overrides or {})), clock=clock)
            runner = await stack.enter_async_context(http_server(bot, "127.0.0.1", 0))
            http = await stack.enter_async_context(aiohttp.ClientSession())
            url = f"http://127.0.0.1:{runner.addresses[0][1]}/slack/events"
            return Harness(slack, ctx, url, http)

        yield start_bot


def mention(text: str, ts: str = "1.5", channel: str = CHANNEL) -> dict[str, Any]:
    return {"type": "app_mention", "user": "U1ALICE", "channel": channel, "text": text, "ts": ts}


# --- slash commands ---------------------------------------------------------------------------


async def test_signed_steer_command_acks_at_once_then_names_the_feature_and_stores_the_edit(
    start: Start, fake_ember: FakeEmber
):
    bot = await start()
    fake_ember.fail_next("/features/search", Fault(delay=0.3))  # the answer comes after the ack
    fields = bot.slack.slash_command("/steer", "pirate 0.5", channel=CHANNEL)
    sent = time.monotonic()
    response = await bot.post(form_body(fields))
    acked = time.monotonic()
    assert response.status == 200 and acked - sent < 3.0
    name = fields["response_url"].rsplit("/", 1)[1]
    [reply] = await bot.slack.wait_for(lambda: bot.slack.responses(name))
    assert acked <= reply.at, "the ack must come before the answer"
    assert reply.body["response_type"] == "in_channel"
    assert '"pirate speech" (#1201) +0.50' in reply.body["text"]
    assert await bot.edits() == {1201: 0.5}


@pytest.mark.parametrize(
    "tamper",
    [
        {"secret": "not-the-signing-secret"},
        {"timestamp": time.time() - 6 * 60},
        {"unsigned": True},
    ],
    ids=["bad-signature", "stale-timestamp", "unsigned"],
)
async def test_unsigned_bad_or_stale_requests_get_401_and_change_nothing(
    start: Start, fake_ember: FakeEmber, tamper: dict[str, Any]
):
    bot = await start()
    body = form_body(bot.slack.slash_command("/steer", "pirate 0.5", channel=CHANNEL))
    if tamper.get("unsigned"):
        async with bot.http.post(bot.url, data=body, headers={"Content-Type": "x"}) as response:
            status = response.status
    else:
        status = (await bot.post(body, **tamper)).status
    assert status == 401
    session = SessionKey("slack", bot.slack.team_id, CHANNEL)
    assert await bot.ctx.service.steering.audit_log(session) == []
    assert bot.slack.calls == [], "no Web API or response_url calls"
    assert fake_ember.requests_to("/features/search") == []
    assert await bot.edits() == {}


async def test_steer_without_value_offers_a_picker_and_a_choice_applies_it(start: Start):
    bot = await start(slack_overrides={"command_prefix": "ember-"})
    [picker] = await bot.command("/ember-steer", "&lt;pirate&gt;")  # Slack's form of <pirate>
    assert picker.body["response_type"] == "ephemeral"
    blocks = picker.body["blocks"]
    assert 'Top matches for "&lt;pirate&gt;"' in blocks[0]["text"]["text"]
    select = blocks[1]["elements"][0]
    assert "#1201 pirate speech" in [o["text"]["text"] for o in select["options"]]
    assert "/ember-steer #" in blocks[2]["elements"][0]["text"], "tips use the real name"

    confirmation = await bot.click(blocks, "+0.5", select_value="1202")
    assert confirmation.body["replace_original"] is True
    assert '"talking like a pirate (nautical terms)" (#1202) +0.50' in confirmation.body["text"]
    assert await bot.edits() == {1202: 0.5}


async def test_only_configured_users_and_group_members_may_steer(start: Start):
    bot = await start(
        slack_overrides={"steer_users": "U1ALICE", "steer_usergroups": "S1STEER"},
        usergroups={"S1STEER": ["U3CAROL"]},
    )
    [denied] = await bot.command("/steer", "pirate 0.5", user="U2BOB")
    assert denied.body["response_type"] == "ephemeral"
    assert "don't have permission to use /steer" in denied.body["text"]
    [picker] = await bot.command("/steer", "pirate", user="U1ALICE")
    refused = await bot.click(picker.body["blocks"], "+0.8", user="U2BOB")
    assert "don't have permission" in refused.body["text"]
    assert "replace_original" not in refused.body, "the picker stays for someone allowed"
    assert await bot.edits() == {}

    await bot.command("/steer", "cats -0.3", user="U3CAROL")
    assert await bot.edits() == {3001: -0.3}
    [reset] = await bot.command("/reset", "", user="U3CAROL")
    assert "Cleared all steering" in reset.body["text"]
    assert await bot.edits() == {}
    assert len(bot.slack.api_calls("usergroups.users.list")) == 1, "membership is cached"


async def test_features_and_inspect_answer_with_bar_sections(start: Start):
    bot = await start()
    await bot.command("/steer", 'pirate=0.5 "formal writing"=-0.3')
    [features] = await bot.command("/features", "")
    assert features.outcome == "ok", "the fake accepts the blocks"
    title, rows = features.body["blocks"]
    assert title["text"]["text"] == '*Steering on variant "default"*'
    assert "pirate speech" in rows["text"]["text"] and "█" in rows["text"]["text"]

    await bot.event(mention("<@UBOT> ahoy matey, a pirate ship!"), "Ev1")
    await bot.final_reply()
    [inspect] = await bot.command("/inspect", "50")
    assert inspect.outcome == "ok"
    text = "".join(b["text"]["text"] for b in inspect.body["blocks"])
    assert "Top features in the last exchange" in text and "pirate speech" in text


async def test_rejected_blocks_fall_back_to_plain_text(start: Start):
    bot = await start()
    await bot.command("/steer", "pirate 0.5")
    bot.slack.fail_next("response", SlackFault.rejected("invalid_blocks"))
    rejected, retried = await bot.command("/features", "show", responses=2)
    assert rejected.outcome == "invalid_blocks" and "blocks" in rejected.body
    assert retried.outcome == "ok" and "blocks" not in retried.body
    assert "```Steering on variant" in retried.body["text"]
    assert "pirate speech" in retried.body["text"]


async def test_every_manifest_command_has_a_listener(start: Start):
    bot = await start()
    manifest = build_manifest(bot.ctx.registry)  # equal to slack/manifest.yml: test_slack_main
    for command in manifest["features"]["slash_commands"]:
        [reply] = await bot.command(command["command"], "")
        assert reply.outcome == "ok"


# --- chat -------------------------------------------------------------------------------------

LONG_REPLY = " ".join(
    f"Arr, line {i} & café ☕ a<b>c {PINGS if i % 20 == 0 else ''}" for i in range(300)
)


async def test_mention_streams_placeholder_then_paced_updates_then_final(
    start: Start, fake_ember: FakeEmber
):
    clock = StepClock(0.05)
    bot = await start(clock=clock, max_completion_tokens=8000)
    fake_ember.reply_text = lambda messages: LONG_REPLY
    await bot.event(mention(f"<@UBOT> tell a long story {PINGS}"), "Ev1")
    texts = await bot.final_reply()

    messages = bot.slack.posted(CHANNEL)
    assert len(messages) >= 3, "continued in new messages"
    assert messages[0].versions[0] == f"… {MARKER}", "a placeholder first"
    assert len(messages[0].versions) >= 4, "several updates before the rollover"
    for message in messages:
        gaps = [b - a for a, b in zip(message.times, message.times[1:], strict=False)]
        assert all(gap >= 1.0 for gap in gaps[:-1]), "at most one update a second"
        assert max(len(v.encode()) for v in message.versions) <= MESSAGE_BYTES < 4_000
    [refused] = bot.slack.api_calls("chat.startStream")  # this fake has no streaming API
    assert refused.outcome == "unknown_method"
    assert all(call.outcome == "ok" for call in bot.slack.calls if call is not refused)

    everything = "".join(v for m in messages for v in m.versions)
    for ping in ("<!channel>", "<!here>", "<!everyone>", "<@U1ALICE>", "<#C1GENERAL>"):
        assert ping not in everything
    assert "&lt;!channel&gt;" in everything and "café ☕ a&lt;b&gt;c" in everything
    assert texts[-1].endswith("\n\n_variant default · unsteered_")
    shown = plain_text("".join(texts).removesuffix("_variant default · unsteered_"))
    assert shown.split() == LONG_REPLY.split(), "nothing lost or repeated across messages"


async def test_redeliveries_bots_and_edits_are_ignored(start: Start, fake_ember: FakeEmber):
    bot = await start(slack_overrides={"listen_channel_ids": "C2LISTEN"})
    listened = {"channel": LISTENED, "channel_type": "channel"}
    event = mention("<@UBOT> hello", channel=LISTENED)
    await bot.event(event, "Ev1")
    await bot.event(event, "Ev1", retry=1)  # redelivered
    await bot.event({**event, **listened, "type": "message"}, "Ev2")  # the same message again
    ignored = [
        {"user": "UBOT", "text": "our own message"},
        {"bot_id": "B9", "user": "U9", "text": "another bot"},
        {"subtype": "message_changed", "message": {"text": "edited"}},
        {"subtype": "message_deleted"},
        {"user": "U1ALICE", "text": "not in a listened channel", "channel": CHANNEL},
    ]
    for number, fields in enumerate(ignored):
        other = {"type": "message", **listened, "ts": f"{2 + number}.0", **fields}
        await bot.event(other, f"Ev{3 + number}")
    await bot.event(
        {"type": "message", "channel_type": "im", "channel": "D1ALICE", "user": "U1ALICE"}
        | {"text": "hi in private", "ts": "8.0"},
        "Ev10",
    )
    await bot.event(
        {"type": "message", **listened, "user": "U1ALICE", "text": "hi all", "ts": "9.0"}, "Ev11"
    )

    # Order is not asserted: the first turn finds out that this Slack has no streaming API and
    # falls back to a new message, which may land under the second turn's placeholder.
    replies = await bot.final_reply(LISTENED, replies=2)
    assert len(replies) == 2
    assert sum(reply.startswith("You said: U1ALICE: hello") for reply in replies) == 1
    assert sum("You said: U1ALICE: hi all" in reply for reply in replies) == 1
    assert (await bot.final_reply("D1ALICE"))[0].startswith("You said: U1ALICE: hi in private")
    assert len(fake_ember.requests_to("/chat/completions")) == 3
    assert len(bot.slack.api_calls("chat.postMessage")) == 3


async def test_backend_failure_mid_stream_ends_with_a_clear_final_message(
    start: Start, fake_ember: FakeEmber
):
    bot = await start()
    fake_ember.fail_next("/chat/completions", Fault(die_after_tokens=4))
    await bot.event(mention("<@UBOT> one two three four five six"), "Ev1")
    [final] = await bot.final_reply()
    assert final.startswith("You said: U1ALICE: one")
    assert "⚠️ Reply cut short:" in final and MARKER not in final


async def test_an_empty_mention_gets_a_hint_instead_of_a_reply(start: Start):
    bot = await start()
    await bot.event(mention("<@UBOT>"), "Ev1")
    [final] = await bot.final_reply()
    assert final == "⚠️ Say something to chat with the model."


async def test_rate_limited_and_too_long_updates_still_end_in_a_final_message(
    start: Start, fake_ember: FakeEmber
):
    bot = await start()
    bot.slack.fail_next("chat.update", SlackFault.rate_limited(1))
    await bot.event(mention("<@UBOT> first"), "Ev1")
    [final] = await bot.final_reply()
    updates = bot.slack.api_calls("chat.update")
    assert [u.outcome for u in updates] == ["ratelimited", "ok"]
    assert updates[1].at - updates[0].at >= 1.0, "waited for Retry-After"
    assert final.startswith("You said: U1ALICE: first")

    bot.slack.fail_next("chat.update", SlackFault.rejected("msg_too_long"))
    await bot.event(mention("<@UBOT> second", ts="1.6"), "Ev2")
    second = (await bot.final_reply(replies=2))[-1]
    assert second.startswith("You said: U1ALICE: second") and second.endswith(TOO_LONG_NOTE)


async def test_during_shutdown_new_chats_and_commands_are_refused_politely(start: Start):
    bot = await start()
    assert await bot.ctx.service.lifecycle.drain(grace=0) == 0  # stop taking new work
    await bot.event(mention("<@UBOT> still there?"), "Ev1")
    [refusal] = await bot.final_reply()
    assert refusal == "⚠️ The bot is restarting — try again in a minute."
    [reply] = await bot.command("/steer", "pirate 0.5")
    assert reply.body["text"] == refusal.removeprefix("⚠️ ")
    assert await bot.edits() == {}
