"""Soaks: hundreds of chat turns against a misbehaving backend, and loop health under 429s.

Counts are sized for CI; EMBER_SOAK_TURNS scales the fault soak up for a longer run.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import random
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from multiprocessing.connection import Connection
from typing import Any

import pytest

from bot.app import open_context
from bot.domain.errors import BackendTimeoutError, BackendUnavailableError, RateLimitedError
from bot.domain.summary import steering_footer
from bot.domain.types import Actor, SessionKey
from bot.settings import Settings
from tests.support.fake_ember import FakeEmber, Fault
from tests.support.reliability_helpers import WRITING_MARKER, Turn, chat_turn, loop_watch, relaxed

TURNS = int(os.environ.get("EMBER_SOAK_TURNS", "300"))
CHANNELS = 20
STREAMS = 200
MAX_STALL = 0.050

pytestmark = pytest.mark.soak


def random_faults(count: int, rng: random.Random) -> list[Fault]:
    """About 20% faults: 429s, 500s, timeouts and streams cut halfway, 5% each."""
    kinds = [
        Fault(status=429, retry_after=0.05),
        Fault(status=500),
        Fault(delay=1.5),  # the deadline is 1 s
        Fault(die_after_tokens=3),
    ]
    return [rng.choice(kinds) if rng.random() < 0.2 else Fault() for _ in range(count)]


class ReplyCounter:
    """The fake's reply text, counting how often each turn's reply was generated."""

    def __init__(self) -> None:
        self.generated: Counter[str] = Counter()

    def __call__(self, messages: list[dict[str, Any]]) -> str:
        newest = messages[-1]["content"].split("\n")[-1]  # unanswered turns get merged
        self.generated[newest] += 1
        return f"Reply to {newest}, with some more words after it."


@asynccontextmanager
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """Everything the loop's exception handler hears, "Task exception was never retrieved"
    included (reported when such a task is collected, hence the gc at the end)."""
    loop = asyncio.get_running_loop()
    heard: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: heard.append(context))
    try:
        yield heard
    finally:
        gc.collect()
        await asyncio.sleep(0)
        loop.set_exception_handler(previous)


async def test_fault_soak_every_turn_ends_cleanly_once(settings, fake_ember, caplog):
    rng = random.Random(2024)
    replies = ReplyCounter()
    fake_ember.reply_text = replies
    fake_ember.fail_next("/chat/completions", *random_faults(2 * TURNS, rng))
    soak = relaxed(settings, backend_deadline_seconds=1.0)
    channels = [SessionKey("soak", "w", f"c{n}") for n in range(CHANNELS)]
    users = [Actor(f"u{n}", f"User{n}") for n in range(7)]

    async def channel_turns(ctx, channel: SessionKey) -> list[tuple[Actor, Turn]]:
        turns = []
        for number in range(TURNS // CHANNELS):
            actor = rng.choice(users)
            text = f"turn {number} in {channel.channel}"
            turns.append((actor, await chat_turn(ctx, channel, actor, text, edit_interval=0.05)))
        return turns

    async with loop_errors() as heard, open_context(soak) as ctx:
        per_channel = await asyncio.gather(*(channel_turns(ctx, c) for c in channels))
        histories = [await ctx.service._store.recent_messages(c, 1000) for c in channels]
        exported = ctx.service.metrics.exposition().decode()

    outcomes: Counter[str] = Counter()
    for turns, history in zip(per_channel, histories, strict=True):
        expected_history = []
        for actor, turn in turns:
            check_turn(actor, turn, replies)
            outcomes[type(turn.result.error).__name__ if turn.result.error else "ok"] += 1
            expected_history.append(("user", f"{actor.display_name}: {turn.text}"))
            if turn.result.text:
                expected_history.append(("assistant", turn.result.text))
        stored = [(m.role, f"{m.author}: {m.content}" if m.author else m.content) for m in history]
        assert stored == expected_history  # nothing lost, nothing doubled
    assert sum(outcomes.values()) == TURNS
    assert outcomes["ok"] >= TURNS * 0.7 and len(outcomes) >= 3, outcomes
    assert heard == [] and not [r for r in caplog.records if r.name == "asyncio"]
    assert f'ember_chat_turns_total{{outcome="ok"}} {outcomes["ok"]}.0' in exported
    assert "ember_active_streams 0.0" in exported


def check_turn(actor: Actor, turn: Turn, replies: ReplyCounter) -> None:
    """Ended in a reply or a clear error, final (no writing marker), generated at most once."""
    newest = f"{actor.display_name}: {turn.text}"
    full = f"Reply to {newest}, with some more words after it."
    assert turn.refusal == ""
    assert len(turn.sink.messages) == 1
    (final,) = turn.sink.messages
    assert WRITING_MARKER not in final
    footer = steering_footer(turn.result.variant)
    error = turn.result.error
    if error is None:
        assert final == f"{full}\n\n{footer}"
    else:
        assert isinstance(error, BackendUnavailableError | BackendTimeoutError | RateLimitedError)
        assert final.endswith(f"⚠ Reply cut short: {error.user_message}\n{footer}")
        assert full.startswith(turn.result.text)
    assert replies.generated[newest] <= 1  # never streamed twice, so never posted twice


def serve_rate_limited_fake(control: Connection) -> None:
    """A FakeEmber in its own process (as a real backend is) answering every chat with 429."""
    asyncio.run(_serve_rate_limited_fake(control))


async def _serve_rate_limited_fake(control: Connection) -> None:
    async with FakeEmber() as fake:
        fake.fail_next("/chat/completions", *[Fault(status=429, retry_after=0.05)] * 100_000)
        control.send((fake.base_url, fake.api_key, fake.model))
        await asyncio.to_thread(control.poll, None)  # until the test hangs up


async def test_loop_never_stalls_with_200_streams_answered_429(tmp_path):
    mp = multiprocessing.get_context("forkserver")
    control, remote = mp.Pipe()
    backend = mp.Process(target=serve_rate_limited_fake, args=(remote,), daemon=True)
    backend.start()
    try:
        assert await asyncio.to_thread(control.poll, 60)
        base_url, api_key, model = control.recv()
        settings = relaxed(
            Settings(
                _env_file=None,  # type: ignore[call-arg]
                goodfire_base_url=base_url,
                goodfire_api_key=api_key,
                ember_model=model,
                database_url=f"sqlite:///{tmp_path / 'bot.db'}",
                backend_max_concurrency=STREAMS,
                backend_deadline_seconds=5,
            )
        )
        alice = Actor("u1", "Alice")
        async with open_context(settings) as ctx, loop_watch() as stalls:
            turns = await asyncio.gather(
                *(
                    chat_turn(ctx, SessionKey("load", "w", f"c{n}"), alice, "hello")
                    for n in range(STREAMS)
                )
            )
    finally:
        control.close()
        backend.join(10)
    assert all(isinstance(t.result.error, RateLimitedError) for t in turns)
    assert all(t.sink.messages[-1].count("rate limited") == 1 for t in turns)
    assert len(stalls) > 20 and max(stalls) < MAX_STALL, f"worst stall {max(stalls):.3f} s"
