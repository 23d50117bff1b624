"""Retries with jittered exponential backoff (honouring Retry-After) under one deadline per call."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from contextvars import ContextVar
from dataclasses import dataclass

from bot.domain.errors import (
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    RateLimitedError,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 8.0
    deadline: float = 30.0


_RETRYABLE = (RateLimitedError, BackendUnavailableError, BackendTimeoutError)


# The absolute deadline (time.monotonic) of the gateway call in progress, so that every HTTP
# request the SDK makes for one call (inspect makes two) shares one budget.
call_deadline: ContextVar[float | None] = ContextVar("ember_call_deadline", default=None)


class Attempts:
    """Retry bookkeeping for one request: backoff, Retry-After, attempt count, deadline."""

    def __init__(self, policy: RetryPolicy, deadline: float | None = None) -> None:
        self._policy = policy
        self._started = time.monotonic()
        self._deadline = deadline if deadline is not None else self._started + policy.deadline
        self._made = 0

    def elapsed(self) -> float:
        return round(time.monotonic() - self._started, 1)

    def timeout(self, cap: float) -> float:
        """The timeout for the next attempt: at most `cap`, never past the deadline."""
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise BackendTimeoutError(self.elapsed())
        return min(cap, remaining)

    async def backoff_or_raise(self, error: BackendError) -> None:
        """Sleep before the next attempt, or raise `error` if it cannot or should not be retried."""
        self._made += 1
        if not isinstance(error, _RETRYABLE):
            raise error
        delay = self._delay(error)
        if self._made >= self._policy.attempts or time.monotonic() + delay >= self._deadline:
            if isinstance(error, RateLimitedError) and error.retry_after is None:
                raise RateLimitedError(delay) from error
            raise error
        logger.info(
            "Ember backend: %s; retry %d in %.2f s", type(error).__name__, self._made, delay
        )
        await asyncio.sleep(delay)

    def _delay(self, error: BackendError) -> float:
        if isinstance(error, RateLimitedError) and error.retry_after is not None:
            return error.retry_after
        backoff = min(self._policy.max_delay, self._policy.base_delay * 2 ** (self._made - 1))
        return random.uniform(backoff / 2, backoff)
