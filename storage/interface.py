"""What the bot asks of a database, whichever one it is (SQLite: storage/store.py, PostgreSQL:
storage/postgres.py). Both implement StateStore; tests/storage runs the same tests on each.

SharedState is what several bot processes on one database must agree on beyond the data: a
lock per channel, rate-limit buckets, pending proposals and claimed deliveries. Only a server
database offers it; with SQLite (one process) the bot keeps those in memory.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from bot.domain.types import FeatureEdit, SessionKey, VariantState
from storage.store import AuditEntry, StoredMessage


class StateStore(Protocol):
    async def close(self) -> None: ...

    async def integrity_ok(self) -> bool: ...

    async def ensure_session(self, session: SessionKey, base_model: str) -> str: ...

    async def active_variant(self, session: SessionKey, base_model: str) -> VariantState | None:
        """The active variant in one round trip (the session and its default variant are
        created first when new); None when the active variant was deleted underneath."""
        ...

    async def get_variant(self, session: SessionKey, name: str) -> VariantState | None: ...

    async def list_variants(self, session: SessionKey) -> list[VariantState]: ...

    async def save_variant(
        self,
        session: SessionKey,
        variant: VariantState,
        *,
        actor: str,
        action: str,
        detail: dict[str, Any],
    ) -> None: ...

    async def delete_variant(self, session: SessionKey, name: str, *, actor: str) -> None: ...

    async def set_active_variant(self, session: SessionKey, name: str, *, actor: str) -> None: ...

    async def append_message(
        self, session: SessionKey, role: str, content: str, author: str = ""
    ) -> None: ...

    async def recent_messages(self, session: SessionKey, limit: int) -> list[StoredMessage]: ...

    async def clear_messages(self, session: SessionKey, *, actor: str) -> int: ...

    async def record_audit(
        self, session: SessionKey, *, actor: str, action: str, detail: dict[str, Any]
    ) -> None: ...

    async def count_audit_entries(self, session: SessionKey) -> int: ...

    async def audit_entries(self, session: SessionKey, limit: int = 50) -> list[AuditEntry]: ...


@dataclass(frozen=True)
class Bucket:
    """One token bucket to take from: `burst` tokens, refilled at `per_second`."""

    key: str
    burst: float
    per_second: float


@dataclass(frozen=True)
class StoredProposal:
    session: str
    proposer_id: str
    proposer_name: str
    edits: tuple[FeatureEdit, ...]


class SharedState(Protocol):
    def session_lock(self, session: str) -> AbstractAsyncContextManager[None]:
        """Held by one process at a time, per channel; let go if the holder dies."""
        ...

    async def take_tokens(self, buckets: list[Bucket]) -> tuple[int, float]:
        """One token from each bucket, or from none: (-1, 0) when taken, else the position of
        the first empty bucket and the seconds until it holds a token."""
        ...

    async def add_proposal(
        self, token: str, proposal: StoredProposal, ttl: float, capacity: int
    ) -> None:
        """Keep it `ttl` seconds; the oldest go first when `capacity` are pending."""
        ...

    async def get_proposal(self, token: str) -> StoredProposal | None: ...

    async def take_proposal(self, token: str) -> StoredProposal | None:
        """Remove and return it: exactly one caller, in any process, gets it."""
        ...

    async def claim_delivery(self, key: str) -> bool:
        """True for the first claim of `key` (a platform's event or message id), in any
        process; False for every later one."""
        ...

    async def heartbeat(self, worker: str) -> None:
        """`worker` (one process) is alive now."""
        ...

    async def forget_worker(self, worker: str) -> None: ...

    async def begin_turn(self, turn: str, worker: str, platform: str, place: str) -> None:
        """`worker` is answering a chat turn; `place` says where (for a note if it dies)."""
        ...

    async def end_turn(self, turn: str) -> None: ...

    async def take_orphans(self, platforms: list[str], stale: float) -> list[tuple[str, str]]:
        """(platform, place) of the turns whose worker has not been seen for `stale` seconds,
        removed: exactly one process gets each."""
        ...
