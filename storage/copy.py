"""Copying an installation's data from SQLite to PostgreSQL (`ember-bot db copy`).

The source is read inside one read transaction, so a bot still running on it is copied as of one
moment (WAL mode lets it go on writing meanwhile); the target must be empty (or new) and is
written in one transaction with COPY, so a failed copy leaves nothing behind. Message and audit
ids are kept (they order the history), and the identity sequences are moved past them. Afterwards
the row counts of every table are compared on both sides.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from storage.database import open_database, sqlite_path
from storage.migrations import MIGRATIONS
from storage.opening import DatabaseProblem
from storage.postgres import PostgresStore
from storage.postgres_connect import is_postgres_url, where

TABLES: dict[str, tuple[str, ...]] = {  # in foreign-key order
    "sessions": ("key", "active_variant", "created_at"),
    "variants": (
        "session_key", "name", "base_model", "edits_json", "updated_at", "guards_json",
    ),
    "messages": ("id", "session_key", "role", "author", "content", "created_at"),
    "audit_log": ("id", "session_key", "actor", "action", "detail_json", "created_at"),
}  # fmt: skip
WITH_IDS = ("messages", "audit_log")
BATCH = 5_000


@dataclass(frozen=True)
class CopiedTable:
    name: str
    source_rows: int
    target_rows: int

    @property
    def verified(self) -> bool:
        return self.source_rows == self.target_rows


async def copy_database(source_url: str, target_url: str) -> list[CopiedTable]:
    """Copy every table from the SQLite database at `source_url` into the empty PostgreSQL
    database at `target_url`; the row counts of both. Raises DatabaseProblem (one line)."""
    if not source_url.startswith("sqlite:///") or not is_postgres_url(target_url):
        raise DatabaseProblem(
            "db copy moves an SQLite database to PostgreSQL: --from sqlite:///path "
            "--to postgresql://user:password@host/database"
        )
    path = sqlite_path(source_url)
    source = _open_source(path)
    try:
        database = await open_database(target_url, pool_size=2)
        try:
            assert isinstance(database.store, PostgresStore)
            return await _copy(source, database.store, target_url)
        finally:
            await database.close()
    finally:
        source.close()


def _open_source(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise DatabaseProblem(f"{path} does not exist; --from names the bot's SQLite file.")
    try:
        source = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False
        )
        version = source.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.Error as error:
        raise DatabaseProblem(f"cannot read {path} ({error}).") from None
    if version != len(MIGRATIONS):
        source.close()
        raise DatabaseProblem(
            f"{path} has schema version {version}, this bot {len(MIGRATIONS)}: run this "
            "version of the bot on it once (it migrates on start), then copy."
        )
    source.execute("BEGIN")  # one snapshot for every table, however long the copy takes
    return source


async def _copy(source: sqlite3.Connection, store: PostgresStore, url: str) -> list[CopiedTable]:
    async with store.pool.acquire() as db, db.transaction():
        present = await db.fetchval("SELECT count(*) FROM sessions")
        if present:
            raise DatabaseProblem(
                f"{where(url)} already holds {present} sessions; copy into an empty database."
            )
        for table, columns in TABLES.items():
            cursor = source.execute(f"SELECT {', '.join(columns)} FROM {table}")
            while rows := await asyncio.to_thread(cursor.fetchmany, BATCH):
                await db.copy_records_to_table(table, records=rows, columns=list(columns))
        for table in WITH_IDS:
            await db.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"coalesce((SELECT max(id) FROM {table}), 0) + 1, false)"
            )
        result = [
            CopiedTable(
                table,
                source.execute(f"SELECT count(*) FROM {table}").fetchone()[0],
                await db.fetchval(f"SELECT count(*) FROM {table}"),
            )
            for table in TABLES
        ]
        if mismatched := [t.name for t in result if not t.verified]:
            raise DatabaseProblem(  # raised inside the transaction: nothing stays copied
                f"row counts differ after the copy in {', '.join(mismatched)}; nothing was kept."
            )
    with contextlib.suppress(sqlite3.Error):
        source.rollback()
    return result
