"""What every use case works with: one bundle, built once by EmberService."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from bot.ops.lifecycle import Lifecycle
from bot.ops.metrics import Metrics
from bot.settings import Settings
from bot.usecases.admission import Admission
from storage.interface import StateStore

if TYPE_CHECKING:
    from bot.backend.gateway import EmberGateway


@dataclass(frozen=True)
class Deps:
    store: StateStore
    gateway: EmberGateway
    settings: Settings
    admission: Admission  # its `slots` are the one queue for backend calls
    lifecycle: Lifecycle
    metrics: Metrics
