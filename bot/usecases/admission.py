"""Admission: who may start work now.

Per-user and per-channel rate limits for chat and for steering, one fair queue of backend
slots shared by every call, one-at-a-time locks per channel (for chat turns, and for changes of
steering or variants, so that two changes at once cannot lose each other), and "answer each
delivery once".

With one process (SQLite) all of it lives in memory. When the database is shared by several
processes (PostgreSQL: `shared`), the rate-limit buckets, the state lock and the claimed
deliveries live in the database, so they hold across processes; backend slots and the turn
lock stay per process (they bound this process's own work).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from bot.domain.types import Actor, SessionKey
from bot.ops.metrics import Metrics
from bot.settings import Settings
from bot.usecases.keyed_locks import KeyedLocks
from bot.usecases.ratelimit import BackendSlots, Rate, RateLimiter, SharedRateLimiter
from storage.interface import SharedState

RECENT_DELIVERIES = 4096  # in memory: enough for any platform's redelivery window


class Admission:
    def __init__(self, settings: Settings, metrics: Metrics, shared: SharedState | None = None):
        s = settings
        self._shared = shared
        chat = (
            Rate(s.chat_user_burst, s.chat_user_per_minute),
            Rate(s.chat_channel_burst, s.chat_channel_per_minute),
        )
        steer = (
            Rate(s.steer_user_burst, s.steer_user_per_minute),
            Rate(s.steer_channel_burst, s.steer_channel_per_minute),
        )
        self._chat_limits: RateLimiter | SharedRateLimiter
        self._steer_limits: RateLimiter | SharedRateLimiter
        if shared is None:
            self._chat_limits = RateLimiter("chat", *chat)
            self._steer_limits = RateLimiter("steer", *steer)
        else:
            self._chat_limits = SharedRateLimiter("chat", *chat, shared)
            self._steer_limits = SharedRateLimiter("steer", *steer, shared)
        self.slots = BackendSlots(s.backend_max_concurrency, s.backend_max_queue)
        metrics.watch_slots(self.slots)
        self._turn_locks = KeyedLocks()
        self._state_locks = KeyedLocks()
        self._recent: OrderedDict[str, None] = OrderedDict()

    async def admit_chat(self, session: SessionKey, actor: Actor) -> None:
        """Count one chat turn (or one-off prompt) against the limits, or raise SlowDownError."""
        await _admit(self._chat_limits, actor.user_id, str(session))

    async def admit_steering(self, session: SessionKey, actor: Actor) -> None:
        """Count one steering command against the rate limits, or raise SlowDownError."""
        await _admit(self._steer_limits, actor.user_id, str(session))

    def one_turn_at_a_time(self, session: SessionKey) -> AbstractAsyncContextManager[None]:
        return self._turn_locks.hold(str(session))

    @asynccontextmanager
    async def changing_state(self, session: SessionKey) -> AsyncIterator[None]:
        """Hold while reading, changing and saving a channel's variants, so that two changes
        at once cannot both be confirmed while one of them is lost. Across processes too:
        then the database's lock for the channel is held as well (one connection each)."""
        async with self._state_locks.hold(str(session)):
            if self._shared is None:
                yield
                return
            async with self._shared.session_lock(str(session)):
                yield

    async def first_delivery(self, key: str) -> bool:
        """True the first time a platform's event or message id `key` arrives, in any process
        sharing the database; False for a redelivery, which must not be answered again."""
        if self._shared is not None:
            return await self._shared.claim_delivery(key)
        if key in self._recent:
            self._recent.move_to_end(key)
            return False
        self._recent[key] = None
        if len(self._recent) > RECENT_DELIVERIES:
            self._recent.popitem(last=False)
        return True


async def _admit(limits: RateLimiter | SharedRateLimiter, user: str, channel: str) -> None:
    if isinstance(limits, SharedRateLimiter):
        await limits.admit(user, channel)
    else:
        limits.admit(user, channel)
