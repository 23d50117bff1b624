"""Outages at run time do not end the bot: each connection (the backend, Discord's REST API,
Slack's Web API and Socket Mode) is cut for a second or two in the middle of a conversation,
through a relay the test controls. The bot says what it cannot do, recovers by itself, answers
the next message, and no reply is lost or posted twice.

Who does what: discord.py reconnects and resumes its gateway; slack_sdk reconnects Socket Mode
(through apps.connections.open, once the Web API answers again); SQLite waits out a short lock
(busy timeout). The bot adds the circuit breaker and its user-facing line for the backend, and
retries, on Discord and Slack, the requests that could not even connect (nothing was sent, so
nothing can be posted twice).
"""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any
from urllib.parse import urlsplit

import pytest
from discord.http import Route

from adapters.discord.app import EmberDiscordBot
from adapters.discord.settings import DiscordSettings
from adapters.slack.app import SlackBot, socket_mode
from bot.app import open_context
from bot.commands.registry import CommandContext
from bot.settings import Settings
from tests.support.fake_discord import (
    API_PREFIX,
    APPLICATION_ID,
    GENERAL_CHANNEL,
    TOKEN,
    FakeDiscord,
    FakeGateway,
    FakeUser,
)
from tests.support.fake_ember import FakeEmber, Latency
from tests.support.fake_slack import FakeSlack, settings_for

MEMBER = FakeUser(502, "Max")
CHANNEL = "C1GENERAL"
OUTAGE = 1.5  # seconds each connection stays cut
UNAVAILABLE = "The model backend is unavailable right now"


