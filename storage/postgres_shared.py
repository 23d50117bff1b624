"""What several bot processes on one PostgreSQL database agree on through it (SharedState).

- A channel's lock is a session-level advisory lock on a connection of a pool of its own: the
  server lets go when the holder's connection closes, so a killed process never leaves a
  channel locked. Its own pool, because the work done under the lock takes connections from
  the main pool: lock holders sharing it could take every connection and then wait forever.
- Rate-limit buckets are rows changed by one call of ember_take_tokens (a function in the
  schema): every process draws from the same buckets, timed by the server's clock.
- Proposals and claimed deliveries are rows; deleting or inserting one is atomic, so one
  process (one caller) wins.
Rows that can no longer matter (expired proposals, old deliveries, full buckets) are swept
every SWEEP_EVERY calls.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from storage.interface import Bucket, StoredProposal
from storage.postgres_connect import create_pool
from storage.store import edits_from_json, edits_to_json

SWEEP_EVERY = 512
DELIVERY_MEMORY_SECONDS = 24 * 3600.0  # platforms redeliver within minutes
IDLE_BUCKET_SECONDS = 24 * 3600.0  # refilled by then at any rate of at least a burst a day
_NOW = "extract(epoch FROM clock_timestamp())"


class PostgresSharedState:
    def __init__(self, pool: asyncpg.Pool, lock_pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._lock_pool = lock_pool
        self._calls = 0

    @classmethod
    async def open(
        cls, pool: asyncpg.Pool, url: str, *, pool_size: int, connect_timeout: float
    ) -> PostgresSharedState:
        lock_pool = await create_pool(
            url, pool_size=pool_size, connect_timeout=connect_timeout, min_size=0, light_reset=False
        )  # the full reset lets go of a lock whose holder was cancelled
        return cls(pool, lock_pool)

    async def close(self) -> None:
        await self._lock_pool.close()

    @asynccontextmanager
    async def session_lock(self, session: str) -> AsyncIterator[None]:
        async with self._lock_pool.acquire() as db:
            await db.execute("SELECT pg_advisory_lock(hashtextextended($1, 0))", session)
            try:
                yield
            finally:
                # On cancellation the pool's reset (pg_advisory_unlock_all) lets go instead.
                await db.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", session)

    async def take_tokens(self, buckets: list[Bucket]) -> tuple[int, float]:
        await self._sweep_now_and_then()
        row = await self._pool.fetchrow(
            "SELECT refused, wait FROM ember_take_tokens($1, $2, $3)",
            [b.key for b in buckets],
            [b.burst for b in buckets],
            [b.per_second for b in buckets],
        )
        assert row is not None
        return int(row["refused"]), float(row["wait"])

    async def add_proposal(
        self, token: str, proposal: StoredProposal, ttl: float, capacity: int
    ) -> None:
        async with self._pool.acquire() as db, db.transaction():
            await db.execute(f"DELETE FROM proposals WHERE expires_at <= {_NOW}")
            await db.execute(
                "DELETE FROM proposals WHERE token IN (SELECT token FROM proposals "
                "ORDER BY expires_at DESC OFFSET $1)",
                capacity - 1,
            )
            await db.execute(
                f"INSERT INTO proposals VALUES ($1, $2, $3, $4, $5, {_NOW} + $6)",
                token,
                proposal.session,
                proposal.proposer_id,
                proposal.proposer_name,
                edits_to_json({i: e for i, e in enumerate(proposal.edits)}),
                ttl,
            )

    async def get_proposal(self, token: str) -> StoredProposal | None:
        row = await self._pool.fetchrow(
            f"SELECT * FROM proposals WHERE token = $1 AND expires_at > {_NOW}", token
        )
        return _proposal(row)

    async def take_proposal(self, token: str) -> StoredProposal | None:
        row = await self._pool.fetchrow(
            f"DELETE FROM proposals WHERE token = $1 AND expires_at > {_NOW} RETURNING *", token
        )
        return _proposal(row)

    async def claim_delivery(self, key: str) -> bool:
        await self._sweep_now_and_then()
        claimed = await self._pool.fetchval(
            f"INSERT INTO deliveries VALUES ($1, {_NOW}) ON CONFLICT DO NOTHING RETURNING 1", key
        )
        return claimed is not None

    async def heartbeat(self, worker: str) -> None:
        await self._pool.execute(
            f"INSERT INTO workers VALUES ($1, {_NOW}) "
            "ON CONFLICT (worker) DO UPDATE SET seen_at = EXCLUDED.seen_at",
            worker,
        )

    async def forget_worker(self, worker: str) -> None:
        await self._pool.execute("DELETE FROM workers WHERE worker = $1", worker)

    async def begin_turn(self, turn: str, worker: str, platform: str, place: str) -> None:
        await self._pool.execute(
            f"INSERT INTO turns VALUES ($1, $2, $3, $4, {_NOW})", turn, worker, platform, place
        )

    async def end_turn(self, turn: str) -> None:
        await self._pool.execute("DELETE FROM turns WHERE turn = $1", turn)

    async def take_orphans(self, platforms: list[str], stale: float) -> list[tuple[str, str]]:
        rows = await self._pool.fetch(
            f"DELETE FROM turns t WHERE platform = ANY($1) AND started_at < {_NOW} - $2 "
            "AND NOT EXISTS (SELECT 1 FROM workers w "
            f"WHERE w.worker = t.worker AND w.seen_at >= {_NOW} - $2) "
            "RETURNING platform, place",
            platforms,
            stale,
        )
        return [(row["platform"], row["place"]) for row in rows]

    async def _sweep_now_and_then(self) -> None:
        self._calls += 1
        if self._calls % SWEEP_EVERY:
            return
        await self._pool.execute(
            f"DELETE FROM deliveries WHERE claimed_at < {_NOW} - $1", DELIVERY_MEMORY_SECONDS
        )
        await self._pool.execute(
            f"DELETE FROM rate_buckets WHERE updated_at < {_NOW} - $1", IDLE_BUCKET_SECONDS
        )
        await self._pool.execute(
            f"DELETE FROM workers WHERE seen_at < {_NOW} - $1", DELIVERY_MEMORY_SECONDS
        )


def _proposal(row: asyncpg.Record | None) -> StoredProposal | None:
    if row is None:
        return None
    edits = tuple(edits_from_json(row["edits_json"]).values())
    return StoredProposal(row["session_key"], row["proposer_id"], row["proposer_name"], edits)
