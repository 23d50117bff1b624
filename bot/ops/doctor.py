"""`ember-bot doctor`: check settings, database, backend and platform tokens; say how to fix."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr

from bot.backend.gateway import EmberGateway
from bot.domain.errors import EmberBotError
from bot.settings import Settings
from storage.database import database_label, open_database
from storage.opening import DatabaseProblem

DISCORD_TOKEN = re.compile(r"^[\w-]{20,}\.[\w-]{4,}\.[\w-]{20,}$")
SLACK_SIGNING_SECRET = re.compile(r"^[0-9a-f]{32}$")
BACKEND_TIMEOUT = 5.0
# What ember-bot's server adds to /health.
SERVED_FACTS = ("sae", "layer", "labels", "search", "engine")


@dataclass(frozen=True)
class Finding:
    topic: str
    problem: str | None  # None: this check passed
    detail: str = ""


# Asks a chat platform whether it takes its token: None, or the problem in one line.
PlatformCheck = Callable[[], Awaitable[str | None]]


@dataclass(frozen=True)
class PlatformTokens:
    """The chat platforms' credentials; adapters/cli.py reads them from the platforms' own
    settings (bot/ never imports adapters)."""

    discord_bot_token: SecretStr
    slack_bot_token: SecretStr
    slack_app_token: SecretStr
    slack_signing_secret: SecretStr


def token_findings(tokens: PlatformTokens) -> list[Finding]:
    """Shape checks of the platform tokens; they catch swapped or truncated pastes."""
    findings = []
    discord = tokens.discord_bot_token.get_secret_value()
    if discord and not DISCORD_TOKEN.match(discord):
        findings.append(
            Finding(
                "discord",
                "DISCORD_BOT_TOKEN does not look like a bot token "
                "(three dot-separated parts); copy it again from Bot → Reset Token.",
            )
        )
    slack = {
        "SLACK_BOT_TOKEN": (tokens.slack_bot_token.get_secret_value(), "xoxb-"),
        "SLACK_APP_TOKEN": (tokens.slack_app_token.get_secret_value(), "xapp-"),
    }
    for name, (value, prefix) in slack.items():
        if value and not value.startswith(prefix):
            findings.append(Finding("slack", f"{name} should start with {prefix}"))
    secret = tokens.slack_signing_secret.get_secret_value()
    if secret and not SLACK_SIGNING_SECRET.match(secret):
        findings.append(
            Finding(
                "slack",
                "SLACK_SIGNING_SECRET should be 32 hex characters "
                "(Basic Information → App Credentials).",
            )
        )
    if slack["SLACK_BOT_TOKEN"][0] and not (slack["SLACK_APP_TOKEN"][0] or secret):
        findings.append(
            Finding(
                "slack",
                "SLACK_BOT_TOKEN is set but neither SLACK_APP_TOKEN "
                "(Socket Mode) nor SLACK_SIGNING_SECRET (HTTP mode) is.",
            )
        )
    if not findings:
        configured = [
            n for n, on in (("Discord", discord), ("Slack", slack["SLACK_BOT_TOKEN"][0])) if on
        ]
        detail = ", ".join(configured) or "none configured: `ember-bot console` still works"
        findings.append(Finding("platforms", None, detail))
    return findings


async def database_finding(settings: Settings) -> Finding:
    label = database_label(settings.database_url)
    try:
        database = await open_database(
            settings.database_url,
            busy_timeout=settings.database_busy_timeout_seconds,
            pool_size=1,
        )
    except DatabaseProblem as unusable:
        return Finding("database", unusable.problem)
    except Exception as error:  # any other failure to open is the finding itself
        return Finding("database", f"cannot open {label}: {error}")
    try:
        if not await database.store.integrity_ok():
            return Finding("database", "integrity check failed; restore from a backup.")
        problem = await database.problem(BACKEND_TIMEOUT)
    finally:
        await database.close()
    return Finding("database", problem, label)


async def backend_findings(settings: Settings) -> list[Finding]:
    """The backend's reachability and model, then (when it answers) what it serves."""
    if not settings.has_backend:
        return [
            Finding(
                "backend",
                "no backend configured: set GOODFIRE_BASE_URL (e.g. "
                "http://127.0.0.1:8000 after `ember-bot serve --preset tiny`).",
            )
        ]
    async with EmberGateway(
        settings.goodfire_base_url,
        settings.goodfire_api_key.get_secret_value(),
        model=settings.ember_model,
    ) as gateway:
        problem = await gateway.ping(BACKEND_TIMEOUT)
        if problem:
            return [Finding("backend", f"{settings.goodfire_base_url}: {problem}")]
        try:
            model = await gateway.model_id()
        except EmberBotError as error:
            return [Finding("backend", error.user_message)]
        facts = await gateway.served_facts(BACKEND_TIMEOUT)
    return [
        Finding("backend", None, f"{settings.goodfire_base_url} serves {model}"),
        Finding("served", None, served_detail(facts)),
    ]


def served_detail(facts: dict[str, Any]) -> str:
    """One line from a self-hosted server's /health facts; what it does not say is unknown."""
    if not any(key in facts for key in SERVED_FACTS):
        return (
            "SAE, layer, label count and search mode unknown "
            "(the backend does not report them, as hosted Ember does not)"
        )

    def fact(key: str) -> str:
        return str(facts.get(key, "unknown"))

    return (
        f"model {fact('model')}, SAE {fact('sae')}, layer {fact('layer')}, "
        f"{fact('labels')} labels, {fact('search')} search, {fact('engine')} engine"
    )


async def platform_finding(topic: str, check: PlatformCheck) -> Finding:
    return Finding(topic, await check(), "the platform accepts the token")


async def diagnose(
    settings: Settings, tokens: PlatformTokens, online: Mapping[str, PlatformCheck] | None = None
) -> list[Finding]:
    """Every check; `online` asks each platform (by topic) whether it takes its token, unless
    the token's shape is already wrong."""
    shapes = token_findings(tokens)
    wrong = {finding.topic for finding in shapes if finding.problem}
    asks = [platform_finding(t, check) for t, check in (online or {}).items() if t not in wrong]
    database, backend, platforms = await asyncio.gather(
        database_finding(settings), backend_findings(settings), asyncio.gather(*asks)
    )
    return [Finding("settings", None, "loaded"), database, *backend, *shapes, *platforms]


def run_doctor(
    settings: Settings, tokens: PlatformTokens, online: Mapping[str, PlatformCheck] | None = None
) -> int:
    """Print one line per check; exit status 1 if any check found a problem."""
    findings = asyncio.run(diagnose(settings, tokens, online))
    for finding in findings:
        if finding.problem:
            print(f"PROBLEM  {finding.topic}: {finding.problem}")
        else:
            print(f"ok       {finding.topic}: {finding.detail}")
    return 1 if any(f.problem for f in findings) else 0
