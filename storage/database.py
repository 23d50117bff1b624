"""Opening the database that DATABASE_URL names: SQLite (sqlite:///path, the default) or
PostgreSQL (postgresql://user:password@host:port/database), as one Database."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from storage.health import database_problem
from storage.interface import SharedState, StateStore
from storage.postgres import PostgresStore
from storage.postgres_connect import describe, is_postgres_url, where
from storage.postgres_shared import PostgresSharedState
from storage.store import Store

SQLITE_SCHEME = "sqlite:///"


def sqlite_path(url: str) -> Path:
    return Path(url.removeprefix(SQLITE_SCHEME))


def database_label(url: str) -> str:
    """Where the database is, for people: the SQLite path, or PostgreSQL's user@host:port/db."""
    return where(url) if is_postgres_url(url) else str(sqlite_path(url))


@dataclass
class Database:
    url: str
    store: StateStore
    shared: SharedState | None  # None: one process (SQLite); the bot keeps it in memory

    async def close(self) -> None:
        if isinstance(self.shared, PostgresSharedState):
            await self.shared.close()
        await self.store.close()

    async def problem(self, seconds: float) -> str | None:
        """None if the database takes a write right now (rolled back); else what is wrong."""
        if isinstance(self.store, PostgresStore):
            return await postgres_problem(self.store, self.url, seconds)
        return await asyncio.to_thread(database_problem, sqlite_path(self.url), seconds)


async def open_database(url: str, *, busy_timeout: float = 5.0, pool_size: int = 10) -> Database:
    """Open (creating and migrating if need be) the database at `url`; DatabaseProblem if not."""
    if is_postgres_url(url):
        store = await PostgresStore.open(url, pool_size=pool_size, connect_timeout=busy_timeout)
        try:
            shared = await PostgresSharedState.open(
                store.pool, url, pool_size=pool_size, connect_timeout=busy_timeout
            )
        except BaseException:
            await store.close()
            raise
        return Database(url, store, shared)
    sqlite = await Store.open(sqlite_path(url), busy_timeout=busy_timeout)
    return Database(url, sqlite, None)


async def postgres_problem(store: PostgresStore, url: str, seconds: float) -> str | None:
    try:
        async with asyncio.timeout(seconds), store.pool.acquire() as db:
            probe = db.transaction()
            await probe.start()
            await db.execute("CREATE TEMPORARY TABLE health_probe (x int)")  # refused read-only
            await probe.rollback()
    except Exception as error:
        return f"database not writable: {describe(url, error, seconds)}"
    return None
