"""Every store test runs on SQLite and on PostgreSQL: `backend` says which, opens its store and
answers the few questions whose answer is engine-specific (schema version, error type)."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from storage.database import open_database, sqlite_path
from storage.interface import StateStore
from tests.support.postgres_server import new_database


@dataclass
class Backend:
    name: str
    url: str
    integrity_error: type[Exception]

    async def open(self) -> StateStore:
        return (await open_database(self.url)).store

    async def schema_version(self) -> int:
        if self.name == "sqlite":
            with sqlite3.connect(sqlite_path(self.url)) as raw:
                return int(raw.execute("PRAGMA user_version").fetchone()[0])
        db = await asyncpg.connect(self.url)
        try:
            return int(await db.fetchval("SELECT version FROM schema_versions WHERE name = 'data'"))
        finally:
            await db.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        yield Backend("sqlite", f"sqlite:///{tmp_path / 'db' / 'bot.db'}", sqlite3.IntegrityError)
    else:
        admin_url = request.getfixturevalue("postgres_server")
        url = await new_database(admin_url)
        yield Backend("postgres", url, asyncpg.ForeignKeyViolationError)
