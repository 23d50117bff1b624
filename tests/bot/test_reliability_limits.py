"""Rate limits, the fair backend queue and input size limits, through the real service stack."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from bot.app import open_context
from bot.commands.registry import CommandContext
from bot.commands.runner import run_text_command
from bot.domain.errors import BackendBusyError, SlowDownError, UserInputError
from bot.domain.types import Actor, SessionKey
from bot.settings import Settings
from bot.usecases.ratelimit import BackendSlots, Rate, RateLimiter
from tests.support.fake_ember import FakeEmber, Fault, Latency
from tests.support.reliability_helpers import chat_turn, database_rows, relaxed

BOB = Actor("u2", "Bob")
HUGE_VALUE = '{"base_model": "m", "edits": [{"index_in_sae": 1, "value": 1e999}]}'
FULL = "This channel already has 2 variants, the limit. Delete one with /variant delete <name>."


@pytest.fixture
async def limited(settings: Settings) -> AsyncIterator[CommandContext]:
    """The bot with tight, easily reached limits."""
    tight = settings.model_copy(
        update={
            "chat_user_burst": 2,
            "chat_user_per_minute": 1,
            "chat_channel_burst": 3,
            "chat_channel_per_minute": 2,
            "steer_user_burst": 2,
            "steer_user_per_minute": 6,
        }
    )
    async with open_context(tight) as ctx:
        yield ctx


def test_token_buckets_refill_over_time_and_refuse_without_taking():
    now = [0.0]
    limiter = RateLimiter("chat", Rate(2, 6), Rate(3, 60), clock=lambda: now[0])
    limiter.admit("alice", "c1")
    limiter.admit("alice", "c1")
    with pytest.raises(SlowDownError) as refused:
        limiter.admit("alice", "c1")
    assert refused.value.user_message == "Slow down — try again in 10 s."
    assert refused.value.scope == "user"
    limiter.admit("bob", "c1")  # the refusal above took no channel token
    with pytest.raises(SlowDownError, match="This channel is busy — try again in 1 s."):
        limiter.admit("carol", "c1")
    now[0] = 10.0
    limiter.admit("alice", "c2")
    unlimited = RateLimiter("chat", Rate(1, 0), Rate(1, 0))
    for _ in range(100):
        unlimited.admit("alice", "c1")


async def test_chat_over_the_limit_is_refused_with_the_wait_and_stores_nothing(
    limited, session, alice
):
    for text in ("one", "two"):
        assert (await chat_turn(limited, session, alice, text)).result.error is None
    before = database_rows(limited.settings.database_path)
    turn = await chat_turn(limited, session, alice, "three")
    assert turn.refusal == "Slow down — try again in 60 s."
    assert turn.sink.messages == ["⚠ Slow down — try again in 60 s."]
    assert database_rows(limited.settings.database_path) == before
    assert (await chat_turn(limited, session, BOB, "hi")).result.error is None
    crowd = await chat_turn(limited, session, Actor("u3", "Carol"), "hi")
    assert crowd.refusal == "This channel is busy — try again in 30 s."
    exported = limited.service.metrics.exposition().decode()
    assert 'ember_rate_limit_refusals_total{action="chat",scope="user"} 1.0' in exported
    assert 'ember_rate_limit_refusals_total{action="chat",scope="channel"} 1.0' in exported


async def test_steering_commands_are_rate_limited_reading_commands_are_not(limited, session, alice):
    for value in ("0.1", "0.2"):
        assert not (
            await run_text_command(limited, f"/steer pirate {value}", session, alice)
        ).is_error
    refused = await run_text_command(limited, "/steer pirate 0.3", session, alice)
    assert refused.is_error and refused.text == "Slow down — try again in 10 s."
    assert (await limited.service.variants.active(session)).edits[1201].value == 0.2
    for line in ("/features search pirate", "/features", "/variant list", "/help"):
        assert not (await run_text_command(limited, line, session, alice)).is_error


async def test_backend_queue_is_fifo_reports_positions_and_refuses_when_full(
    settings, fake_ember: FakeEmber, alice
):
    one_slot = relaxed(settings, backend_max_concurrency=1, backend_max_queue=2)
    async with open_context(one_slot) as ctx:
        channels = [SessionKey("t", "w", name) for name in "abcd"]
        for channel in channels:
            await ctx.service.variants.active(channel)
        fake_ember.fail_next("/chat/completions", Fault(delay=0.3))
        first_tokens: list[str] = []

        async def turn(channel: SessionKey):
            result = await chat_turn(ctx, channel, alice, f"in {channel.channel}")
            first_tokens.append(channel.channel)
            return result

        tasks = []
        for channel in channels[:3]:
            tasks.append(asyncio.create_task(turn(channel)))
            await asyncio.sleep(0.05)
        before = database_rows(one_slot.database_path)
        busy = await chat_turn(ctx, channels[3], alice, "too many")
        assert (
            busy.refusal
            == "The bot is busy: 2 requests are already waiting. Try again in a minute."
        )
        assert database_rows(one_slot.database_path) == before
        search = await run_text_command(ctx, "/features search pirate", channels[3], alice)
        assert search.is_error and search.text == busy.refusal
        a, b, c = await asyncio.gather(*tasks)
    assert first_tokens == ["a", "b", "c"]
    assert (a.queued_at, b.queued_at, c.queued_at) == ([], [1], [2])
    assert all(t.result.error is None for t in (a, b, c))


async def test_every_backend_slot_can_stream_at_once_past_a_hundred(
    settings, fake_ember: FakeEmber, alice
):
    slots = 120  # more than httpx's usual pool of 100 connections
    wide = relaxed(settings, backend_max_concurrency=slots, ember_model=fake_ember.model)
    async with open_context(wide) as ctx:
        channels = [SessionKey("t", "w", f"c{n}") for n in range(slots)]
        for channel in channels:
            await ctx.service.variants.active(channel)
        fake_ember.latency = Latency(first_token=3.0)  # all replies overlap: none can end early
        turns = await asyncio.gather(*(chat_turn(ctx, c, alice, "hi") for c in channels))
    assert all(t.result is not None and t.result.error is None for t in turns)
    assert fake_ember.connection_count >= slots  # no stream waited for another's connection


async def test_slots_hand_over_in_order_and_survive_cancelled_waiters():
    slots = BackendSlots(limit=1, max_waiting=10)
    order: list[int] = []

    async def user(number: int, hold: float) -> None:
        async with slots.slot():
            order.append(number)
            await asyncio.sleep(hold)

    holder = asyncio.create_task(user(0, 0.05))
    await asyncio.sleep(0)
    waiters = [asyncio.create_task(user(n, 0)) for n in range(1, 6)]
    await asyncio.sleep(0)
    waiters[1].cancel()  # number 2 gives up while waiting
    await asyncio.gather(holder, *waiters, return_exceptions=True)
    assert order == [0, 1, 3, 4, 5]
    assert (slots.in_use, slots.waiting) == (0, 0)
    no_queue = BackendSlots(limit=1, max_waiting=0)
    async with no_queue.slot():
        with pytest.raises(BackendBusyError):
            await no_queue.acquire()
    assert no_queue.in_use == 0


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "/features search " + "x" * 201,
            "Search text is limited to 200 characters; yours has 201.",
        ),
        (
            "/steer " + "y" * 201 + " 0.5",
            "Search text is limited to 200 characters; yours has 201.",
        ),
        (
            "/steer " + " ".join(f"#{i}=0.1" for i in range(33)),
            "A variant can steer at most 32 features; this would make 33.",
        ),
        ("/variant import deep " + "[" * 5000 + "]" * 5000, "That variant JSON could not be read."),
        (
            "/variant import big " + HUGE_VALUE,
            'Edit 1: "value" must be a number.',
        ),
        ("/help " + "z" * 16_000, "Commands are limited to 16000 characters; yours has 16006."),
    ],
    ids=["query", "steer-query", "batch-size", "json-nesting", "json-infinity", "command-line"],
)
async def test_input_limits_answer_clearly_before_calling_the_backend(
    ctx, fake_ember, session, alice, line, expected
):
    await ctx.service.variants.active(session)
    before, requests = database_rows(ctx.settings.database_path), len(fake_ember.requests)
    reply = await run_text_command(ctx, line, session, alice)
    assert reply.is_error and reply.text == expected
    assert database_rows(ctx.settings.database_path) == before
    assert len(fake_ember.requests) == requests


async def test_message_length_and_variant_count_limits(settings, session, alice):
    small = relaxed(settings, max_message_chars=10, max_variants_per_channel=2)
    async with open_context(small) as ctx:
        with pytest.raises(UserInputError, match="limited to 10 characters; yours has 11"):
            await ctx.service.chat.turn(session, alice, "x" * 11, _ignore)
        await ctx.service.variants.create(session, "second", alice)
        reply = await run_text_command(ctx, "/variant new third", session, alice)
        assert reply.text == FULL
        exported = json.dumps({"base_model": "m", "edits": []})
        reply = await run_text_command(ctx, f"/variant import third {exported}", session, alice)
        assert reply.text == "This channel already has the maximum of 2 variants."


async def _ignore(_: str) -> None:
    pass


async def test_imported_edits_without_feature_ids_are_looked_up(ctx, fake_ember, session, alice):
    bare = '{"base_model": "m", "edits": [{"index_in_sae": %d, "value": 0.5}]}'
    await ctx.service.variants.active(session)
    before = database_rows(ctx.settings.database_path)
    reply = await run_text_command(ctx, f"/variant import bare {bare % 424242}", session, alice)
    assert reply.text == "The model has no feature #424242; nothing was imported."
    assert database_rows(ctx.settings.database_path) == before
    reply = await run_text_command(ctx, f"/variant import bare {bare % 1201}", session, alice)
    assert not reply.is_error
    turn = await chat_turn(ctx, session, alice, "ahoy")
    assert turn.result.error is None
    assert fake_ember.controller_nudges(fake_ember.last_chat_request()) == {1201: 0.5}
