"""PostgreSQL persistence for sessions, variants, conversation history and the audit log.

The same behaviour as the SQLite store (storage/store.py), for several bot processes sharing one
database: an asyncpg pool, every change committed before the call returns, and each change with
its audit entry written by one statement (a data-modifying WITH), so it is atomic and costs one
round trip. asyncpg over psycopg 3: a native asyncio driver with its own pool and the binary
protocol, the least CPU per query of the two, which is what a bot process spends its time on.
"""

from __future__ import annotations

import json
import time
from typing import Any

import asyncpg

from bot.domain.types import SessionKey, VariantState
from storage.postgres_connect import create_pool, migrate
from storage.postgres_schema import DATA_MIGRATIONS
from storage.store import (
    DEFAULT_VARIANT,
    AuditEntry,
    StoredMessage,
    edits_from_json,
    edits_to_json,
    guards_from_json,
    guards_to_json,
)

_VARIANT_COLUMNS = "name, base_model, edits_json, guards_json"
_AUDIT = (
    "INSERT INTO audit_log (session_key, actor, action, detail_json, created_at) "
    "VALUES ($1, $2, $3, $4, $5)"
)


class PostgresStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @classmethod
    async def open(
        cls, url: str, *, pool_size: int = 10, connect_timeout: float = 5.0
    ) -> PostgresStore:
        """Connect, migrate (one process at a time) and check the database takes a write.
        Raises DatabaseProblem, with one line naming the fault and the fix, when it cannot."""
        pool = await create_pool(url, pool_size=pool_size, connect_timeout=connect_timeout)
        try:
            await migrate(pool, url)
        except BaseException:
            await pool.close()
            raise
        return cls(pool)

    async def close(self) -> None:
        await self.pool.close()

    async def integrity_ok(self) -> bool:
        version = await self.pool.fetchval(
            "SELECT version FROM schema_versions WHERE name = 'data'"
        )
        return version == len(DATA_MIGRATIONS)

    # --- sessions and variants -------------------------------------------------------------

    async def ensure_session(self, session: SessionKey, base_model: str) -> str:
        """Create the session with its default variant if new; return the active variant name."""
        key = str(session)
        active = await self.pool.fetchval("SELECT active_variant FROM sessions WHERE key = $1", key)
        if active is not None:
            return str(active)
        await self.pool.execute(
            "WITH created AS (INSERT INTO sessions (key, created_at) VALUES ($1, $3) "
            "ON CONFLICT DO NOTHING RETURNING key) "
            "INSERT INTO variants (session_key, name, base_model, edits_json, updated_at) "
            "SELECT key, $4, $2, '[]', $3 FROM created ON CONFLICT DO NOTHING",
            key,
            base_model,
            time.time(),
            DEFAULT_VARIANT,
        )
        return DEFAULT_VARIANT

    async def active_variant(self, session: SessionKey, base_model: str) -> VariantState | None:
        """The active variant in one query (added by #17; see storage/interface.py)."""
        row = await self.pool.fetchrow(
            "SELECT s.active_variant, v.name, v.base_model, v.edits_json, v.guards_json "
            "FROM sessions s LEFT JOIN variants v "
            "ON v.session_key = s.key AND v.name = s.active_variant WHERE s.key = $1",
            str(session),
        )
        if row is None:
            return await self.get_variant(session, await self.ensure_session(session, base_model))
        return _variant_from_row(row) if row["name"] is not None else None

    async def get_variant(self, session: SessionKey, name: str) -> VariantState | None:
        row = await self.pool.fetchrow(
            f"SELECT {_VARIANT_COLUMNS} FROM variants WHERE session_key = $1 AND name = $2",
            str(session),
            name,
        )
        return _variant_from_row(row) if row else None

    async def list_variants(self, session: SessionKey) -> list[VariantState]:
        rows = await self.pool.fetch(
            f"SELECT {_VARIANT_COLUMNS} FROM variants WHERE session_key = $1 ORDER BY name",
            str(session),
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
        await self.pool.execute(
            "WITH saved AS (INSERT INTO variants (session_key, name, base_model, edits_json, "
            "updated_at, guards_json) VALUES ($1, $6, $7, $8, $5, $9) "
            "ON CONFLICT (session_key, name) DO UPDATE SET base_model = EXCLUDED.base_model, "
            "edits_json = EXCLUDED.edits_json, updated_at = EXCLUDED.updated_at, "
            "guards_json = EXCLUDED.guards_json) " + _AUDIT,
            *_audit_values(session, actor, action, {"variant": variant.name, **detail}),
            variant.name,
            variant.base_model,
            edits_to_json(variant.edits),
            guards_to_json(variant.guards),
        )

    async def delete_variant(self, session: SessionKey, name: str, *, actor: str) -> None:
        await self.pool.execute(
            "WITH gone AS (DELETE FROM variants WHERE session_key = $1 AND name = $6) " + _AUDIT,
            *_audit_values(session, actor, "variant.delete", {"variant": name}),
            name,
        )

    async def set_active_variant(self, session: SessionKey, name: str, *, actor: str) -> None:
        await self.pool.execute(
            "WITH used AS (UPDATE sessions SET active_variant = $6 WHERE key = $1) " + _AUDIT,
            *_audit_values(session, actor, "variant.use", {"variant": name}),
            name,
        )

    # --- conversation history --------------------------------------------------------------

    async def append_message(
        self, session: SessionKey, role: str, content: str, author: str = ""
    ) -> None:
        await self.pool.execute(
            "INSERT INTO messages (session_key, role, author, content, created_at) "
            "VALUES ($1, $2, $3, $4, $5)",
            str(session),
            role,
            author,
            content,
            time.time(),
        )

    async def recent_messages(self, session: SessionKey, limit: int) -> list[StoredMessage]:
        """The newest `limit` messages, oldest first."""
        rows = await self.pool.fetch(
            "SELECT role, author, content FROM messages WHERE session_key = $1 "
            "ORDER BY id DESC LIMIT $2",
            str(session),
            limit,
        )
        return [StoredMessage(row["role"], row["author"], row["content"]) for row in reversed(rows)]

    async def clear_messages(self, session: SessionKey, *, actor: str) -> int:
        key = str(session)
        async with self.pool.acquire() as db, db.transaction():
            cleared = await db.fetchval(
                "WITH gone AS (DELETE FROM messages WHERE session_key = $1 RETURNING 1) "
                "SELECT count(*) FROM gone",
                key,
            )
            await db.execute(
                _AUDIT, *_audit_values(session, actor, "history.clear", {"messages": cleared})
            )
        return int(cleared)

    # --- audit log ---------------------------------------------------------------------------

    async def record_audit(
        self, session: SessionKey, *, actor: str, action: str, detail: dict[str, Any]
    ) -> None:
        """An audit entry that changes nothing else (e.g. feedback on a reply)."""
        await self.pool.execute(_AUDIT, *_audit_values(session, actor, action, detail))

    async def count_audit_entries(self, session: SessionKey) -> int:
        count = await self.pool.fetchval(
            "SELECT count(*) FROM audit_log WHERE session_key = $1", str(session)
        )
        return int(count)

    async def audit_entries(self, session: SessionKey, limit: int = 50) -> list[AuditEntry]:
        """Newest first."""
        rows = await self.pool.fetch(
            "SELECT actor, action, detail_json, created_at FROM audit_log "
            "WHERE session_key = $1 ORDER BY id DESC LIMIT $2",
            str(session),
            limit,
        )
        return [
            AuditEntry(
                row["actor"], row["action"], json.loads(row["detail_json"]), row["created_at"]
            )
            for row in rows
        ]


def _audit_values(
    session: SessionKey, actor: str, action: str, detail: dict[str, Any]
) -> tuple[str, str, str, str, float]:
    """$1..$5 of _AUDIT; a statement's own parameters follow from $6."""
    return str(session), actor, action, json.dumps(detail), time.time()


def _variant_from_row(row: asyncpg.Record) -> VariantState:
    return VariantState(
        row["name"],
        row["base_model"],
        edits_from_json(row["edits_json"]),
        guards_from_json(row["guards_json"]),
    )
