"""Wiring: settings -> store + gateway -> service -> command context, for every adapter."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from bot.commands import CommandContext
from bot.ember import EmberGateway, RetryPolicy
from bot.handlers import build_registry
from bot.service import EmberService
from bot.settings import Settings
from storage.store import Store


@asynccontextmanager
async def open_context(settings: Settings) -> AsyncIterator[CommandContext]:
    """Open the database and the backend gateway; close both on exit."""
    store = await Store.open(settings.database_path)
    try:
        async with EmberGateway(
            settings.goodfire_base_url,
            settings.goodfire_api_key.get_secret_value(),
            model=settings.ember_model,
            retry=RetryPolicy(deadline=settings.backend_deadline_seconds),
        ) as gateway:
            service = EmberService(store, gateway, settings)
            yield CommandContext(service, settings, build_registry())
    finally:
        await store.close()
