"""Shared fixtures: a loopback fake Ember backend and a bot core wired to it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bot.app import open_context
from bot.commands.registry import CommandContext
from bot.domain.types import Actor, SessionKey
from bot.settings import Settings
from tests.support.fake_ember import FakeEmber
from tests.support.postgres_server import postgres_server, postgres_url
from tests.support.server_fixtures import client, model_id, tiny_bundle, tiny_server

__all__ = [
    "postgres_server",
    "postgres_url",
    "client",
    "model_id",
    "tiny_bundle",
    "tiny_server",
]  # session fixtures of the self-hosted server


@pytest.fixture
async def fake_ember() -> AsyncIterator[FakeEmber]:
    async with FakeEmber() as fake:
        yield fake


@pytest.fixture
def settings(tmp_path, fake_ember: FakeEmber) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        goodfire_base_url=fake_ember.base_url,
        goodfire_api_key=fake_ember.api_key,
        database_url=f"sqlite:///{tmp_path / 'bot.db'}",
        backend_deadline_seconds=5,
    )


@pytest.fixture
async def ctx(settings: Settings) -> AsyncIterator[CommandContext]:
    async with open_context(settings) as context:
        yield context


@pytest.fixture
def session() -> SessionKey:
    return SessionKey("test", "workspace", "channel")


@pytest.fixture
def alice() -> Actor:
    return Actor("u1", "Alice")
