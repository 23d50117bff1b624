"""Durability: a bot process applying steering changes is SIGKILLed at random moments.

Each round forks a child (from a forkserver with the bot preloaded, so a round costs
milliseconds, not a fresh interpreter) that steers one channel through the real command path
against the parent's loopback FakeEmber, and reports each change once its command has returned.
The parent kills it with SIGKILL, sometimes while it is still opening the database. Afterwards
the database passes its integrity check and holds every acknowledged change; on SQLite and on
PostgreSQL (tests/storage/conftest.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import random
import sqlite3
from multiprocessing.connection import Connection

import pytest

from bot.app import open_context
from bot.commands.runner import run_text_command
from bot.domain.types import Actor, SessionKey
from bot.settings import Settings
from storage.database import open_database
from storage.store import DEFAULT_VARIANT
from tests.support.fake_ember import DEFAULT_CATALOG, FakeEmber
from tests.support.reliability_helpers import relaxed

ROUNDS = int(os.environ.get("EMBER_SOAK_KILL_ROUNDS", "30"))
CHANGES_PER_ROUND = 200  # more than a child lives to make
# Seconds after which the kill lands: a change takes a few more round trips on PostgreSQL
# (the channel's lock and the shared rate limits live there too).
KILL_WINDOW = {"sqlite": 0.2, "postgres": 0.6}
INDICES = [feature.index_in_sae for feature in DEFAULT_CATALOG]
ACTOR = Actor("u1", "Alice")

pytestmark = pytest.mark.soak


def change(n: int) -> tuple[int, float] | None:
    """The n-th change of a round: steer (index, value), or None for `/reset steering`."""
    if n % 10 == 9:
        return None
    return INDICES[(n * 5) % len(INDICES)], ((n * 7) % 21 - 10) / 10


def command_line(n: int) -> str:
    step = change(n)
    return "/reset steering" if step is None else f"/steer #{step[0]} {step[1]}"


def states_after_each_change() -> list[dict[int, float]]:
    """states[k]: the variant's edits after the first k changes."""
    states: list[dict[int, float]] = [{}]
    for n in range(CHANGES_PER_ROUND):
        state = dict(states[-1])
        step = change(n)
        if step is None:
            state = {}
        elif step[1] == 0:
            state.pop(step[0], None)
        else:
            state[step[0]] = step[1]
        states.append(state)
    return states


def apply_changes(settings: Settings, channel: str, acks: Connection) -> None:
    """The child: steer `channel` change after change, acknowledging each one that returned."""
    asyncio.run(_apply_changes(settings, channel, acks))


async def _apply_changes(settings: Settings, channel: str, acks: Connection) -> None:
    session = SessionKey("durability", "w", channel)
    async with open_context(settings) as ctx:
        acks.send("ready")
        for n in range(CHANGES_PER_ROUND):
            reply = await run_text_command(ctx, command_line(n), session, ACTOR)
            assert not reply.is_error, reply.text
            acks.send(n)  # told to the user: it must survive whatever happens next


async def run_round(
    mp, settings: Settings, channel: str, wait_for_ready: bool, window: float
) -> int:
    """One child killed at a random moment; returns how many changes it acknowledged."""
    receiver, sender = mp.Pipe(duplex=False)
    child = mp.Process(target=apply_changes, args=(settings, channel, sender), daemon=True)
    child.start()
    sender.close()
    if wait_for_ready:
        assert await asyncio.to_thread(receiver.poll, 30), "child never became ready"
        assert receiver.recv() == "ready"
    await asyncio.sleep(random.uniform(0, window))
    child.kill()  # SIGKILL: no cleanup of any kind
    await asyncio.to_thread(child.join)
    acknowledged = 0
    with contextlib.suppress(EOFError):
        while True:
            message = receiver.recv()
            if message != "ready":
                acknowledged = message + 1
    return acknowledged


async def stored_edits(url: str, channel: str) -> dict[int, float] | None:
    database = await open_database(url)  # also proves the bot reopens a crashed database
    try:
        assert await database.store.integrity_ok()
        variant = await database.store.get_variant(
            SessionKey("durability", "w", channel), DEFAULT_VARIANT
        )
    finally:
        await database.close()
    return None if variant is None else {i: e.value for i, e in variant.edits.items()}


async def test_killed_mid_change_keeps_every_acknowledged_change(backend, fake_ember: FakeEmber):
    mp = multiprocessing.get_context("forkserver")
    mp.set_forkserver_preload([__name__])
    settings = relaxed(
        Settings(
            _env_file=None,  # type: ignore[call-arg]
            goodfire_base_url=fake_ember.base_url,
            goodfire_api_key=fake_ember.api_key,
            ember_model=fake_ember.model,
            database_url=backend.url,
        )
    )
    random.seed(6)
    acknowledged = {}
    for number in range(ROUNDS):
        channel = f"round-{number}"
        acknowledged[channel] = await run_round(
            mp, settings, channel, number % 5 != 0, KILL_WINDOW[backend.name]
        )

    if backend.name == "sqlite":
        with contextlib.closing(sqlite3.connect(settings.database_path)) as db:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    states = states_after_each_change()
    for channel, acked in acknowledged.items():
        edits = await stored_edits(backend.url, channel)
        if edits is None:  # killed before the channel's first change committed
            assert acked == 0
            continue
        # Everything acknowledged is there; the change in flight at the kill may be too.
        assert edits in states[acked : acked + 2], (channel, acked)  # none in flight after all
    # The kills really landed mid-work, not only before or after it.
    assert sum(acknowledged.values()) >= ROUNDS
    assert sum(1 for acked in acknowledged.values() if acked) >= ROUNDS // 3
