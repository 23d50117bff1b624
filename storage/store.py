"""SQLite persistence for sessions, variants, conversation history and the audit log.

The only module that writes SQL. One aiosqlite connection in WAL mode; every change commits
before the call returns, so whatever a user was told has happened survives a crash.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from bot.domain.types import FeatureEdit, FeatureRef, Guard, SessionKey, VariantState
from storage.migrations import MIGRATIONS
from storage.opening import DatabaseProblem, Footprint, describe

DEFAULT_VARIANT = "default"
_VARIANT_COLUMNS = "name, base_model, edits_json, guards_json"


@dataclass(frozen=True)
class StoredMessage:
    role: str
    author: str
    content: str


@dataclass(frozen=True)
class AuditEntry:
    actor: str
    action: str
    detail: dict[str, Any]
    created_at: float


def edits_to_json(edits: dict[int, FeatureEdit]) -> str:
    return json.dumps([_feature_row(e.feature, value=e.value) for e in edits.values()])


def edits_from_json(text: str) -> dict[int, FeatureEdit]:
    edits = {}
    for row in json.loads(text):
        feature = _feature_from_row(row)
        edits[feature.index_in_sae] = FeatureEdit(feature, float(row["value"]))
    return edits


def guards_to_json(guards: dict[int, Guard]) -> str:
    return json.dumps([_feature_row(g.feature, threshold=g.threshold) for g in guards.values()])


def guards_from_json(text: str) -> dict[int, Guard]:
    guards = {}
    for row in json.loads(text):
        feature = _feature_from_row(row)
        guards[feature.index_in_sae] = Guard(feature, float(row["threshold"]))
    return guards


def _feature_row(feature: FeatureRef, **numbers: float) -> dict[str, Any]:
    row: dict[str, Any] = {"index_in_sae": feature.index_in_sae, "label": feature.label}
    return {**row, "uuid": feature.uuid, **numbers}


def _feature_from_row(row: dict[str, Any]) -> FeatureRef:
    return FeatureRef(int(row["index_in_sae"]), str(row["label"]), str(row.get("uuid", "")))


class Store:
    def __init__(self, connection: aiosqlite.Connection) -> None:
        self._db = connection
        self._write_lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path | str, *, busy_timeout: float = 5.0) -> Store:
        """Open the database (creating it and its folder if need be), migrate it, and check it
        takes a write. Raises DatabaseProblem when it cannot, having removed what it created;
        a write waits up to `busy_timeout` seconds for another process's lock."""
        if str(path) == ":memory:":
            return await cls._connect(":memory:", busy_timeout)
        footprint = Footprint(Path(path))
        footprint.make_folder()
        try:
            return await cls._connect(str(path), busy_timeout)
        except (sqlite3.Error, OSError) as error:
            footprint.undo(error)
            raise DatabaseProblem(describe(Path(path), error, busy_timeout)) from None

    @classmethod
    async def _connect(cls, path: str, busy_timeout: float) -> Store:
        # A file SQLite cannot open fails here, not in aiosqlite, whose worker thread would
        # outlive a failed connect and report into a closed event loop.
        await asyncio.to_thread(lambda: sqlite3.connect(path).close())
        # Autocommit: a single statement commits by itself (one trip to aiosqlite's thread, not
        # BEGIN + statement + COMMIT); `_transaction` still brackets several with BEGIN/COMMIT.
        connection = await aiosqlite.connect(path, isolation_level=None)
        try:
            connection.row_factory = aiosqlite.Row
            await connection.execute(f"PRAGMA busy_timeout={round(busy_timeout * 1000)}")
            await connection.execute("PRAGMA journal_mode=WAL")
            await connection.execute("PRAGMA synchronous=NORMAL")
            await connection.execute("PRAGMA foreign_keys=ON")
            store = cls(connection)
            await store._migrate()
            await connection.execute("BEGIN IMMEDIATE")  # a lock held for good shows up now
            await connection.rollback()
        except BaseException:
            await connection.close()  # else its thread keeps the process alive
            raise
        return store

    async def close(self) -> None:
        await self._db.close()

    async def _migrate(self) -> None:
        async with self._db.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        version = row[0] if row else 0
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            await self._db.executescript(
                f"BEGIN;\n{script}\nPRAGMA user_version={number};\nCOMMIT;"
            )

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._write_lock:
            try:
                await self._db.execute("BEGIN IMMEDIATE")
                yield self._db
                await asyncio.shield(self._db.commit())
            except BaseException:
                # aiosqlite runs calls in order, so this lands after a BEGIN or COMMIT that a
                # cancellation interrupted; shielded, it is queued even if cancelled again.
                await asyncio.shield(self._db.rollback())
                raise

    async def _fetchall(self, sql: str, *params: Any) -> list[aiosqlite.Row]:
        # One trip to aiosqlite's thread, not three (execute, fetchall, close): every trip wakes
        # the event loop and trades the GIL, which costs more than the query itself.
        return list(await self._db.execute_fetchall(sql, params))

    async def integrity_ok(self) -> bool:
        rows = await self._fetchall("PRAGMA integrity_check")
        return bool(rows) and rows[0][0] == "ok"

    # --- sessions and variants -------------------------------------------------------------

    async def ensure_session(self, session: SessionKey, base_model: str) -> str:
        """Create the session with its default variant if new; return the active variant name."""
        key = str(session)
        rows = await self._fetchall("SELECT active_variant FROM sessions WHERE key = ?", key)
        if rows:
            return str(rows[0]["active_variant"])
        async with self._transaction() as db:
            now = time.time()
            await db.execute(
                "INSERT OR IGNORE INTO sessions (key, created_at) VALUES (?, ?)", (key, now)
            )
            await db.execute(
                "INSERT OR IGNORE INTO variants (session_key, name, base_model, edits_json, "
                "updated_at) VALUES (?, ?, ?, '[]', ?)",
                (key, DEFAULT_VARIANT, base_model, now),
            )
        return DEFAULT_VARIANT

    async def active_variant(self, session: SessionKey, base_model: str) -> VariantState | None:
        """The session's active variant in one query (a new session is created first, with its
        default variant); None when that variant was deleted underneath."""
        rows = await self._fetchall(
            "SELECT v.name, v.base_model, v.edits_json, v.guards_json FROM sessions s "
            "LEFT JOIN variants v ON v.session_key = s.key AND v.name = s.active_variant "
            "WHERE s.key = ?",
            str(session),
        )
        if not rows:
            return await self.get_variant(session, await self.ensure_session(session, base_model))
        return _variant_from_row(rows[0]) if rows[0]["name"] is not None else None

    async def get_variant(self, session: SessionKey, name: str) -> VariantState | None:
        key = str(session)
        rows = await self._fetchall(
            f"SELECT {_VARIANT_COLUMNS} FROM variants WHERE session_key = ? AND name = ?",
            key,
            name,
        )
        return _variant_from_row(rows[0]) if rows else None

    async def list_variants(self, session: SessionKey) -> list[VariantState]:
        key = str(session)
        rows = await self._fetchall(
            f"SELECT {_VARIANT_COLUMNS} FROM variants WHERE session_key = ? ORDER BY name",
            key,
        )
        return [_variant_from_row(row) for row in rows]

    async def save_variant(
        self,
        session: SessionKey,
        variant: VariantState,
        *,
        actor: str,
        action: str,
        detail: dict[str, Any],
    ) -> None:
        """Insert or replace a variant and record the change in the audit log, atomically."""
        key = str(session)
        async with self._transaction() as db:
            await db.execute(
                "INSERT OR REPLACE INTO variants (session_key, name, base_model, edits_json, "
                "updated_at, guards_json) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    key,
                    variant.name,
                    variant.base_model,
                    edits_to_json(variant.edits),
                    time.time(),
                    guards_to_json(variant.guards),
                ),
            )
            await _audit(db, key, actor, action, {"variant": variant.name, **detail})

    async def delete_variant(self, session: SessionKey, name: str, *, actor: str) -> None:
        key = str(session)
        async with self._transaction() as db:
            await db.execute("DELETE FROM variants WHERE session_key = ? AND name = ?", (key, name))
            await _audit(db, key, actor, "variant.delete", {"variant": name})

    async def set_active_variant(self, session: SessionKey, name: str, *, actor: str) -> None:
        key = str(session)
        async with self._transaction() as db:
            await db.execute("UPDATE sessions SET active_variant = ? WHERE key = ?", (name, key))
            await _audit(db, key, actor, "variant.use", {"variant": name})

    # --- conversation history --------------------------------------------------------------

    async def append_message(
        self, session: SessionKey, role: str, content: str, author: str = ""
    ) -> None:
        # One statement, so autocommit makes it one trip; the lock keeps it out of another
        # call's open transaction on this connection.
        async with self._write_lock:
            await self._fetchall(
                "INSERT INTO messages (session_key, role, author, content, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                str(session),
                role,
                author,
                content,
                time.time(),
            )

    async def recent_messages(self, session: SessionKey, limit: int) -> list[StoredMessage]:
        """The newest `limit` messages, oldest first."""
        key = str(session)
        rows = await self._fetchall(
            "SELECT role, author, content FROM messages WHERE session_key = ? "
            "ORDER BY id DESC LIMIT ?",
            key,
            limit,
        )
        return [StoredMessage(row["role"], row["author"], row["content"]) for row in reversed(rows)]

    async def clear_messages(self, session: SessionKey, *, actor: str) -> int:
        key = str(session)
        async with self._transaction() as db:
            cursor = await db.execute("DELETE FROM messages WHERE session_key = ?", (key,))
            await _audit(db, key, actor, "history.clear", {"messages": cursor.rowcount})
            return cursor.rowcount

    # --- audit log ---------------------------------------------------------------------------

    async def record_audit(
        self, session: SessionKey, *, actor: str, action: str, detail: dict[str, Any]
    ) -> None:
        """An audit entry that changes nothing else (e.g. feedback on a reply)."""
        async with self._transaction() as db:
            await _audit(db, str(session), actor, action, detail)

    async def count_audit_entries(self, session: SessionKey) -> int:
        key = str(session)
        rows = await self._fetchall("SELECT COUNT(*) FROM audit_log WHERE session_key = ?", key)
        return int(rows[0][0])

    async def audit_entries(self, session: SessionKey, limit: int = 50) -> list[AuditEntry]:
        """Newest first."""
        key = str(session)
        rows = await self._fetchall(
            "SELECT actor, action, detail_json, created_at FROM audit_log "
            "WHERE session_key = ? ORDER BY id DESC LIMIT ?",
            key,
            limit,
        )
        return [
            AuditEntry(
                row["actor"], row["action"], json.loads(row["detail_json"]), row["created_at"]
            )
            for row in rows
        ]


async def _audit(
    db: aiosqlite.Connection, key: str, actor: str, action: str, detail: dict[str, Any]
) -> None:
    await db.execute(
        "INSERT INTO audit_log (session_key, actor, action, detail_json, created_at) "
        "VALUES (?, ?, ?, ?, ?)",
        (key, actor, action, json.dumps(detail), time.time()),
    )


def _variant_from_row(row: aiosqlite.Row) -> VariantState:
    return VariantState(
        row["name"],
        row["base_model"],
        edits_from_json(row["edits_json"]),
        guards_from_json(row["guards_json"]),
    )
