"""Two bot cores ("processes") on one PostgreSQL database, through the command path: a proposal
made in one is applied in the other, once; the chat rate limit holds across both; a delivery
is answered by one; the service reports the database healthy; and a turn whose process died is
noted once, by one of the others."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest

from bot.app import open_context
from bot.commands.confirmations import answer, proposals
from bot.commands.registry import CommandContext, Invocation
from bot.domain.errors import SlowDownError
from bot.domain.types import Actor, FeatureEdit, FeatureRef, SessionKey
from bot.settings import Settings
from bot.usecases.turn_ledger import HEARTBEAT_SECONDS, STALE_SECONDS
from tests.support.fake_ember import FakeEmber

BOB = Actor("u2", "Bob")


@pytest.fixture
async def two_cores(settings: Settings, postgres_url: str) -> AsyncIterator[list[CommandContext]]:
    shared = settings.model_copy(
        update={"database_url": postgres_url, "chat_user_burst": 2, "chat_user_per_minute": 0.01}
    )
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(open_context(shared)) for _ in range(2)]


async def test_a_proposal_made_in_one_process_is_applied_in_the_other_once(
    two_cores, fake_ember: FakeEmber, session: SessionKey, alice: Actor
):
    first, second = two_cores
    pirate = fake_ember.feature("pirate speech")
    edits = [FeatureEdit(FeatureRef(pirate.index_in_sae, pirate.label, pirate.uuid), 0.4)]
    token = await proposals(first.service).add(session, BOB, edits)
    applied = await answer(second, token, True, Invocation(session, alice, {}))
    assert applied.text == 'Alice applied to variant "default": "pirate speech" +0.40'
    again = await answer(first, token, True, Invocation(session, alice, {}))
    assert again.text == "That proposal has expired or was already answered. Run /autosteer again."
    for ctx in two_cores:  # both see the change: the database is the only state
        edits_now = (await ctx.service.variants.active(session)).edits
        assert {i: e.value for i, e in edits_now.items()} == {pirate.index_in_sae: 0.4}


async def test_the_chat_limit_and_deliveries_hold_across_processes(
    two_cores, session: SessionKey, alice: Actor
):
    first, second = two_cores
    await first.service.admission.admit_chat(session, alice)
    await second.service.admission.admit_chat(session, alice)
    with pytest.raises(SlowDownError) as refused:  # the burst of 2 is spent, across both
        await first.service.admission.admit_chat(session, alice)
    assert refused.value.user_message.startswith("Slow down")
    claims = [await ctx.service.admission.first_delivery("slack:T:C:1.0") for ctx in two_cores]
    assert claims == [True, False]
    assert await second.service.check_health(2) == {"database": "ok", "backend": "ok"}


async def test_a_turn_left_by_a_dead_process_is_noted_once_by_a_survivor(
    settings: Settings, postgres_url: str
):
    shared = settings.model_copy(update={"database_url": postgres_url})
    noted: list[tuple[str, dict[str, str]]] = []
    async with AsyncExitStack() as survivors:
        for name in ("a", "b"):
            ctx = await survivors.enter_async_context(open_context(shared))

            async def note(place: dict[str, str], name: str = name) -> None:
                noted.append((name, place))

            ctx.service.turns.on_orphan("test", note)
        async with open_context(shared) as dying:
            turn = dying.service.turns.in_flight("test", {"channel": "C1"})
            await turn.__aenter__()  # answering when it "dies": the turn is never ended
        # Its heartbeat has stopped; within STALE_SECONDS and a beat, one survivor notes it.
        for _ in range(int((STALE_SECONDS + 3) / 0.1)):
            if noted:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(2 * HEARTBEAT_SECONDS)  # and nobody notes it again
    assert [place for _, place in noted] == [{"channel": "C1"}]