class Link:
    """A TCP relay in front of a loopback service. `cut()` drops every open connection (as a
    network failure does) and refuses new ones; `restore()` listens again on the same port."""

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Link:
        await self.restore()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.cut()

    async def restore(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._open |= {writer, upstream_writer}
        await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
        self._open -= {writer, upstream_writer}


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    except OSError:
        pass
    finally:
        sink.close()


@pytest.fixture
async def backend(fake_ember: FakeEmber) -> AsyncIterator[Link]:
    async with Link(fake_ember.base_url) as link:
        yield link


@pytest.fixture
def resilient(settings: Settings, backend: Link) -> Settings:
    """The bot's settings with the backend behind the relay, and short outage timings."""
    return settings.model_copy(
        update={
            "goodfire_base_url": backend.url,
            "backend_deadline_seconds": 1.0,
            "breaker_failures": 1,
            "breaker_cooldown_seconds": 0.3,
        }
    )


# --------------------------------------------------------------------------- Discord


class DiscordChat:
    """A Discord bot (discord.py, in-process) whose REST API goes through `link`."""

    def __init__(self, fake: FakeDiscord, gateway: FakeGateway, ctx: CommandContext) -> None:
        self.fake = fake
        self.gateway = gateway
        self.ctx = ctx

    def say(self, text: str) -> None:
        self.gateway.message(MEMBER, f"<@{APPLICATION_ID}> {text}", mentions_bot=True)

    def replies(self) -> list[str]:
        return self.fake.channel_messages(GENERAL_CHANNEL)

    def finished(self) -> list[str]:
        return [m for m in self.replies() if "-# variant" in m and not m.endswith("▌")]

    async def reply(self, number: int) -> str:
        """The `number`-th reply (from 1), once it is final."""
        await self.fake.wait_for(lambda: len(self.finished()) >= number)
        return self.finished()[number - 1]


@pytest.fixture
async def discord_chat(
    resilient: Settings, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[DiscordChat, Link]]:
    async with AsyncExitStack() as stack:
        fake = await stack.enter_async_context(FakeDiscord())
        link = await stack.enter_async_context(Link(fake.api_base))
        monkeypatch.setattr(Route, "BASE", f"{link.url}{API_PREFIX}")
        ctx = await stack.enter_async_context(open_context(resilient))
        bot = EmberDiscordBot(ctx, DiscordSettings(_env_file=None), guild_ready_timeout=0.01)  # type: ignore[call-arg]
        await stack.enter_async_context(bot)
        await bot.start_up(TOKEN)
        gateway = FakeGateway(bot, fake)
        gateway.connect()
        yield DiscordChat(fake, gateway, ctx), link


async def test_backend_outage_is_told_to_the_user_and_ridden_out(
    discord_chat: tuple[DiscordChat, Link],
    backend: Link,
    fake_ember: FakeEmber,
    caplog: pytest.LogCaptureFixture,
):
    chat, _ = discord_chat
    caplog.set_level(logging.INFO, logger="bot.backend.breaker")
    chat.say("before")
    assert "before" in await chat.reply(1)

    await backend.cut()
    chat.say("during")
    assert UNAVAILABLE in await chat.reply(2)
    metrics = chat.ctx.service.metrics.exposition().decode()
    assert re.search(r'ember_errors_total\{kind="backend_unavailable"\} [1-9]', metrics)
    assert "ember_backend_breaker_open 1" in metrics

    await asyncio.sleep(OUTAGE)
    await backend.restore()
    await asyncio.sleep(0.3)  # the breaker's cool-down
    chat.say("after")
    assert "You said" in (third := await chat.reply(3)) and "after" in third

    assert len(chat.replies()) == 3, "one reply per message, none doubled"
    asked = [r.json["messages"][-1]["content"] for r in fake_ember.requests_to("/completions")]
    assert sum("before" in text for text in asked) == sum("after" in text for text in asked) == 1
    assert "ember_backend_breaker_open 0" in chat.ctx.service.metrics.exposition().decode()
    logged = [record.getMessage() for record in caplog.records]
    assert any("refusing calls" in line for line in logged)  # the outage, in the logs
    assert any("answers again" in line for line in logged)  # and its end


async def test_discord_outage_delays_the_reply_but_loses_and_doubles_nothing(
    discord_chat: tuple[DiscordChat, Link],
):
    chat, link = discord_chat
    chat.say("before")
    assert "before" in await chat.reply(1)

    await link.cut()
    await asyncio.sleep(0.1)  # the client sees its open connections drop
    chat.say("during")  # the gateway brings it; posting the reply cannot connect
    await asyncio.sleep(OUTAGE)
    assert len(chat.replies()) == 1
    await link.restore()
    assert "during" in await chat.reply(2)

    chat.say("after")
    assert "after" in await chat.reply(3)
    assert len(chat.replies()) == 3, "one reply per message, none doubled"


async def test_discord_outage_mid_reply_delays_its_end_but_keeps_it_whole(
    discord_chat: tuple[DiscordChat, Link], fake_ember: FakeEmber
):
    chat, link = discord_chat
    fake_ember.latency = Latency(tokens_per_second=5)  # a reply of ~2 s
    chat.say("tell me a long story about sailing ships")
    await chat.fake.wait_for_call("PATCH", r"/channels/\d+/messages/\d+")  # it is posted
    await link.cut()
    await asyncio.sleep(OUTAGE)
    await link.restore()
    final = await chat.reply(1)
    assert final.startswith("You said:") and "sailing ships" in final and "⚠" not in final
    assert len(chat.replies()) == 1


async def test_a_briefly_locked_database_only_delays_the_reply(
    discord_chat: tuple[DiscordChat, Link], resilient: Settings
):
    chat, _ = discord_chat
    chat.say("before")
    assert "before" in await chat.reply(1)

    holder = sqlite3.connect(resilient.database_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process writing, for a second
    chat.say("during")
    await asyncio.sleep(1.0)
    assert len(chat.finished()) == 1
    holder.execute("ROLLBACK")
    holder.close()
    assert "during" in await chat.reply(2)
    assert len(chat.replies()) == 2


# --------------------------------------------------------------------------- Slack


@pytest.fixture
async def slack_chat(resilient: Settings) -> AsyncIterator[tuple[FakeSlack, Link]]:
    async with AsyncExitStack() as stack:
        slack = await stack.enter_async_context(FakeSlack())
        link = await stack.enter_async_context(Link(slack.base_url))
        slack.base_url = link.url  # the Socket Mode URL it hands out goes through the relay too
        ctx = await stack.enter_async_context(open_context(resilient))
        bot = SlackBot(ctx, settings_for(slack))
        await stack.enter_async_context(socket_mode(bot, slack.app_token, ping_interval=0.2))
        yield slack, link


async def restore_soon(link: Link) -> None:
    await asyncio.sleep(0.5)
    await link.restore()


def mention(slack: FakeSlack, text: str, number: int) -> dict[str, Any]:
    event = {"type": "app_mention", "user": "U1ALICE", "channel": CHANNEL, "ts": f"{number}.5"}
    return slack.event_callback({**event, "text": f"<@UBOT> {text}"}, f"Ev{number}")


def slack_replies(slack: FakeSlack) -> list[str]:
    return [m.text for m in slack.posted(CHANNEL) if "_variant default" in m.text]


async def test_slack_outage_reconnects_socket_mode_and_answers_what_came_meanwhile(
    slack_chat: tuple[FakeSlack, Link],
):
    slack, link = slack_chat
    await slack.push("events_api", mention(slack, "before", 1))
    await slack.wait_for(lambda: len(slack_replies(slack)) == 1, within=10, what="reply 1")
    connections = len(slack.api_calls("apps.connections.open"))

    await link.cut()  # the websocket drops, the Web API refuses connections
    await asyncio.sleep(OUTAGE)
    restoring = asyncio.create_task(restore_soon(link))
    # Slack holds this event until the app is connected again
    await slack.push("events_api", mention(slack, "during", 2))
    await slack.wait_for(lambda: len(slack_replies(slack)) == 2, within=15, what="reply 2")
    await restoring
    assert len(slack.api_calls("apps.connections.open")) > connections  # slack_sdk reconnected

    await slack.push("events_api", mention(slack, "after", 3))
    await slack.wait_for(lambda: len(slack_replies(slack)) == 3, within=10, what="reply 3")
    replies = slack_replies(slack)
    assert [("before" in r, "during" in r, "after" in r) for r in replies] == [
        (True, False, False),
        (False, True, False),
        (False, False, True),
    ], replies


async def test_slack_outage_mid_reply_delays_its_end_but_keeps_it_whole(
    slack_chat: tuple[FakeSlack, Link], fake_ember: FakeEmber
):
    slack, link = slack_chat
    fake_ember.latency = Latency(tokens_per_second=5)  # a reply of ~2 s: it ends while cut
    await slack.push("events_api", mention(slack, "tell me about sailing ships", 1))
    await slack.wait_for(lambda: slack.api_calls("chat.update"), what="the reply, posted")
    await link.cut()
    await asyncio.sleep(2 * OUTAGE)  # longer than slack_sdk's own retry waits
    await link.restore()
    [final] = await slack.wait_for(lambda: slack_replies(slack), within=20, what="final reply")
    assert final.startswith("You said:") and "sailing ships" in final and "⚠" not in final
    assert len(slack.posted(CHANNEL)) == 1
