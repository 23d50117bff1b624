"""Prometheus metrics: chat turns, latency, errors, refusals, queue depth, active streams.

Each `Metrics` has its own registry; bot.ops.monitoring serves it over HTTP.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

from bot.domain.errors import RefusedError

if TYPE_CHECKING:
    from bot.backend.breaker import CircuitBreaker
    from bot.usecases.ratelimit import BackendSlots

FIRST_TOKEN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
REPLY_BUCKETS = (0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)


def error_kind(error: BaseException) -> str:
    """`RateLimitedError` -> "rate_limited": a stable, readable label value."""
    name = type(error).__name__.removesuffix("Error") or "error"
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class TurnTimer:
    """When one chat turn was accepted, and whether its first token has been timed."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self.started = time.monotonic()
        self._first_token_seen = False

    def first_token(self) -> None:
        if not self._first_token_seen:
            self._first_token_seen = True
            self._metrics.first_token.observe(time.monotonic() - self.started)


class Metrics:
    """Every metric the bot exports, in its own registry (so tests can have several)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.turns = Counter(
            "ember_chat_turns", "Chat turns by outcome: ok, error, refused", ["outcome"], registry=r
        )
        self.first_token = Histogram(
            "ember_first_token_seconds",
            "From accepting a chat turn to its first reply token",
            buckets=FIRST_TOKEN_BUCKETS,
            registry=r,
        )
        self.reply = Histogram(
            "ember_reply_seconds",
            "From accepting a chat turn to the end of its reply",
            buckets=REPLY_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "ember_errors", "Errors shown to users, by kind", ["kind"], registry=r
        )
        self.refusals = Counter(
            "ember_rate_limit_refusals",
            "Requests refused for load: action (chat, steer, backend) and scope "
            "(user, channel, queue)",
            ["action", "scope"],
            registry=r,
        )
        self.active_streams = Gauge(
            "ember_active_streams", "Chat replies streaming right now", registry=r
        )
        self.queue_depth = Gauge(
            "ember_backend_queue_depth", "Requests waiting for a backend slot", registry=r
        )
        self.backend_in_flight = Gauge(
            "ember_backend_calls_in_flight", "Backend calls holding a slot", registry=r
        )
        self.breaker_open = Gauge(
            "ember_backend_breaker_open", "1 while backend calls are refused", registry=r
        )

    def watch_slots(self, slots: BackendSlots) -> None:
        self.queue_depth.set_function(lambda: slots.waiting)
        self.backend_in_flight.set_function(lambda: slots.in_use)

    def watch_breaker(self, breaker: CircuitBreaker) -> None:
        self.breaker_open.set_function(lambda: int(breaker.is_open))

    def error(self, error: BaseException) -> None:
        self.errors.labels(error_kind(error)).inc()
        if isinstance(error, RefusedError):
            self.refusals.labels(error.action, error.scope).inc()

    def start_turn(self) -> TurnTimer:
        return TurnTimer(self)

    def turn_ended(self, timer: TurnTimer, error: BaseException | None) -> None:
        self.reply.observe(time.monotonic() - timer.started)
        self.turns.labels("error" if error else "ok").inc()
        if error is not None:
            self.error(error)

    def turn_refused(self, error: BaseException) -> None:
        self.turns.labels("refused").inc()
        self.error(error)

    @contextmanager
    def streaming(self) -> Iterator[None]:
        """Count a reply as streaming while inside."""
        self.active_streams.inc()
        try:
            yield
        finally:
            self.active_streams.dec()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
