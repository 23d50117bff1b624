"""What several processes on one PostgreSQL database agree on (storage/postgres_shared.py),
checked with two separate pools on one database, as two bot processes would have."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from bot.domain.types import FeatureEdit, FeatureRef
from storage.database import Database, open_database
from storage.interface import Bucket, SharedState, StoredProposal

PIRATE = FeatureEdit(FeatureRef(7, "pirate speech", "0" * 32), 0.4)


@pytest.fixture
async def two_processes(postgres_url: str) -> AsyncIterator[tuple[Database, Database]]:
    first = await open_database(postgres_url, pool_size=4)
    second = await open_database(postgres_url, pool_size=4)
    yield first, second
    await first.close()
    await second.close()


def shared(database: Database) -> SharedState:
    assert database.shared is not None
    return database.shared


async def test_buckets_are_shared_so_two_processes_grant_the_limit_once(two_processes):
    a, b = (shared(d) for d in two_processes)
    user = Bucket("chat:user:u1", 3, 1 / 600)
    channels = [Bucket(f"chat:channel:c{i}", 100, 1.0) for i in range(2)]
    results = await asyncio.gather(
        *(s.take_tokens([user, channels[n % 2]]) for n, s in enumerate([a, b] * 5))
    )
    granted = [r for r in results if r[0] == -1]
    refused = [r for r in results if r[0] != -1]
    assert len(granted) == 3
    assert {position for position, _ in refused} == {0}  # the user's bucket refused
    assert all(500 < wait <= 600 for _, wait in refused)  # one token takes 600 s to come back


async def test_a_refusal_takes_nothing_from_the_other_buckets(two_processes):
    a, b = (shared(d) for d in two_processes)
    empty_channel = Bucket("steer:channel:c", 1, 1 / 60)
    assert await a.take_tokens([Bucket("steer:user:u1", 5, 1), empty_channel]) == (-1, 0.0)
    refused, wait = await b.take_tokens([Bucket("steer:user:u2", 1, 1 / 60), empty_channel])
    assert refused == 1 and 0 < wait <= 60
    # u2's only token is still there: the refusal did not take it
    assert (await a.take_tokens([Bucket("steer:user:u2", 1, 1 / 60)]))[0] == -1


async def test_a_channel_lock_excludes_other_processes_and_dies_with_its_holder(
    two_processes, postgres_url
):
    a, b = (shared(d) for d in two_processes)
    order: list[str] = []

    async def hold(state: SharedState, name: str, seconds: float, channel: str = "C1") -> None:
        async with state.session_lock(f"slack:T:{channel}"):
            order.append(f"{name} in")
            await asyncio.sleep(seconds)
            order.append(f"{name} out")

    first = asyncio.create_task(hold(a, "a", 0.2))
    await asyncio.sleep(0.05)
    await asyncio.gather(first, hold(b, "b", 0))
    assert order == ["a in", "a out", "b in", "b out"]
    async with b.session_lock("slack:T:C2"):  # another channel: not excluded
        async with asyncio.timeout(1):
            async with a.session_lock("slack:T:C3"):
                pass

    # A process that dies holding the lock (its connection closes) lets go of it.
    dying = await asyncpg.connect(postgres_url)
    await dying.execute("SELECT pg_advisory_lock(hashtextextended('slack:T:C4', 0))")
    waiter = asyncio.create_task(hold(a, "after death", 0, "C4"))
    await asyncio.sleep(0.1)
    assert not waiter.done()
    dying.terminate()
    async with asyncio.timeout(5):
        await waiter


async def test_a_proposal_made_in_one_process_is_answered_once_in_another(two_processes):
    a, b = (shared(d) for d in two_processes)
    proposal = StoredProposal("slack:T:C1", "U1", "Alice", (PIRATE,))
    await a.add_proposal("token-1", proposal, ttl=60, capacity=10)
    assert await b.get_proposal("token-1") == proposal
    taken = await asyncio.gather(a.take_proposal("token-1"), b.take_proposal("token-1"))
    assert sorted(taken, key=lambda p: p is None) == [proposal, None]
    assert await a.get_proposal("token-1") is None


async def test_proposals_expire_and_the_oldest_go_when_full(two_processes):
    a, b = (shared(d) for d in two_processes)
    proposal = StoredProposal("slack:T:C1", "U1", "Alice", ())
    await a.add_proposal("brief", proposal, ttl=0.05, capacity=2)
    await asyncio.sleep(0.1)
    assert await b.get_proposal("brief") is None
    for token in ("one", "two", "three"):
        await b.add_proposal(token, proposal, ttl=60, capacity=2)
    assert await a.get_proposal("one") is None
    assert await a.get_proposal("two") == await a.get_proposal("three") == proposal


async def test_a_delivery_is_claimed_once_across_processes(two_processes):
    a, b = (shared(d) for d in two_processes)
    claims = await asyncio.gather(*(s.claim_delivery("slack:event:Ev1") for s in [a, b] * 4))
    assert claims.count(True) == 1
    assert await a.claim_delivery("slack:event:Ev2")
