"""Three `ember-bot slack --http` processes sharing one PostgreSQL database, behind a "load
balancer" (this test) that spreads Slack's requests over them, against the loopback fakes.

300 chat turns over 20 channels (each channel's turns one after another, the channels at once;
every fourth event delivered to two processes), with three /steer commands at once in every
channel, each to another process. Then: no acknowledged steering change is lost, every message
is answered exactly once, each channel's history is in order, and one user's chat rate limit
holds in total across the processes. Finally one process is SIGKILLed mid-reply: the others
keep answering, one of them notes under the message that its reply was cut off, and the
killed turn is never answered a second time, not even when Slack delivers it again.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from bot.domain.types import SessionKey
from bot.usecases.turn_ledger import ORPHAN_NOTE, STALE_SECONDS
from storage.database import open_database
from storage.interface import StateStore
from tests.support.fake_ember import DEFAULT_CATALOG, FakeEmber, Latency
from tests.support.fake_slack import FakeSlack, form_body, signed_headers

PROCESSES = 3
CHANNELS = 20
TURNS_PER_CHANNEL = 15
STEERS_PER_CHANNEL = 3
SPAM_BURST = 4  # CHAT_USER_BURST: one user's turns back to back, across all processes
SPAM_MESSAGES = 12
FOOTER = "_variant "


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    url: str


class Cluster:
    """The processes, and the load balancer's side of Slack's HTTP requests."""

    def __init__(self, slack: FakeSlack, http: aiohttp.ClientSession) -> None:
        self.slack = slack
        self.http = http
        self.workers: list[Worker] = []

    def start(self, env: dict[str, str]) -> None:
        for _ in range(PROCESSES):
            port = free_port()
            command = [sys.executable, "-m", "adapters", "slack", "--http"]
            command += ["--host", "127.0.0.1", "--port", str(port)]
            process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
            self.workers.append(Worker(process, f"http://127.0.0.1:{port}/slack/events"))

    async def wait_ready(self) -> None:
        for worker in self.workers:
            for _ in range(600):
                assert worker.process.poll() is None, worker.process.stderr.read().decode()
                try:
                    async with self.http.get(worker.url) as response:
                        await response.read()
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"{worker.url} never answered")

    def stop(self) -> None:
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        for worker in self.workers:
            try:
                worker.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                worker.process.kill()

    async def post(self, worker: int, body: str, content_type: str = "") -> None:
        headers = signed_headers(self.slack.signing_secret, body, content_type=content_type)
        async with self.http.post(
            self.workers[worker].url, data=body.encode(), headers=headers
        ) as response:
            await response.read()
            assert response.status == 200

    async def mention(self, workers: list[int], channel: str, user: str, text: str, ts: str):
        event = {"type": "app_mention", "user": user, "channel": channel, "ts": ts}
        event["text"] = f"<@{self.slack.bot_user_id}> {text}"
        body = json.dumps(self.slack.event_callback(event, f"Ev{channel}{ts}"))
        await asyncio.gather(*(self.post(w, body, "application/json") for w in workers))

    async def steer(self, worker: int, channel: str, user: str, text: str) -> str:
        fields = self.slack.slash_command("/steer", text, user=user, channel=channel)
        await self.post(worker, form_body(fields))
        name = fields["response_url"].rsplit("/", 1)[1]
        [reply] = await self.slack.wait_for(
            lambda: self.slack.responses(name), within=60, what=f"/steer {text}"
        )
        return str(reply.body["text"])

    def replies(self, channel: str) -> list[str]:
        return [m.text for m in self.slack.posted(channel)]

    async def wait_replies(self, channel: str, count: int, within: float = 60) -> list[str]:
        def finished() -> list[str] | None:
            texts = self.replies(channel)
            done = [t for t in texts if FOOTER in t or "⚠️" in t]
            return texts if len(done) >= count else None

        return await self.slack.wait_for(finished, within, f"{count} replies in {channel}")


@pytest.fixture
async def cluster(postgres_url: str, fake_ember: FakeEmber) -> AsyncIterator[Cluster]:
    async with FakeSlack() as slack, aiohttp.ClientSession() as http:
        env = {
            **os.environ,
            "DATABASE_URL": postgres_url,
            "DATABASE_POOL_SIZE": "8",
            "GOODFIRE_BASE_URL": fake_ember.base_url,
            "GOODFIRE_API_KEY": fake_ember.api_key,
            "EMBER_MODEL": fake_ember.model,
            "SLACK_BOT_TOKEN": slack.bot_token,
            "SLACK_APP_TOKEN": "",
            "SLACK_SIGNING_SECRET": slack.signing_secret,
            "SLACK_API_URL": slack.api_url,
            "SLACK_NATIVE_STREAMING": "false",
            "CHAT_USER_BURST": str(SPAM_BURST),
            "CHAT_USER_PER_MINUTE": "0.001",  # nothing comes back during the test
            "CHAT_CHANNEL_PER_MINUTE": "0",
            "STEER_USER_PER_MINUTE": "0",
            "STEER_CHANNEL_PER_MINUTE": "0",
            "LOG_LEVEL": "WARNING",
        }
        group = Cluster(slack, http)
        group.start(env)
        try:
            await group.wait_ready()
            yield group
        finally:
            group.stop()


async def converse(cluster: Cluster, number: int, acked: dict[str, dict[int, float]]) -> None:
    """One channel's turns in order, every fourth delivered twice, and three concurrent /steer
    commands (each to another process) while its sixth turn runs."""
    channel = f"C{number:02d}"
    for turn in range(TURNS_PER_CHANNEL):
        worker = (number + turn) % PROCESSES
        workers = [worker, (worker + 1) % PROCESSES] if turn % 4 == 0 else [worker]
        user = f"U{number:02d}x{turn:02d}"  # each user chats once: the user limit stays out
        sent = cluster.mention(workers, channel, user, f"turn {turn}", f"{turn + 1}.0")
        if turn != 5:
            await sent
        else:
            results = await asyncio.gather(sent, *steering(cluster, number, channel))
            for text, feature in zip(results[1:], features(number), strict=True):
                if f"(#{feature}) +0.{number % 9 + 1}0" in text:
                    acked[channel][feature] = (number % 9 + 1) / 10
        await cluster.wait_replies(channel, turn + 1)


def features(number: int) -> list[int]:
    return [DEFAULT_CATALOG[(number + j) % len(DEFAULT_CATALOG)].index_in_sae for j in range(3)]


def steering(cluster: Cluster, number: int, channel: str) -> list[Any]:
    value = f"0.{number % 9 + 1}"
    return [
        cluster.steer(worker, channel, f"S{number:02d}{worker}", f"#{feature} {value}")
        for worker, feature in enumerate(features(number))
    ]


async def test_three_processes_share_one_database_correctly(
    cluster: Cluster, fake_ember, postgres_url
):
    acked: dict[str, dict[int, float]] = {f"C{n:02d}": {} for n in range(CHANNELS)}
    spam = [
        cluster.mention([n % PROCESSES], "CSPAM", "USPAM", f"spam {n}", f"{n + 1}.0")
        for n in range(SPAM_MESSAGES)
    ]
    await asyncio.gather(*(converse(cluster, n, acked) for n in range(CHANNELS)), *spam)

    database = await open_database(postgres_url, pool_size=2)
    store = database.store
    try:
        for number in range(CHANNELS):
            channel = f"C{number:02d}"
            replies = cluster.replies(channel)
            assert len(replies) == TURNS_PER_CHANNEL, replies  # one reply per message
            assert all(FOOTER in text for text in replies)
            await check_history(store, channel)
            assert len(acked[channel]) == STEERS_PER_CHANNEL  # all three were acknowledged
            variant = await store.get_variant(session(channel), "default")
            assert variant is not None
            stored = {index: edit.value for index, edit in variant.edits.items()}
            assert stored == acked[channel]  # none of the concurrent changes was lost

        texts = await cluster.wait_replies("CSPAM", SPAM_MESSAGES)
        assert sum(FOOTER in t for t in texts) == SPAM_BURST  # not SPAM_BURST per process
        assert sum("Slow down" in t for t in texts) == SPAM_MESSAGES - SPAM_BURST

        await kill_one_mid_reply(cluster, fake_ember, store)
    finally:
        await database.close()


def session(channel: str) -> SessionKey:
    return SessionKey("slack", "T0TEAM", channel)


async def check_history(store: StateStore, channel: str) -> None:
    history = await store.recent_messages(session(channel), 100)
    assert [m.role for m in history] == ["user", "assistant"] * TURNS_PER_CHANNEL
    users = [m.content for m in history if m.role == "user"]
    assert users == [f"turn {turn}" for turn in range(TURNS_PER_CHANNEL)]


async def kill_one_mid_reply(cluster: Cluster, fake_ember: FakeEmber, store: StateStore) -> None:
    fake_ember.latency = Latency(first_token=0.0, tokens_per_second=5)  # a reply takes seconds
    streams = len(fake_ember.requests_to("/chat/completions"))
    await cluster.mention([2], "CKILL", "UKILL", "a long story", "1.0")
    await cluster.slack.wait_for(
        lambda: len(fake_ember.requests_to("/chat/completions")) > streams, within=30
    )
    await cluster.slack.wait_for(lambda: cluster.replies("CKILL"), within=30, what="reply")
    await asyncio.sleep(0.5)  # a few tokens into the reply
    cluster.workers[2].process.send_signal(signal.SIGKILL)
    cluster.workers[2].process.wait()
    fake_ember.latency = Latency()

    for n, worker in enumerate([0, 1, 0, 1]):  # the others keep answering
        await cluster.mention([worker], "CAFTER", f"UAFTER{n}", f"after {n}", f"{n + 1}.0")
        await cluster.wait_replies("CAFTER", n + 1)
    assert len(cluster.replies("CAFTER")) == 4
    # Redelivered (a retry reaching a survivor), the killed turn is still not answered twice.
    await cluster.mention([0, 1], "CKILL", "UKILL", "a long story", "1.0")

    def noted() -> list[Any]:
        return [m for m in cluster.slack.posted("CKILL") if m.text == ORPHAN_NOTE]

    await cluster.slack.wait_for(noted, within=STALE_SECONDS + 10, what="note of the cut-off")
    await asyncio.sleep(2.5)  # two more heartbeats: nobody notes it again
    [note] = noted()
    assert note.thread_ts == "1.0"  # under the message whose reply was cut off
    assert len(cluster.replies("CKILL")) == 2  # the partial reply and the note, no second reply
    history = await store.recent_messages(session("CKILL"), 10)
    assert [m.content for m in history if m.role == "user"] == ["a long story"]
