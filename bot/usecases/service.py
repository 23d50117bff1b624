"""EmberService: the core's front door, one per process, holding every use case.

    service.variants   a channel's named variants (bot.usecases.variants)
    service.steering   features, steering, AutoSteer, reset, history (bot.usecases.steering)
    service.guards     stop replies when a feature fires too strongly (bot.usecases.guards)
    service.chat       chat turns and one-off prompts (bot.usecases.chat)
    service.inspection which features fired (bot.usecases.inspection)
    service.feedback   👍/👎 on replies, in the audit log (bot.usecases.feedback)
    service.admission  rate limits, backend slots, per-channel locks (bot.usecases.admission)
    service.turns      turns in flight, noted if their process dies (bot.usecases.turn_ledger)

Adapters run a chat turn through `bot.usecases.chat_turn.run_chat_turn` and commands through
`bot.commands.runner.run_command`; those are the two places that admit work.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from bot.domain.errors import BackendError
from bot.ops.lifecycle import Lifecycle
from bot.ops.metrics import Metrics
from bot.settings import Settings
from bot.usecases.admission import Admission
from bot.usecases.chat import Chat
from bot.usecases.deps import Deps
from bot.usecases.feedback import Feedback
from bot.usecases.guards import Guards
from bot.usecases.inspection import Inspection
from bot.usecases.steering import Steering
from bot.usecases.turn_ledger import TurnLedger
from bot.usecases.variants import Variants
from storage.database import Database

if TYPE_CHECKING:
    from bot.backend.gateway import EmberGateway


class EmberService:
    def __init__(
        self,
        database: Database,
        gateway: EmberGateway,
        settings: Settings,
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self._database = database
        self._store = database.store
        self.shared_state = database.shared  # None: one process, state kept in memory
        self._gateway = gateway
        self._settings = settings
        self.lifecycle = Lifecycle()
        self.metrics = metrics or Metrics()
        self.admission = Admission(settings, self.metrics, database.shared)
        self.turns = TurnLedger(database.shared)
        deps = Deps(database.store, gateway, settings, self.admission, self.lifecycle, self.metrics)
        self.variants = Variants(deps)
        self.steering = Steering(deps, self.variants)
        self.guards = Guards(deps, self.variants, self.steering)
        self.chat = Chat(deps, self.variants)
        self.inspection = Inspection(deps, self.variants, self.steering)
        self.feedback = Feedback(deps)

    async def check_health(self, seconds: float) -> dict[str, str]:
        """ "ok" or the problem, for the database (writable?) and the backend (answering?)."""
        database, backend = await asyncio.gather(
            self._database.problem(seconds),
            self._gateway.ping(seconds),
        )
        return {"database": database or "ok", "backend": backend or "ok"}

    async def backend_problem(self, seconds: float) -> BackendError | None:
        """What is wrong with the backend right now (one try, no breaker), or None."""
        return await self._gateway.probe(seconds)
