"""A circuit breaker for the backend: fail fast while it is down, probe for its recovery.

After `threshold` calls in a row fail for backend reasons (unreachable, 5xx, timeouts, replies
cut off), every call is refused at once for `cooldown` seconds. Then one probe call may go
through: if it succeeds the breaker closes, if it fails the pause starts again. Answers that
prove the backend alive (rate limits, validation errors, unknown features) count as successes.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from bot.domain.errors import BackendError, BackendTimeoutError, BackendUnavailableError

log = logging.getLogger(__name__)

FAILURES = (BackendUnavailableError, BackendTimeoutError)


class CircuitBreaker:
    def __init__(
        self, threshold: int, cooldown: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._threshold = threshold
        self._cooldown = cooldown
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def is_open(self) -> bool:
        """True while calls are being refused or a probe decides."""
        return self._opened_at is not None

    @contextmanager
    def call(self) -> Iterator[None]:
        """Wrap one backend call (retries included); raises BackendUnavailableError if paused."""
        probe = self._admit()
        try:
            yield
        except BaseException as error:
            self._finish(error, probe)
            raise
        self._finish(None, probe)

    def _admit(self) -> bool:
        """Let the call through, returning whether it is the recovery probe, or refuse it."""
        if self._opened_at is None:
            return False
        remaining = self._opened_at + self._cooldown - self._clock()
        if remaining > 0 or self._probing:
            wait = max(1, math.ceil(remaining))
            raise BackendUnavailableError(
                f"{self._threshold} calls in a row failed; next try in {wait} s"
            )
        self._probing = True
        return True

    def _finish(self, error: BaseException | None, probe: bool) -> None:
        if probe:
            self._probing = False
        if isinstance(error, FAILURES):
            self._failures += 1
            if probe or (self._opened_at is None and self._failures >= self._threshold):
                self._open()
        elif error is None or isinstance(error, BackendError):
            if self._opened_at is not None:
                log.info("Ember backend answers again; resuming calls")
            self._failures = 0
            self._opened_at = None
        # Anything else (cancellation, a bug of ours) says nothing about the backend.

    def _open(self) -> None:
        self._opened_at = self._clock()
        log.warning(
            "Ember backend failed %d calls in a row; refusing calls for %g s",
            self._failures,
            self._cooldown,
        )
