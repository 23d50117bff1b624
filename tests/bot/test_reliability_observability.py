"""Metrics endpoint, health check, structured logs and secret redaction, on the real stack."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import socket
import sqlite3
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest
from pydantic import SecretStr

from adapters.discord.settings import DiscordSettings
from adapters.slack.settings import SlackSettings
from bot.app import open_context, run_app
from bot.commands.registry import CommandContext
from bot.commands.runner import run_text_command
from bot.domain.types import Actor, SessionKey
from bot.ops.logs import REDACTED, Redactor, configure_logging
from bot.settings import Settings
from tests.support.fake_ember import FakeEmber, Fault
from tests.support.reliability_helpers import chat_turn, relaxed

SLACK_BOT = "xoxb-1111111111-2222222222-SeCrEtSlackBotToken"
SLACK_APP = "xapp-1-A0123456789-3333333333-SeCrEtSlackAppToken"
SIGNING = "8f14e45fceea167a5a36dedd4bea2543"
DISCORD = "MTIzNDU2Nzg5MDEyMzQ1Njc4OTA.GaBcDe.SeCrEtDiscordBotTokenValue_0123456"
API_KEY = "sk-goodfire-SeCrEtApiKey-0123456789"
SECRETS = (SLACK_BOT, SLACK_APP, SIGNING, DISCORD, API_KEY)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def restore_logging() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in ("", "httpx", "httpcore", "aiosqlite")]
    levels = [logger.level for logger in loggers]
    yield
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)


async def test_run_app_serves_metrics_and_health(settings, fake_ember, alice):
    monitored = relaxed(settings, metrics_port=free_port(), health_timeout_seconds=0.3)
    url = f"http://127.0.0.1:{monitored.metrics_port}"
    seen: dict[str, object] = {}

    async def scrape(ctx: CommandContext) -> None:
        session = SessionKey("t", "w", "c")
        fake_ember.fail_next("/chat/completions", Fault(), Fault(), Fault(die_after_tokens=2))
        for text in ("one", "two", "three"):
            await chat_turn(ctx, session, alice, text)
        async with httpx.AsyncClient(base_url=url) as web:
            fake_ember.fail_next("/chat/completions", Fault(delay=0.3))
            slow = asyncio.create_task(chat_turn(ctx, session, alice, "slow"))
            await asyncio.sleep(0.15)
            seen["during"] = (await web.get("/metrics")).text
            await slow
            seen["after"] = (await web.get("/metrics")).text
            seen["healthy"] = await web.get("/healthz")
            fake_ember.fail_next("/models", Fault(status=500))
            with contextlib.closing(sqlite3.connect(monitored.database_path)) as other:
                other.execute("BEGIN IMMEDIATE")  # another writer holds the database
                seen["sick"] = await web.get("/healthz")

    await run_app(monitored, scrape)
    assert "ember_active_streams 1.0" in seen["during"]
    assert "ember_backend_calls_in_flight 1.0" in seen["during"]
    after = seen["after"]
    for line in (
        'ember_chat_turns_total{outcome="ok"} 3.0',
        'ember_chat_turns_total{outcome="error"} 1.0',
        'ember_errors_total{kind="backend_unavailable"} 1.0',
        "ember_first_token_seconds_count 4.0",
        "ember_reply_seconds_count 4.0",
        "ember_active_streams 0.0",
        "ember_backend_queue_depth 0.0",
        "ember_backend_breaker_open 0.0",
    ):
        assert line in after, line
    healthy = seen["healthy"]
    assert healthy.status_code == 200
    assert healthy.json() == {"status": "ok", "database": "ok", "backend": "ok"}
    sick = seen["sick"]
    assert sick.status_code == 503
    assert sick.json() == {
        "status": "unhealthy",
        "database": "database not writable: database is locked",
        "backend": "The model backend is unavailable right now (HTTP 500). Try again shortly.",
    }


async def test_json_logs_carry_request_and_session_ids(ctx, session, alice, restore_logging):
    stream = io.StringIO()
    setup = configure_logging(ctx.settings.model_copy(update={"log_format": "json"}), stream)
    try:
        for text in ("one", "two"):
            await chat_turn(ctx, session, alice, text)
        await run_text_command(ctx, "/steer pirate 9", session, alice)
    finally:
        setup.close()
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    turns = [e for e in entries if e["message"].startswith("chat turn by u1 ended: ok")]
    assert len(turns) == 2
    assert {e["session"] for e in turns} == {str(session)}
    assert turns[0]["request_id"] != turns[1]["request_id"] != "-"
    assert all({"time", "level", "logger"} <= set(e) for e in entries)


async def test_secrets_never_reach_the_logs_even_at_debug(tmp_path, alice, restore_logging):
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        goodfire_api_key=SecretStr(API_KEY),
        database_url=f"sqlite:///{tmp_path / 'bot.db'}",
        log_level="DEBUG",
    )
    slack = SlackSettings(
        _env_file=None,  # type: ignore[call-arg]
        bot_token=SecretStr(SLACK_BOT),
        app_token=SecretStr(SLACK_APP),
        signing_secret=SecretStr(SIGNING),
    )
    discord = DiscordSettings(_env_file=None, bot_token=SecretStr(DISCORD))  # type: ignore[call-arg]
    stream = io.StringIO()
    async with FakeEmber(api_key=API_KEY) as fake:
        settings = relaxed(settings, goodfire_base_url=fake.base_url)
        setup = configure_logging(settings, stream, platforms=(slack, discord))
        try:
            await exercise_with_leaky_libraries(settings, fake, alice)
        finally:
            setup.close()
    logged = stream.getvalue()
    assert "HTTP Request: POST" in logged and "aiosqlite" in logged  # debug logs were on
    for secret in (*SECRETS, quote(API_KEY), "xoxb-9999-unconfigured", "abcdefghij0123456789"):
        assert secret not in logged
    assert logged.count(REDACTED) >= 8


async def exercise_with_leaky_libraries(settings: Settings, fake: FakeEmber, actor: Actor) -> None:
    """A real session, plus the kinds of records through which libraries leak credentials."""
    session = SessionKey("t", "w", "c")
    async with open_context(settings) as ctx:
        await run_text_command(ctx, "/steer pirate 0.5", session, actor)
        await chat_turn(ctx, session, actor, "hello")
        fake.fail_next("/chat/completions", Fault(status=500), Fault(status=429, retry_after=0.01))
        await chat_turn(ctx, session, actor, "again")
    httpx_log = logging.getLogger("httpx")
    httpx_log.debug("headers: %r", {"authorization": f"Bearer {API_KEY}"})
    httpx_log.debug("GET /x?token=%s", quote(API_KEY))
    logging.getLogger("slack_sdk").debug("Sending: token=%s and xoxb-9999-unconfigured", SLACK_BOT)
    logging.getLogger("discord.http").debug("Authorization: Bot %s", DISCORD)
    logging.getLogger("tests").info("Authorization: Bearer abcdefghij0123456789")
    try:
        raise RuntimeError(f"signing secret {SIGNING} / app token {SLACK_APP} rejected")
    except RuntimeError:
        logging.getLogger("slack_bolt").exception("verification failed")


def test_redactor_leaves_ordinary_text_alone():
    redact = Redactor(["hunter2-secret", "abc"])  # too short to redact safely: ignored
    assert redact("the bot said abc to the bearer of news") == (
        "the bot said abc to the bearer of news"
    )
    assert redact('{"key": "hunter2-secret"}') == '{"key": "[redacted]"}'
