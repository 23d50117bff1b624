"""Chat turns in flight across processes, so that a process that dies mid-reply does not leave
a half-written reply without a word.

With several processes on one database, every process records the turns it is answering and
says every HEARTBEAT_SECONDS that it is alive. A turn whose process has not been heard from for
STALE_SECONDS was cut off by a crash (a SIGKILL, a lost machine): one surviving process takes
it (atomically) and the adapter that registered for its platform posts ORPHAN_NOTE where the
reply was going. The turn is not answered again: its message was claimed once (Admission).
With one process (SQLite) there is nobody left to tell, and this does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

from storage.interface import SharedState

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 1.0
STALE_SECONDS = 5.0
ORPHAN_NOTE = (
    "⚠️ The bot process answering this stopped before it finished; send your message again."
)

OrphanHandler = Callable[[dict[str, str]], Awaitable[None]]


class TurnLedger:
    def __init__(self, shared: SharedState | None) -> None:
        self._shared = shared
        self._worker = uuid.uuid4().hex
        self._handlers: dict[str, OrphanHandler] = {}

    def on_orphan(self, platform: str, handler: OrphanHandler) -> None:
        """`handler(place)` posts ORPHAN_NOTE at `place` (what `in_flight` was given)."""
        self._handlers[platform] = handler

    @contextlib.asynccontextmanager
    async def in_flight(self, platform: str, place: dict[str, str]) -> AsyncIterator[None]:
        """Hold while answering a turn at `place` (e.g. Slack's channel and thread)."""
        if self._shared is None:
            yield
            return
        turn = uuid.uuid4().hex
        await self._shared.begin_turn(turn, self._worker, platform, json.dumps(place))
        try:
            yield
        finally:
            await asyncio.shield(self._shared.end_turn(turn))

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[None]:
        """While inside: say this process is alive, and note the turns of dead ones."""
        if self._shared is None:
            yield
            return
        await self._shared.heartbeat(self._worker)
        watcher = asyncio.create_task(self._watch(self._shared))
        try:
            yield
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            with contextlib.suppress(Exception):
                await self._shared.forget_worker(self._worker)

    async def _watch(self, shared: SharedState) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            try:
                await shared.heartbeat(self._worker)
                orphans = await shared.take_orphans(list(self._handlers), STALE_SECONDS)
            except Exception:  # the database is away for a moment: try again next beat
                log.warning("could not check for turns cut off by a dead process", exc_info=True)
                continue
            for platform, place in orphans:
                try:
                    await self._handlers[platform](json.loads(place))
                except Exception:
                    log.warning("could not post the note for a cut-off turn", exc_info=True)
