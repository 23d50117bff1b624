"""Admission: who may start work now.

Per-user and per-channel rate limits for chat and for steering, one fair queue of backend
slots shared by every call, and one-at-a-time locks per channel (for chat turns, and for
changes of steering or variants, so that two changes at once cannot lose each other).
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager

from bot.domain.types import Actor, SessionKey
from bot.ops.metrics import Metrics
from bot.settings import Settings
from bot.usecases.keyed_locks import KeyedLocks
from bot.usecases.ratelimit import BackendSlots, Rate, RateLimiter


class Admission:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        s = settings
        self._chat_limits = RateLimiter(
            "chat",
            Rate(s.chat_user_burst, s.chat_user_per_minute),
            Rate(s.chat_channel_burst, s.chat_channel_per_minute),
        )
        self._steer_limits = RateLimiter(
            "steer",
            Rate(s.steer_user_burst, s.steer_user_per_minute),
            Rate(s.steer_channel_burst, s.steer_channel_per_minute),
        )
        self.slots = BackendSlots(s.backend_max_concurrency, s.backend_max_queue)
        metrics.watch_slots(self.slots)
        self._turn_locks = KeyedLocks()
        self._state_locks = KeyedLocks()

    def admit_chat(self, session: SessionKey, actor: Actor) -> None:
        """Count one chat turn (or one-off prompt) against the limits, or raise SlowDownError."""
        self._chat_limits.admit(actor.user_id, str(session))

    def admit_steering(self, session: SessionKey, actor: Actor) -> None:
        """Count one steering command against the rate limits, or raise SlowDownError."""
        self._steer_limits.admit(actor.user_id, str(session))

    def one_turn_at_a_time(self, session: SessionKey) -> AbstractAsyncContextManager[None]:
        return self._turn_locks.hold(str(session))

    def changing_state(self, session: SessionKey) -> AbstractAsyncContextManager[None]:
        """Hold while reading, changing and saving a channel's variants, so that two changes
        at once cannot both be confirmed while one of them is lost."""
        return self._state_locks.hold(str(session))
