"""Graceful shutdown: stop taking new work, let in-flight work finish, cut short what will not.

Work is admitted with `async with lifecycle.track():` (raises ShuttingDownError once draining),
and waits that may be cut short at shutdown run inside `async with lifecycle.interruptible():`
(raises ShuttingDownError when cut). Adapters never call these themselves: a chat turn is
admitted by `bot.usecases.chat_turn.run_chat_turn` (final edit included, so a drain waits for
the reply to be finalised) and a command's reply by `bot.commands.runner.deliver`.

`run(work, grace)` runs an adapter's main loop until it ends or SIGTERM/SIGINT arrives, then
drains: a second signal skips the rest of the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Iterator

from bot.domain.errors import UserInputError

log = logging.getLogger(__name__)

FINALISE_SECONDS = 5.0  # after interrupting, how long cut-short work gets to wrap up


class ShuttingDownError(UserInputError):
    def __init__(self) -> None:
        super().__init__("The bot is restarting — try again in a minute.")


class Lifecycle:
    def __init__(self) -> None:
        self.accepting = True
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._interrupted = False
        self._scopes: set[asyncio.Timeout] = set()
        self._stop = asyncio.Event()
        self._hurry = asyncio.Event()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @contextlib.asynccontextmanager
    async def track(self) -> AsyncIterator[None]:
        """Count one piece of work as in flight; refuse it once shutdown has begun."""
        if not self.accepting:
            raise ShuttingDownError()
        self._in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    @contextlib.asynccontextmanager
    async def interruptible(self) -> AsyncIterator[None]:
        """A stretch a drain may cut short once its grace period is over."""
        if self._interrupted:
            raise ShuttingDownError()
        try:
            async with asyncio.timeout(None) as scope:
                self._scopes.add(scope)
                try:
                    yield
                finally:
                    self._scopes.discard(scope)
        except TimeoutError:
            if self._interrupted and scope.expired():
                raise ShuttingDownError() from None
            raise

    def request_stop(self) -> None:
        """Begin shutdown (what SIGTERM/SIGINT do); asked twice, skip the grace period."""
        if self._stop.is_set():
            self._hurry.set()
        self._stop.set()

    async def drain(self, grace: float, finalise: float = FINALISE_SECONDS) -> int:
        """Stop accepting work, wait up to `grace` s for in-flight work, then interrupt the rest.

        Returns how much work was still running at the end (0 after a clean drain).
        """
        self.accepting = False
        if await self._wait_idle(grace):
            return 0
        log.warning(
            "Shutting down: grace period of %g s over; cutting short what still runs", grace
        )
        self._interrupted = True
        now = asyncio.get_running_loop().time()
        for scope in list(self._scopes):
            scope.reschedule(now)
        self._hurry.clear()
        await self._wait_idle(finalise)
        return self._in_flight

    async def run(self, work: Awaitable[None], grace: float) -> None:
        """Run `work` until it ends or a stop is requested; then drain and cancel it."""
        main = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({main, stop}, return_when=asyncio.FIRST_COMPLETED)
            left = await self.drain(grace)
            if left:
                log.warning("Stopped with %d requests unfinished", left)
        finally:
            stop.cancel()
            main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await main

    @contextlib.contextmanager
    def signal_handlers(self) -> Iterator[None]:
        """SIGTERM and SIGINT call request_stop while inside this block."""
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT)
        for number in signals:
            loop.add_signal_handler(number, self.request_stop)
        try:
            yield
        finally:
            for number in signals:
                loop.remove_signal_handler(number)

    async def _wait_idle(self, seconds: float) -> bool:
        """Wait until no work is in flight, `seconds` pass or a second stop request hurries."""
        idle = asyncio.ensure_future(self._idle.wait())
        hurry = asyncio.ensure_future(self._hurry.wait())
        try:
            await asyncio.wait({idle, hurry}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            idle.cancel()
            hurry.cancel()
        return not self._in_flight
