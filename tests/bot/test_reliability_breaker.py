"""The circuit breaker in the gateway, against the loopback fake Ember."""

from __future__ import annotations

import asyncio

import pytest

from bot.app import open_context
from bot.backend.breaker import CircuitBreaker
from bot.backend.gateway import EmberGateway
from bot.backend.retries import RetryPolicy
from bot.domain.errors import BackendUnavailableError, RateLimitedError
from bot.domain.types import Actor, SessionKey
from tests.support.fake_ember import FakeEmber, Fault
from tests.support.reliability_helpers import chat_turn, relaxed

TWO_TRIES = RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.02, deadline=5.0)
PAUSED = r"\(3 calls in a row failed; next try in 10 s\)"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def gateway(fake: FakeEmber, breaker: CircuitBreaker) -> EmberGateway:
    return EmberGateway(
        fake.base_url, fake.api_key, model=fake.model, retry=TWO_TRIES, breaker=breaker
    )


async def fail_calls(gw: EmberGateway, fake: FakeEmber, calls: int) -> None:
    """`calls` searches that fail every try with a 500."""
    fake.fail_next("/features/search", *[Fault(status=500)] * (2 * calls))
    for _ in range(calls):
        with pytest.raises(BackendUnavailableError, match="HTTP 500"):
            await gw.search_features("pirate")


async def test_refuses_at_once_after_failures_then_one_probe_closes_it(fake_ember):
    clock = Clock()
    breaker = CircuitBreaker(threshold=3, cooldown=10, clock=clock)
    async with gateway(fake_ember, breaker) as gw:
        await fail_calls(gw, fake_ember, 3)
        assert breaker.is_open and len(fake_ember.requests) == 6
        with pytest.raises(BackendUnavailableError, match=PAUSED):
            await gw.search_features("pirate")
        assert len(fake_ember.requests) == 6  # refused without asking the backend

        clock.now = 10.0
        fake_ember.fail_next("/features/search", Fault(delay=0.2))
        probe = asyncio.create_task(gw.search_features("pirate"))
        await asyncio.sleep(0.05)
        with pytest.raises(BackendUnavailableError, match="next try in 1 s"):
            await gw.search_features("cats")  # only the probe goes through
        assert (await probe)[0].label == "pirate speech"
        assert not breaker.is_open
        assert (await gw.search_features("cats"))[0].label == "cats"


async def test_failed_probe_pauses_again_and_live_answers_never_open_it(fake_ember):
    clock = Clock()
    breaker = CircuitBreaker(threshold=3, cooldown=10, clock=clock)
    async with gateway(fake_ember, breaker) as gw:
        fake_ember.fail_next("/features/search", *[Fault(status=429, retry_after=0.01)] * 10)
        for _ in range(5):
            with pytest.raises(RateLimitedError):
                await gw.search_features("pirate")
        assert not breaker.is_open  # a rate-limiting backend is alive

        await fail_calls(gw, fake_ember, 3)
        clock.now = 10.0
        await fail_calls(gw, fake_ember, 1)  # the probe fails
        sent = len(fake_ember.requests)
        with pytest.raises(BackendUnavailableError, match=PAUSED):
            await gw.search_features("pirate")
        assert len(fake_ember.requests) == sent


async def test_chat_turn_answers_backend_unavailable_at_once_while_open(
    settings, fake_ember, alice
):
    fragile = relaxed(settings, breaker_failures=2, breaker_cooldown_seconds=60)
    session = SessionKey("t", "w", "c")
    async with open_context(fragile) as ctx:
        fake_ember.fail_next("/chat/completions", *[Fault(die_after_tokens=2)] * 2)
        for text in ("one", "two"):
            turn = await chat_turn(ctx, session, alice, text)
            assert "Reply cut short: The model backend is unavailable" in turn.sink.messages[-1]
        chats = len(fake_ember.requests_to("/chat/completions"))
        turn = await chat_turn(ctx, session, Actor("u2", "Bob"), "three")
        assert isinstance(turn.result.error, BackendUnavailableError)
        assert "2 calls in a row failed" in turn.sink.messages[-1]
        assert len(fake_ember.requests_to("/chat/completions")) == chats
        exported = ctx.service.metrics.exposition().decode()
        assert "ember_backend_breaker_open 1.0" in exported
        assert 'ember_errors_total{kind="backend_unavailable"} 3.0' in exported
