"""Admission control: token buckets per user and per channel, and a fair queue for backend calls.

Refusals are `UserInputError`s carrying one short line for the user ("Slow down — try again in
4 s.", "The bot is busy ..."), so every adapter shows them like any other refused input; nothing
was changed when one is raised.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from bot.domain.errors import BackendBusyError, SlowDownError
from storage.interface import Bucket, SharedState

Clock = Callable[[], float]
QueueCallback = Callable[[int], Awaitable[None]]

_SWEEP_EVERY = 1024  # actions between sweeps that forget idle (full) buckets


def queued_message(position: int) -> str:
    """What to show while a request waits for a backend slot."""
    return f"Queued, position {position}."


@dataclass(frozen=True)
class Rate:
    """A bucket of `burst` actions refilled at `per_minute`; `per_minute` 0 means unlimited."""

    burst: int
    per_minute: float

    @property
    def unlimited(self) -> bool:
        return self.per_minute <= 0


class TokenBucket:
    __slots__ = ("_capacity", "_per_second", "_tokens", "_updated")

    def __init__(self, rate: Rate, now: float) -> None:
        self._capacity = float(rate.burst)
        self._per_second = rate.per_minute / 60
        self._tokens = self._capacity
        self._updated = now

    def wait_time(self, now: float) -> float:
        """Seconds until one token is available; 0 if one is available now."""
        self._refill(now)
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self._per_second

    def take(self, now: float) -> None:
        self._refill(now)
        self._tokens -= 1

    def is_full(self, now: float) -> bool:
        self._refill(now)
        return self._tokens >= self._capacity

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(self._capacity, self._tokens + elapsed * self._per_second)
        self._updated = now


class KeyedBuckets:
    """One token bucket per key (user, channel), created on first use, forgotten when full."""

    def __init__(self, rate: Rate, clock: Clock) -> None:
        self._rate = rate
        self._clock = clock
        self._buckets: dict[Hashable, TokenBucket] = {}
        self._actions = 0

    def wait_time(self, key: Hashable) -> float:
        if self._rate.unlimited or key not in self._buckets:
            return 0.0
        return self._buckets[key].wait_time(self._clock())

    def take(self, key: Hashable) -> None:
        if self._rate.unlimited:
            return
        now = self._clock()
        self._buckets.setdefault(key, TokenBucket(self._rate, now)).take(now)
        self._actions += 1
        if self._actions % _SWEEP_EVERY == 0:
            self._buckets = {k: b for k, b in self._buckets.items() if not b.is_full(now)}


class RateLimiter:
    """Per-user and per-channel buckets in front of one kind of action ("chat", "steer")."""

    def __init__(
        self, action: str, per_user: Rate, per_channel: Rate, clock: Clock = time.monotonic
    ) -> None:
        self.action = action
        self._users = KeyedBuckets(per_user, clock)
        self._channels = KeyedBuckets(per_channel, clock)

    def admit(self, user: str, channel: str) -> None:
        """Take one action for `user` in `channel`, or raise SlowDownError and take nothing."""
        for scope, buckets, key in (
            ("user", self._users, user),
            ("channel", self._channels, channel),
        ):
            wait = buckets.wait_time(key)
            if wait > 0:
                raise SlowDownError(wait, action=self.action, scope=scope)
        self._users.take(user)
        self._channels.take(channel)


class SharedRateLimiter:
    """RateLimiter's buckets kept in the database, so every process draws from the same ones
    (N processes never grant N times the limit); timed by the database server's clock."""

    def __init__(self, action: str, per_user: Rate, per_channel: Rate, shared: SharedState):
        self.action = action
        self._rates = (("user", per_user), ("channel", per_channel))
        self._shared = shared

    async def admit(self, user: str, channel: str) -> None:
        """Take one action for `user` in `channel`, or raise SlowDownError and take nothing."""
        scopes, buckets = [], []
        for (scope, rate), key in zip(self._rates, (user, channel), strict=True):
            if not rate.unlimited:
                scopes.append(scope)
                buckets.append(
                    Bucket(f"{self.action}:{scope}:{key}", rate.burst, rate.per_minute / 60)
                )
        if not buckets:
            return
        refused, wait = await self._shared.take_tokens(buckets)  # users first, always
        if refused >= 0:
            raise SlowDownError(wait, action=self.action, scope=scopes[refused])


class BackendSlots:
    """At most `limit` backend calls at once; later callers wait in FIFO order.

    A freed slot is handed straight to the longest waiter, so nobody can overtake the queue.
    When `max_waiting` callers already wait, the next is refused with BackendBusyError.
    """

    def __init__(self, limit: int, max_waiting: int) -> None:
        self._limit = limit
        self._max_waiting = max_waiting
        self._in_use = 0
        self._queue: deque[asyncio.Future[None]] = deque()

    @property
    def in_use(self) -> int:
        return self._in_use

    @property
    def waiting(self) -> int:
        return len(self._queue)

    @asynccontextmanager
    async def slot(self, on_queued: QueueCallback | None = None) -> AsyncIterator[None]:
        await self.acquire(on_queued)
        try:
            yield
        finally:
            self.release()

    async def acquire(self, on_queued: QueueCallback | None = None) -> None:
        """Take a slot, waiting in line if none is free; `on_queued(position)` hears the wait."""
        if self._in_use < self._limit and not self._queue:
            self._in_use += 1
            return
        if len(self._queue) >= self._max_waiting:
            raise BackendBusyError(len(self._queue))
        ticket: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(ticket)
        try:
            if on_queued is not None:
                await on_queued(len(self._queue))
            await ticket
        except BaseException:
            if ticket.done() and not ticket.cancelled():
                self.release()  # the slot reached us just as we gave up: pass it on
            elif ticket in self._queue:  # a release may already have skipped it
                ticket.cancel()
                self._queue.remove(ticket)
            raise

    def release(self) -> None:
        while self._queue:
            ticket = self._queue.popleft()
            if not ticket.done():  # cancelled waiters are skipped
                ticket.set_result(None)  # the slot changes hands; in_use stays the same
                return
        self._in_use -= 1
