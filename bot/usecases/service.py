"""EmberService: the core's front door, one per process, holding every use case.

    service.variants   a channel's named variants (bot.usecases.variants)
    service.steering   features, steering, AutoSteer, reset, history (bot.usecases.steering)
    service.guards     stop replies when a feature fires too strongly (bot.usecases.guards)
    service.chat       chat turns and one-off prompts (bot.usecases.chat)
    service.inspection which features fired (bot.usecases.inspection)
    service.admission  rate limits, backend slots, per-channel locks (bot.usecases.admission)

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
from bot.usecases.guards import Guards
from bot.usecases.inspection import Inspection
from bot.usecases.steering import Steering
from bot.usecases.variants import Variants
from storage.health import database_problem
from storage.store import Store

if TYPE_CHECKING:
    from bot.backend.gateway import EmberGateway


class EmberService:
    def __init__(
        self,
        store: Store,
        gateway: EmberGateway,
        settings: Settings,
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._gateway = gateway
        self._settings = settings
        self.lifecycle = Lifecycle()
        self.metrics = metrics or Metrics()
        self.admission = Admission(settings, self.metrics)
        deps = Deps(store, gateway, settings, self.admission, self.lifecycle, self.metrics)
        self.variants = Variants(deps)
        self.steering = Steering(deps, self.variants)
        self.guards = Guards(deps, self.variants, self.steering)
        self.chat = Chat(deps, self.variants)
        self.inspection = Inspection(deps, self.variants, self.steering)

    async def check_health(self, seconds: float) -> dict[str, str]:
        """ "ok" or the problem, for the database (writable?) and the backend (answering?)."""
        database, backend = await asyncio.gather(
            asyncio.to_thread(database_problem, self._settings.database_path, seconds),
            self._gateway.ping(seconds),
        )
        return {"database": database or "ok", "backend": backend or "ok"}

    async def backend_problem(self, seconds: float) -> BackendError | None:
        """What is wrong with the backend right now (one try, no breaker), or None."""
        return await self._gateway.probe(seconds)
